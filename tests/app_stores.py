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


# -- discovery (what audit.engine.discovery writes; drawn here from the planted truth) -------------
_CELLS = ("top-left", "top", "top-right", "left", "centre", "right", "bottom-left", "bottom", "bottom-right")


def _attention(mean_map: np.ndarray) -> dict:
    """3x3 mass shares (row 0 top), the outer band's share and the heaviest cell of one mean map."""
    h, w = mean_map.shape
    total = float(mean_map.sum()) or 1.0
    rows, cols = np.array_split(np.arange(h), 3), np.array_split(np.arange(w), 3)
    grid = [[float(mean_map[np.ix_(r, c)].sum() / total) for c in cols] for r in rows]
    band = max(1, round(min(h, w) * 0.15))
    inner = float(mean_map[band:h - band, band:w - band].sum()) / total
    top = int(np.argmax(np.array(grid).ravel()))
    return {"method": "gradcam", "grid": grid, "border": 1.0 - inner, "top_cell": _CELLS[top]}


def _group_stats(correct: np.ndarray, inside: np.ndarray) -> dict:
    """Accuracy inside vs outside, Wilson and Newcombe intervals (as slices), Fisher's exact p."""
    from scipy.stats import fisher_exact

    from audit.metrics.intervals import newcombe_difference, wilson

    k1, n1 = int(correct[inside].sum()), int(inside.sum())
    k2, n2 = int(correct[~inside].sum()), int((~inside).sum())
    lo, hi = wilson(k1, n1)
    glo, ghi = newcombe_difference(k1, n1, k2, n2)
    p = float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]])[1])
    return {"n": n1, "errors": n1 - k1, "accuracy": k1 / n1, "accuracy_ci": [float(lo), float(hi)],
            "rest_accuracy": k2 / n2, "gap": k1 / n1 - k2 / n2, "gap_ci": [float(glo), float(ghi)], "p_value": p}


def _bh(p: np.ndarray) -> np.ndarray:
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(q)
    out[order] = np.minimum(q, 1.0)
    return out


def discovery_data(frame: pd.DataFrame, chosen: np.ndarray, gradcam: np.ndarray, *, min_slice_size: int = 30):
    """Discovery of the planted truth: ``found_errors`` (0: cue-marked triangles, the planted error
    slice; 1: squares on light backgrounds; null elsewhere), ``found_strategy`` over explained circle
    predictions (0: cue marked, the maps on the corner; 1: no cue), one search group
    (cue_agrees = no & background = dark).
    Returns (columns, metrics additions, {relpath: mean map})."""
    n = len(frame)
    correct = frame["correct"].to_numpy(bool)
    cue, labels = (frame["cue"] == "present").to_numpy(bool), frame["label"].to_numpy()
    dark = (frame["background"] == "dark").to_numpy(bool)
    errors = np.where(cue & (labels == 2), 0, np.where((labels == 1) & ~dark, 1, -1))
    strategy = np.full(n, -1)
    circle = chosen[frame["pred"].to_numpy()[chosen] == 0]
    strategy[circle] = np.where(cue[circle], 0, 1)
    search = ((frame["cue_agrees"] == "no") & (frame["background"] == "dark")).to_numpy(bool)
    row_of = {int(i): r for r, i in enumerate(chosen)}
    groups, maps = [], {}
    members = [("errors", g, errors == g, None) for g in (0, 1)]
    members += [("strategy", g, strategy == g, "circle") for g in (0, 1)]
    members += [("search", 0, search, None)]
    for method, g, inside, cls in members:
        explained = [row_of[int(i)] for i in np.flatnonzero(inside) if int(i) in row_of]
        entry = {"method": method, "group": g, **_group_stats(correct, inside), "predicted_class": cls,
                 "predicate": {"cue_agrees": "no", "background": "dark"} if method == "search" else None,
                 "attention": None, "heatmap": None}
        if explained:
            mean = gradcam[explained].astype(np.float32).mean(0)
            entry["heatmap"] = schema.discovered_heatmap_file(method, g)
            entry["attention"] = _attention(mean)
            maps[entry["heatmap"]] = mean
        groups.append(entry)
    for method in schema.DISCOVERY_METHODS:
        mine = [e for e in groups if e["method"] == method]
        for e, q in zip(mine, _bh(np.array([e["p_value"] for e in mine]))):
            e["q_value"] = float(q)
            e["significant"] = bool(q < 0.05 and (e["gap_ci"][0] > 0 or e["gap_ci"][1] < 0)
                                    and e["n"] >= min_slice_size)
    words = {("errors", 0): "triangles with the corner mark", ("errors", 1): "squares on light backgrounds",
             ("strategy", 0): "'circle' predictions looking at the top-left corner",
             ("strategy", 1): "'circle' predictions looking at the shape",
             ("search", 0): "cue_agrees = no & background = dark"}
    for e in groups:
        e["description"] = f"{e['n']} examples: {words[e['method'], e['group']]}"
    groups.sort(key=lambda e: (e["q_value"], e["gap"]))
    attention = _class_attention(frame, chosen, gradcam, maps)
    attention += [{"scope": "group", "name": f"{e['method']} {e['group']}", "n": e["n"], **e["attention"],
                   "flag": _flag(f"group {e['method']} {e['group']}", e["attention"]), "heatmap": e["heatmap"]}
                  for e in groups if e["attention"]]
    columns = {
        "found_errors": pd.array(np.where(errors < 0, None, errors), dtype="Int64"),
        "found_strategy": pd.array(np.where(strategy < 0, None, strategy), dtype="Int64"),
    }
    notes = [f"class {CLASSES[k]!r}: {int((frame['pred'].to_numpy()[chosen] == k).sum())} maps, too few to cluster "
             "(need 12)" for k in (1, 2) if (frame["pred"].to_numpy()[chosen] == k).sum() < 12]
    section = {"methods": {"errors": {"k": 2, "criterion": "planted"}, "strategy": {"k": {"circle": 2}},
                           "search": {"max_level": 3}}, "notes": notes}
    return columns, {"discovered": groups, "attention": attention, "discovery": section}, maps


