"""Time discovery on a large synthetic store (issue 12: 100k embeddings of 512-d, 10k maps, < 60 s on 2 cores).

Run: ``python benchmarks/bench_discover.py [--rows 100000] [--dims 512] [--maps 10000] [--side 32]``.
Embeddings and maps are float16, as the store keeps them; 10 classes, a planted
error slice in the embeddings and a planted corner strategy in one class's maps,
5 annotation columns and the 4 built-ins. Prints the time of each part (error
slices, strategy clusters, slice search), then of the whole :func:`discover`
call (which also computes attention and heatmaps), and what each part found.
BLAS threads are capped at ``--threads`` (2, the target machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _threads() -> str:
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
    return "2"


for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, _threads())  # before numpy loads its BLAS

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.discover import discover  # noqa: E402
from audit.discover.errors import error_slices  # noqa: E402
from audit.discover.search import slice_search  # noqa: E402
from audit.discover.strategy import strategy_clusters  # noqa: E402

CLASSES = [f"class_{k}" for k in range(10)]


def store_like(rows: int, dims: int, maps: int, side: int, seed: int = 0):
    """Predictions, embeddings, maps and map rows of a synthetic 10-class run."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 10, rows)
    centres = rng.normal(0, 1, (10, dims)).astype(np.float32) * np.float32(4.5 / np.sqrt(2 * dims))
    emb = centres[label] + rng.standard_normal((rows, dims), dtype=np.float32)
    planted = np.zeros(rows, dtype=bool)
    planted[rng.choice(np.flatnonzero(label == 0), 500, replace=False)] = True
    emb[planted] = 0.3 * centres[0] + 0.7 * centres[1] + rng.standard_normal((500, dims), dtype=np.float32)
    emb[planted, :8] += 4.0
    # a linear head reads the embedding (nearest centre): classes 4.5 noise sd apart, ~10% mistakes
    pred = (emb @ centres.T - 0.5 * (centres**2).sum(1)).argmax(1)
    frame = pd.DataFrame({
        "index": np.arange(rows), "label": label, "pred": pred, "confidence": rng.random(rows),
        "correct": label == pred, "background": rng.choice(["dark", "light", "grey"], rows),
        "camera": rng.choice([f"cam{i}" for i in range(8)], rows), "site": rng.choice(list("nsew"), rows),
        "age_days": rng.exponential(300.0, rows), "occluded": rng.random(rows) < 0.1,
        "aspect_ratio": rng.choice([1.0, 1.33, 0.75], rows), "resolution": rng.integers(64, 1024, rows),
        "brightness": rng.random(rows), "contrast": rng.random(rows),
    })
    map_rows = np.sort(rng.choice(rows, maps, replace=False))
    yy, xx = np.mgrid[:side, :side]
    corner = (pred[map_rows] == 2) & (rng.random(maps) < 0.4)
    cy = np.where(corner, side * 0.1, side * 0.5) + rng.normal(0, side / 20, maps)
    cx = np.where(corner, side * 0.1, side * 0.5) + rng.normal(0, side / 20, maps)
    heat = np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / (2 * (side / 10) ** 2))
    heat = (heat + 0.1 * rng.random((maps, side, side))).astype(np.float16)
    return frame, emb.astype(np.float16), heat, map_rows, planted


def timed(title: str, call):
    """Run ``call``; print wall seconds and this process's CPU seconds (on a shared machine the
    wall time grows with the load, the CPU time does not; CPU / threads bounds the idle wall time)."""
    start, cpu = time.perf_counter(), time.process_time()
    result = call()
    print(f"{title:<44} {time.perf_counter() - start:7.1f} s wall {time.process_time() - cpu:7.1f} s CPU")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=512)
    parser.add_argument("--maps", type=int, default=10_000)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--threads", default="2")
    args = parser.parse_args()
    frame, emb, heat, map_rows, planted = store_like(args.rows, args.dims, args.maps, args.side)
    label, pred = frame["label"].to_numpy(), frame["pred"].to_numpy()
    columns = [c for c in frame.columns if c not in ("index", "label", "pred", "confidence", "correct")]
    print(f"{args.rows} rows, {args.dims}-d float16 embeddings, {args.maps} maps of {args.side}x{args.side}, "
          f"{len(columns)} annotation columns, BLAS threads {os.environ['OMP_NUM_THREADS']}")
    errors, component, info = timed("error slices (PCA + mixture, k by BIC)",
                                    lambda: error_slices(emb, label, pred, CLASSES, seed=0))
    best = min((e for e in errors if e["significant"]), key=lambda e: e["gap_ci"][1])
    print(f"  k = {info['chosen_k']}; strongest: {best['n']} rows, precision "
          f"{planted[component == best['group']].mean():.2f}, q {best['q_value']:.2g}")
    strategy, _, out = timed("strategy clusters (SpRAy, 10 classes)",
                             lambda: strategy_clusters({"gradcam": heat}, map_rows, label, pred, CLASSES))
    print(f"  clusters per class: {out['info']['chosen_k']}")
    search, _, sinfo = timed("slice search (3-way lattice)",
                             lambda: slice_search(frame, label != pred, columns, min_slice_size=30))
    print(f"  evaluated {sinfo['evaluated']}, pruned {sinfo['pruned_by_error_bound']}")
    result = timed("whole discover() (all parts + attention)",
                   lambda: discover(frame, class_names=CLASSES, embeddings=emb, maps={"gradcam": heat},
                                    map_index=map_rows, annotation_columns=columns, seed=0))
    print(f"  {len(result['discovered'])} groups, {sum(e['significant'] for e in result['discovered'])} significant, "
          f"{len(result['attention'])} attention entries, {len(result['heatmaps'])} heatmaps")


if __name__ == "__main__":
    main()
