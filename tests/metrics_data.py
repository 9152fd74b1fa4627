"""Synthetic predictions with planted ground truth, and results stores built from them.

``planted_predictions`` makes a table whose accuracy is set per annotation
value, so tests know which slice must be flagged and by how much. ``write_store``
lays a table out on disk exactly as :mod:`audit.store.schema` describes, for
the report, comparison and store tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from audit.store import schema

DARK_ACCURACY = 0.6
BASE_ACCURACY = 0.9


def predictions_from(labels: np.ndarray, correct: np.ndarray, num_classes: int, rng: np.random.Generator,
                     extra: dict | None = None) -> pd.DataFrame:
    """A predictions table whose rows are right exactly where ``correct`` says.

    The predicted class gets a probability above 0.5 (so it is the argmax) that
    tends to be higher on correct rows; the rest is spread over other classes.
    """
    n = len(labels)
    offset = rng.integers(1, num_classes, n)
    pred = np.where(correct, labels, (labels + offset) % num_classes)
    confidence = np.where(correct, rng.beta(8, 2, n), rng.beta(3, 3, n)) * 0.49 + 0.51
    others = rng.dirichlet(np.ones(num_classes - 1), n) * (1 - confidence)[:, None]
    probs = np.empty((n, num_classes))
    for k in range(num_classes):
        # Scatter the other classes' shares around the predicted class's column.
        col = np.where(k < pred, k, k - 1)
        probs[:, k] = np.where(pred == k, confidence, others[np.arange(n), np.clip(col, 0, num_classes - 2)])
    frame = pd.DataFrame({
        "index": np.arange(n, dtype=np.int64),
        "path": [f"img_{i:05d}.png" for i in range(n)],
        "label": labels.astype(np.int64),
        "pred": pred.astype(np.int64),
        "confidence": confidence.astype(np.float32),
        "correct": correct.astype(bool),
    })
    for k in range(num_classes):
        frame[schema.prob_column(k)] = probs[:, k].astype(np.float32)
    for name, values in (extra or {}).items():
        frame[name] = values
    return frame


def builtin_annotations(n: int, rng: np.random.Generator) -> dict:
    """Raw built-in annotations, independent of correctness."""
    return {
        "aspect_ratio": rng.choice([0.75, 1.0, 1.333], n),
        "resolution": rng.integers(24, 400, n).astype(np.float64) ** 2,
        "brightness": rng.uniform(0.1, 0.9, n),
        "contrast": rng.uniform(0.05, 0.4, n),
    }


def planted_predictions(n: int = 2000, num_classes: int = 3, seed: int = 0, *,
                        dark_fraction: float = 0.25, builtins: bool = True) -> pd.DataFrame:
    """Rows on a ``dark`` background are right with p = DARK_ACCURACY, others with BASE_ACCURACY.

    ``site`` (3 values) and the built-in annotations carry no effect.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    background = np.where(rng.random(n) < dark_fraction, "dark", "light")
    correct = rng.random(n) < np.where(background == "dark", DARK_ACCURACY, BASE_ACCURACY)
    extra = {"background": background, "site": rng.choice(["a", "b", "c"], n)}
    if builtins:
        extra.update(builtin_annotations(n, rng))
    return predictions_from(labels, correct, num_classes, rng, extra)


def write_store(path: Path, frame: pd.DataFrame, class_names: list[str], *, model_name: str = "synthetic",
                heatmaps: bool = True, images: bool = True, metrics: dict | None = None,
                bootstrap: int = 200) -> Path:
    """A complete results store at ``path`` holding ``frame`` (metrics computed unless given), with its
    slice membership (slices.parquet) as the engine writes it."""
    from audit.metrics import compute_metrics, slice_membership

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    n = len(frame)
    frame.to_parquet(path / schema.PREDICTIONS, index=False)
    if metrics is None:
        metrics = compute_metrics(frame, class_names, bootstrap=bootstrap)
    (path / schema.METRICS).write_text(json.dumps(metrics))
    slice_membership(frame, metrics).to_parquet(path / schema.SLICES, index=False)
    rng = np.random.default_rng(n)
    if images:
        np.save(path / schema.IMAGES, rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8))
    if heatmaps:
        (path / schema.HEATMAP_DIR).mkdir(exist_ok=True)
        explained = np.flatnonzero(~frame["correct"].to_numpy())[:20].astype(np.int64)
        np.save(path / schema.HEATMAP_INDEX, explained)
        np.save(path / schema.heatmap_file("gradcam"), rng.random((len(explained), 16, 16)).astype(np.float16))
    manifest = {
        "store": schema.STORE_MARKER,  # a store of this schema, as StoreWriter marks it
        "schema_version": schema.SCHEMA_VERSION,
        "complete": True,
        "class_names": list(class_names),
        "dataset": {"count": n, "source": "synthetic/", "kind": "npz"},
        "model": {"name": model_name, "path": f"{model_name}.keras", "output_kind": "softmax"},
        "options": {"bootstrap": bootstrap},
    }
    (path / schema.MANIFEST).write_text(json.dumps(manifest))
    return path