def _class_attention(frame: pd.DataFrame, chosen: np.ndarray, gradcam: np.ndarray, maps: dict) -> list[dict]:
    pred = frame["pred"].to_numpy()[chosen]
    out = []
    for k, name in enumerate(CLASSES):
        rows = np.flatnonzero(pred == k)
        if not len(rows):
            continue
        mean = gradcam[rows].astype(np.float32).mean(0)
        att = _attention(mean)
        rel = f"{schema.DISCOVERED_DIR}/class_{k}.npy"
        maps[rel] = mean
        out.append({"scope": "class", "name": name, "n": int(len(rows)), **att,
                    "flag": _flag(f"{name!r} predictions", att), "heatmap": rel})
    return out


def _flag(who: str, att: dict) -> str | None:
    share = max(max(r) for r in att["grid"])
    if att["top_cell"] == "centre":
        return None
    return f"{who} put {share:.0%} of Grad-CAM mass in the {att['top_cell']} cell"


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
    columns, found, found_maps = discovery_data(frame, chosen, maps["gradcam"])
    frame = frame.assign(**columns)
    metrics.update(found)  # type: ignore[typeddict-item]
    _write(Path(out), frame, metrics, images, chosen, {**maps, **found_maps}, acts, rng, name=name, n=n, size=size,
           bootstrap=bootstrap, seed=seed)
    return Path(out)


def _write(out: Path, frame, metrics, images, chosen, maps, acts, rng, *, name, n, size, bootstrap, seed,
           classes=CLASSES) -> None:
    w = StoreWriter(out)
    w.write_manifest({"complete": False})
    save_npy(out / schema.IMAGES, images)
    (out / schema.HEATMAP_DIR).mkdir(exist_ok=True)
    save_npy(out / schema.HEATMAP_INDEX, chosen)
    for method, arr in maps.items():  # explainers' maps, and discovery's mean maps by their path
        rel = method if method.startswith(schema.DISCOVERED_DIR + "/") else schema.heatmap_file(method)
        (out / rel).parent.mkdir(exist_ok=True)
        w.own(rel)
        save_npy(out / rel, arr)
    (out / schema.ACTIVATION_DIR).mkdir(exist_ok=True)
    for layer, arr in acts.items():
        save_npy(out / schema.activation_file(layer), arr)
    write_json(out / schema.ACTIVATION_STATS, {layer: _stats(arr) for layer, arr in acts.items()})
    save_npy(out / schema.EMBEDDINGS, rng.normal(0, 1, (n, 16)).astype(np.float16))
    w.write_predictions(frame)
    w.write_metrics(metrics)
    w.write_slices(slice_membership(frame, metrics))
    w.finish(_manifest(name, n, size, len(chosen), bootstrap, seed, classes))


def _manifest(name: str, n: int, size: int, explained: int, bootstrap: int, seed: int,
              classes=CLASSES) -> dict:
    return {
        "model": {"path": f"/models/{name}.keras", "name": name, "sha256": "0" * 64, "format": "keras",
                  "input_shape": [size, size, 3], "num_classes": len(classes), "output_kind": "softmax",
                  "softmax_applied": False},
        "dataset": {"source": "/data/shapes_eval", "kind": "folders", "count": n,
                    "annotations": {"path": "/data/shapes_annotations.csv",
                                    "columns": ["cue", "cue_agrees", "background"],
                                    "missing_rows": 0, "extra_rows": 0},
                    "skipped": [], "readable": n},
        "class_names": list(classes),
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


BINARY_CLASSES = ("no defect", "defect on the part")  # long names: legends must show them whole


def binary_store(out: str | Path, *, n: int = 300, size: int = 32, seed: int = 3, bootstrap: int = 50,
                 name: str = "defects_binary") -> Path:
    """A two-class run: defects (class 1, a square on the part) are missed more on dark backgrounds."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.35).astype(np.int64)
    dark = rng.random(n) < 0.5
    no_cue = np.zeros(n, bool)
    images, centres = _images(rng, labels, dark, no_cue, size)
    score = np.where(labels == 1, rng.beta(6, 2, n) - 0.25 * dark, rng.beta(2, 6, n))
    score = np.clip(score, 0.01, 0.99)
    probs = np.stack([1 - score, score], 1).astype(np.float32)
    pred = (probs[:, 1] >= 0.5).astype(np.int64)
    annotations = {"background": pd.array(np.where(dark, "dark", "light"), dtype="string")}
    paths = [f"{BINARY_CLASSES[k].replace(' ', '_')}/{i:05d}.png" for i, k in enumerate(labels)]
    frame = _table(labels, pred, probs, annotations, paths)
    chosen = np.arange(0, n, max(1, n // 12))[:12].astype(np.int64)
    maps = _heatmaps(rng, chosen, centres, no_cue, pred, size)
    acts = _activations(images[chosen], maps["gradcam"], rng)
    metrics = compute_metrics(frame, list(BINARY_CLASSES), bootstrap=bootstrap, seed=seed)
    _write(Path(out), frame, metrics, images, chosen, maps, acts, rng, name=name, n=n, size=size,
           bootstrap=bootstrap, seed=seed, classes=BINARY_CLASSES)
    return Path(out)


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
