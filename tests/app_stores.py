"""Synthetic results stores for the app's tests and benchmark, written without TensorFlow.

``build_store`` draws a planted-bias shapes run (circles, squares, triangles on
dark or light backgrounds; a corner "cue" mark that the imaginary model took
for a circle) and lays it out exactly as :mod:`audit.store.schema` says, with
its metrics computed by :func:`audit.metrics.compute_metrics`. So every page
has real content: mistakes concentrated in one slice, heatmaps on the shape
(and on the cue where the model was fooled), activations and their stats.

``variant_store`` copies a store and re-draws some predictions: a second model
on the same examples, for the comparison view. ``broken_stores`` makes the
stores a user can point the app at by mistake.

The numbers the tests check are fixed by the seed; ``expected_counts`` reads
them back from the predictions table so tests do not hard-code them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from audit.explain.registry import titles
from audit.metrics import compute_metrics, slice_membership
from audit.store import schema
from audit.store.writer import StoreWriter, save_npy, write_json, write_parquet

CLASSES = ("circle", "square", "triangle")
LAYERS = ("backbone/conv1", "backbone/conv_last")
METHODS = ("gradcam", "gradcam++", "occlusion")
CUE_CENTRE = (0.14, 0.14)  # fractions of (height, width): top-left corner mark


def _shape_mask(kind: int, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 0:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    if kind == 1:
        return (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
    # Upward triangle: inside when below the apex lines and above the base.
    top, base = cy - r, cy + r * 0.8
    half = (yy - top) / (base - top) * r
    return (yy >= top) & (yy <= base) & (np.abs(xx - cx) <= half)


def _blob(size: int, cy: float, cx: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))


def _normalise(m: np.ndarray) -> np.ndarray:
    lo, hi = float(m.min()), float(m.max())
    return ((m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)).astype(np.float32)


def _images(rng: np.random.Generator, labels, dark, cue, size: int):
    n = len(labels)
    images = np.empty((n, size, size, 3), np.uint8)
    centres = np.empty((n, 3), np.float32)
    colours = np.array([[220, 60, 50], [50, 120, 220], [240, 190, 40]], np.float32)
    for i in range(n):
        bg = np.array([35, 38, 48] if dark[i] else [205, 208, 200], np.float32)
        img = bg + rng.normal(0, 8, (size, size, 3))
        r = size * rng.uniform(0.16, 0.26)
        cy, cx = rng.uniform(size * 0.38, size * 0.65, 2)
        img[_shape_mask(labels[i], size, cy, cx, r)] = colours[labels[i]]
        if cue[i]:
            img[_blob(size, CUE_CENTRE[0] * size, CUE_CENTRE[1] * size, size * 0.035) > 0.5] = [255, 255, 255]
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
        centres[i] = (cy, cx, r)
    return images, centres


def _predictions(rng: np.random.Generator, labels, dark, cue, flip: float = 0.0):
    """Predicted class and probabilities: triangles with the cue become circles, dark rows err more."""
    n, c = len(labels), len(CLASSES)
    p_right = np.where(dark, 0.86, 0.95)
    p_right = np.where(cue & (labels == 2), 0.3, p_right)
    right = rng.random(n) < np.clip(p_right + flip * rng.normal(0, 1, n), 0.02, 0.99)
    wrong = np.where(cue & (labels == 2), 0, (labels + rng.integers(1, c, n)) % c)
    pred = np.where(right, labels, wrong)
    top = np.where(right, rng.beta(8, 1.5, n), rng.beta(4, 2.5, n)) * (1 - 1 / c) + 1 / c
    top = np.maximum(top, 0.5 + 1e-3)
    probs = np.zeros((n, c), np.float32)
    rest = rng.dirichlet(np.ones(c - 1), n) * (1 - top)[:, None]
    for i in range(n):
        others = [k for k in range(c) if k != pred[i]]
        probs[i, pred[i]] = top[i]
        probs[i, others] = rest[i]
    return pred, probs


def _table(labels, pred, probs, annotations: dict, paths) -> pd.DataFrame:
    frame = pd.DataFrame({
        "index": np.arange(len(labels), dtype=np.int64),
        "path": pd.array(paths, dtype="string"),
        "label": labels.astype(np.int64),
        "pred": pred.astype(np.int64),
        "confidence": probs.max(1).astype(np.float32),
        "correct": pred == labels,
    })
    for k in range(probs.shape[1]):
        frame[schema.prob_column(k)] = probs[:, k]
    for name, values in annotations.items():
        frame[name] = values
    return frame


def _heatmaps(rng: np.random.Generator, chosen, centres, cue, pred, size: int) -> dict[str, np.ndarray]:
    """Maps on the shape; on the cue too when a cue row was called a circle (what the model looked at)."""
    out = {m: np.empty((len(chosen), size, size), np.float16) for m in METHODS}
    for row, i in enumerate(chosen):
        cy, cx, r = centres[i]
        focus = _blob(size, cy, cx, r * 0.9)
        if cue[i] and pred[i] == 0:
            focus = 0.4 * focus + _blob(size, CUE_CENTRE[0] * size, CUE_CENTRE[1] * size, size * 0.08)
        noise = rng.normal(0, 0.06, (size, size))
        coarse = focus.reshape(size // 8, 8, size // 8, 8).mean((1, 3))
        blocky = np.kron(coarse, np.ones((8, 8), np.float32))
        out["gradcam"][row] = _normalise(_blob_smooth(focus, 3) + noise)
        out["gradcam++"][row] = _normalise(focus ** 1.5 + noise * 0.5)
        out["occlusion"][row] = _normalise(blocky)
    return out


def _blob_smooth(m: np.ndarray, k: int) -> np.ndarray:
    pad = np.pad(m, k, mode="edge")
    acc = np.zeros_like(m)
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            acc += pad[k + dy: k + dy + m.shape[0], k + dx: k + dx + m.shape[1]]
    return acc / (2 * k + 1) ** 2


def _activations(images: np.ndarray, maps: np.ndarray, rng: np.random.Generator):
    """Two layers made from the pixels and the maps, ReLU'd like a real conv stack."""
    x = images.astype(np.float32) / 255.0
    k = len(x)
    s = x.shape[1] // 2
    pooled = x.reshape(k, s, 2, s, 2, 3).mean((2, 4))
    w1 = rng.normal(0, 1, (3, 8)).astype(np.float32)
    conv1 = np.maximum(pooled @ w1 + rng.normal(0, 0.05, 8).astype(np.float32), 0)
    t = maps.shape[1] // 8
    coarse = maps.astype(np.float32).reshape(k, t, 8, t, 8).mean((2, 4))[..., None]
    w2 = rng.normal(0.2, 1, (1, 16)).astype(np.float32)
    last = np.maximum(coarse @ w2 - 0.1, 0)
    return {"backbone/conv1": conv1.astype(np.float16), "backbone/conv_last": last.astype(np.float16)}


