"""Time compute_metrics on a large synthetic run (issue 4: 100k rows, 5 annotations, bootstrap 1000 < 30 s).

Run: ``python benchmarks/bench_metrics.py [--rows 100000] [--classes 10] [--bootstrap 1000]``.
Prints one line per configuration: wall time, the number of slices, and the
time per bootstrap-using slice column, so a regression to a per-resample loop
shows up as a jump of the whole figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from audit.metrics import compute_metrics  # noqa: E402
from metrics_data import builtin_annotations, predictions_from  # noqa: E402


def table(rows: int, classes: int, seed: int = 0):
    """``rows`` predictions with 5 user annotation columns (one with a planted effect) and the 4 built-ins."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows)
    background = rng.choice(["dark", "light", "grey"], rows, p=[0.2, 0.5, 0.3])
    correct = rng.random(rows) < np.where(background == "dark", 0.7, 0.9)
    extra = {
        "background": background,
        "camera": rng.choice([f"cam{i}" for i in range(8)], rows),
        "site": rng.choice(["north", "south", "east", "west"], rows),
        "age_days": rng.exponential(300.0, rows),
        "occluded": rng.random(rows) < 0.1,
        **builtin_annotations(rows, rng),
    }
    return predictions_from(labels, correct, classes, rng, extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()

    frame = table(args.rows, args.classes)
    names = [f"class_{k}" for k in range(args.classes)]
    user = ["background", "camera", "site", "age_days", "occluded"]
    configs = [
        ("5 user columns (pairs off by default)", dict(annotation_columns=user)),
        ("5 user + 4 built-in columns", dict()),
        ("5 user + 4 built-in columns, all 36 pairs", dict(slice_pairs=True)),
    ]
    for title, options in configs:
        start = time.perf_counter()
        metrics = compute_metrics(frame, names, bootstrap=args.bootstrap, **options)
        elapsed = time.perf_counter() - start
        size = len(json.dumps(metrics))
        print(
            f"{args.rows} rows, {args.classes} classes, bootstrap {args.bootstrap}, {title}: "
            f"{elapsed:.1f} s, {len(metrics['slices']['rows'])} slices, "
            f"{len(metrics['slices']['columns'])} slice columns, metrics.json {size / 1e6:.1f} MB"
        )


if __name__ == "__main__":
    main()