def _stats(arr: np.ndarray) -> dict[str, list[float]]:
    a = arr.astype(np.float32).reshape(-1, arr.shape[-1])
    return {"mean": a.mean(0).tolist(), "max": a.max(0).tolist(), "frac_zero": (a == 0).mean(0).tolist()}


def _choose_explained(frame: pd.DataFrame, limit: int, rng: np.random.Generator) -> np.ndarray:
    """A third most-confident mistakes, the rest at random (as the runner picks them)."""
    limit = min(limit, len(frame))
    wrong = frame[~frame["correct"]].sort_values("confidence", ascending=False)["index"].head(limit // 3)
    rest = np.setdiff1d(frame["index"].to_numpy(), wrong.to_numpy())
    fill = rng.choice(rest, size=limit - len(wrong), replace=False)
    return np.sort(np.concatenate([wrong.to_numpy(), fill])).astype(np.int64)


def build_store(out: str | Path, *, n: int = 600, explained: int = 40, size: int = 64, seed: int = 0,
                bootstrap: int = 100, name: str = "shapes_synthetic") -> Path:
    """Write a complete synthetic planted-bias run of ``n`` examples to ``out``; returns ``out``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    dark = rng.random(n) < 0.4
    cue = rng.random(n) < 0.5
    images, centres = _images(rng, labels, dark, cue, size)
    pred, probs = _predictions(rng, labels, dark, cue)
    gray = images.astype(np.float32).mean(-1) / 255.0
    annotations = {
        "cue": pd.array(np.where(cue, "present", "absent"), dtype="string"),
        "cue_agrees": pd.array(np.where(cue == (labels == 0), "yes", "no"), dtype="string"),
        "background": pd.array(np.where(dark, "dark", "light"), dtype="string"),
        "brightness": gray.mean((1, 2)).astype(np.float32),
        "contrast": gray.std((1, 2)).astype(np.float32),
    }
    paths = [f"{CLASSES[k]}/{i:05d}.png" for i, k in enumerate(labels)]
    frame = _table(labels, pred, probs, annotations, paths)
    chosen = _choose_explained(frame, explained, rng)
    maps = _heatmaps(rng, chosen, centres, cue, pred, size)
    acts = _activations(images[chosen], maps["gradcam"], rng)
    metrics = compute_metrics(frame, list(CLASSES), bootstrap=bootstrap, seed=seed)
    _write(Path(out), frame, metrics, images, chosen, maps, acts, rng, name=name, n=n, size=size,
           bootstrap=bootstrap, seed=seed)
    return Path(out)


def _write(out: Path, frame, metrics, images, chosen, maps, acts, rng, *, name, n, size, bootstrap, seed) -> None:
    w = StoreWriter(out)
    w.write_manifest({"complete": False})
    save_npy(out / schema.IMAGES, images)
    (out / schema.HEATMAP_DIR).mkdir(exist_ok=True)
    save_npy(out / schema.HEATMAP_INDEX, chosen)
    for method, arr in maps.items():
        save_npy(out / schema.heatmap_file(method), arr)
    (out / schema.ACTIVATION_DIR).mkdir(exist_ok=True)
    for layer, arr in acts.items():
        save_npy(out / schema.activation_file(layer), arr)
    write_json(out / schema.ACTIVATION_STATS, {layer: _stats(arr) for layer, arr in acts.items()})
    save_npy(out / schema.EMBEDDINGS, rng.normal(0, 1, (n, 16)).astype(np.float16))
    w.write_predictions(frame)
    w.write_metrics(metrics)
    w.write_slices(slice_membership(frame, metrics))
    w.finish(_manifest(name, n, size, len(chosen), bootstrap, seed))


def _manifest(name: str, n: int, size: int, explained: int, bootstrap: int, seed: int) -> dict:
    return {
        "model": {"path": f"/models/{name}.keras", "name": name, "sha256": "0" * 64, "format": "keras",
                  "input_shape": [size, size, 3], "num_classes": len(CLASSES), "output_kind": "softmax",
                  "softmax_applied": False},
        "dataset": {"source": "/data/shapes_eval", "kind": "folders", "count": n,
                    "annotations": {"path": "/data/shapes_annotations.csv",
                                    "columns": ["cue", "cue_agrees", "background"],
                                    "missing_rows": 0, "extra_rows": 0},
                    "skipped": [], "readable": n},
        "class_names": list(CLASSES),
        "options": {"batch_size": 64, "explain": [*METHODS, "activations"], "explain_limit": explained,
                    "bootstrap": bootstrap, "min_slice_size": 30, "seed": seed, "tensorboard": False},
        "stored_image_shape": [size, size],
        "versions": {"keras-audit": "0.1.0"},
        "started_at": "2026-01-01T00:00:00+00:00",
        "explained": {"methods": list(METHODS), "count": explained, "activation_layers": list(LAYERS),
                      "layer": "backbone/conv_last", "titles": titles(METHODS)},  # as a run writes them
        "notes": [],
        "finished_at": "2026-01-01T00:01:00+00:00",
    }


def variant_store(source: str | Path, out: str | Path, *, seed: int = 1, name: str = "shapes_synthetic_v2") -> Path:
    """A second model on the same examples: ``source`` copied, then its cue bias mostly fixed.

    Predictions are re-drawn (so the two runs disagree on some examples),
    metrics recomputed, and the heatmaps of the re-drawn rows moved off the cue.
    """
    source, out = Path(source), Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out)
    frame = pd.read_parquet(out / schema.PREDICTIONS)
    rng = np.random.default_rng(seed)
    labels = frame["label"].to_numpy()
    cue = (frame["cue"] == "present").to_numpy()
    dark = (frame["background"] == "dark").to_numpy()
    pred, probs = _predictions(rng, labels, dark, np.zeros_like(cue))
    redraw = rng.random(len(frame)) < 0.7
    old_probs = frame[[schema.prob_column(k) for k in range(len(CLASSES))]].to_numpy(np.float32)
    probs = np.where(redraw[:, None], probs, old_probs)
    pred = probs.argmax(1)
    frame = _table(labels, pred, probs, {c: frame[c] for c in schema.annotation_columns(frame.columns)},
                   frame["path"].tolist())
    chosen = np.load(out / schema.HEATMAP_INDEX)
    gradcam = np.load(out / schema.heatmap_file("gradcam")).astype(np.float32)
    for row, i in enumerate(chosen):
        if redraw[i] and cue[i]:
            gradcam[row, : gradcam.shape[1] // 3, : gradcam.shape[2] // 3] *= 0.1
    save_npy(out / schema.heatmap_file("gradcam"), gradcam.astype(np.float16))
    manifest = json.loads((out / schema.MANIFEST).read_text())
    manifest["model"] = {**manifest["model"], "name": name, "path": f"/models/{name}.keras", "sha256": "1" * 64}
    # Written in place rather than through StoreWriter, which would clear the copied arrays.
    write_parquet(out / schema.PREDICTIONS, frame)
    metrics = compute_metrics(frame, list(CLASSES), bootstrap=manifest["options"]["bootstrap"], seed=0)
    write_json(out / schema.METRICS, metrics)
    write_parquet(out / schema.SLICES, slice_membership(frame, metrics))
    write_json(out / schema.MANIFEST, manifest)
    return out


def broken_stores(root: str | Path, complete_store: str | Path) -> dict[str, Path]:
    """Stores the app must refuse with a message: missing, not a store, incomplete, newer schema, corrupt."""
    root = Path(root)
    made = {"missing": root / "no_such_run"}
    made["not_a_store"] = root / "holiday_photos"
    made["not_a_store"].mkdir(parents=True, exist_ok=True)
    (made["not_a_store"] / "beach.txt").write_text("not an audit\n")
    for kind, change in (("incomplete", {"complete": False}), ("newer", {"schema_version": schema.SCHEMA_VERSION + 1})):
        target = root / kind
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(complete_store, target)
        manifest = json.loads((target / schema.MANIFEST).read_text())
        (target / schema.MANIFEST).write_text(json.dumps({**manifest, **change}))
        made[kind] = target
    made["corrupt"] = root / "corrupt"
    if made["corrupt"].exists():
        shutil.rmtree(made["corrupt"])
    shutil.copytree(complete_store, made["corrupt"])
    (made["corrupt"] / schema.PREDICTIONS).write_bytes(b"PAR1 this is not parquet")
    return made


def expected_counts(store: str | Path) -> dict:
    """Counts read back from the predictions table, the oracle for what pages must show."""
    frame = pd.read_parquet(Path(store) / schema.PREDICTIONS)
    wrong = frame[~frame["correct"]]
    return {
        "n": len(frame),
        "wrong": len(wrong),
        "cell": lambda t, p: int(((frame["label"] == t) & (frame["pred"] == p)).sum()),
        "annotation": lambda col, value: int((frame[col] == value).sum()),
        "frame": frame,
    }


# Strings that are markup in Markdown or HTML: a view that shows one as anything but its text
# would run script, fetch a remote image or make a link.
HOSTILE = {
    "script": "<script>alert(1)</script>",
    "img": "<img src=x onerror=alert(1)>",
    "md_img": "![x](http://example.invalid/p.png)",
    "js_link": "[link](javascript:alert(1))",
    "bold": "**bold** a|b",
    "math": "$\\frac{$ costs $5",  # mathtext in matplotlib and Streamlit; unbalanced, so it would raise
}
HOSTILE_CLASSES = (HOSTILE["script"] + " " + HOSTILE["math"], HOSTILE["md_img"],
                   HOSTILE["js_link"] + " " + HOSTILE["bold"])
HOSTILE_COLUMNS = {"cue": HOSTILE["img"], "background": "**bold**|column"}
HOSTILE_VALUES = {"present": HOSTILE["md_img"], "absent": HOSTILE["js_link"], "dark": HOSTILE["script"],
                  "light": HOSTILE["bold"]}
HOSTILE_LAYER = "backbone/**conv**[x](javascript:alert(1))"


def hostile_store(source: str | Path, out: str | Path) -> Path:
    """``source`` copied with user-controlled strings made hostile (see :data:`HOSTILE`).

    Class names, annotation column names and values, example paths, the model's name and path,
    the dataset's source, a note and a layer name: every string a user's files put in a store.
    """
    source, out = Path(source), Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out)
    frame = pd.read_parquet(out / schema.PREDICTIONS)
    for column in ("cue", "background"):
        frame[column] = frame[column].map(HOSTILE_VALUES).astype("string")
    frame = frame.rename(columns=HOSTILE_COLUMNS)
    frame["path"] = pd.array([f"{HOSTILE['md_img']}/`{HOSTILE['script']}`{i}.png" for i in frame["index"]],
                             dtype="string")
    manifest = json.loads((out / schema.MANIFEST).read_text())
    _hostile_layer(out, manifest, LAYERS[-1])
    manifest["model"] = {**manifest["model"], "name": HOSTILE["img"] + HOSTILE["md_img"],
                         "path": f"/models/{HOSTILE['js_link']}.keras"}
    manifest["dataset"] = {**manifest["dataset"], "source": f"/data/{HOSTILE['script']}"}
    manifest["class_names"] = list(HOSTILE_CLASSES)
    manifest["notes"] = [f"note {HOSTILE['md_img']} {HOSTILE['script']}"]
    write_parquet(out / schema.PREDICTIONS, frame)
    metrics = compute_metrics(frame, list(HOSTILE_CLASSES), bootstrap=manifest["options"]["bootstrap"], seed=0)
    write_json(out / schema.METRICS, metrics)
    write_parquet(out / schema.SLICES, slice_membership(frame, metrics))
    write_json(out / schema.MANIFEST, manifest)
    return out


def _hostile_layer(out: Path, manifest: dict, layer: str) -> None:
    """Rename one stored layer to :data:`HOSTILE_LAYER` (its file, its statistics, the manifest)."""
    (out / schema.activation_file(layer)).rename(out / schema.activation_file(HOSTILE_LAYER))
    stats = json.loads((out / schema.ACTIVATION_STATS).read_text())
    stats[HOSTILE_LAYER] = stats.pop(layer)
    write_json(out / schema.ACTIVATION_STATS, stats)
    explained = manifest["explained"]
    explained["activation_layers"] = [HOSTILE_LAYER if x == layer else x for x in explained["activation_layers"]]
    explained["layer"] = HOSTILE_LAYER
