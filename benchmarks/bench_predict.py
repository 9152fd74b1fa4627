"""Prediction pass of an audit run vs a bare compiled ``model(x)`` loop, and peak memory.

    python benchmarks/bench_predict.py [--n 2000] [--mem 1000,10000]

Prints images/s of both on the same images (the audit's pass includes PNG
decoding, resizing, built-in annotations, and writing probabilities, stored
images and embeddings to disk), their ratio, and the peak resident memory of a
whole ``keras-audit run`` (predictions only) on 1k vs 10k images.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "sample_models" / "shapes_bias.keras"


def make_images(root: Path, n: int) -> Path:
    """n PNGs in 3 class folders, reusing the sample's eval images cyclically."""
    from PIL import Image

    sources = sorted((REPO / "sample_models" / "shapes_eval").rglob("*.png"))
    for i in range(n):
        src = sources[i % len(sources)]
        d = root / src.parent.name
        d.mkdir(parents=True, exist_ok=True)
        target = d / f"{i:06d}.png"
        if not target.exists():
            os.link(src, target) if hasattr(os, "link") else Image.open(src).save(target)
    return root


def bare_loop(data: Path, batch: int) -> float:
    import keras
    import tensorflow as tf
    from PIL import Image

    files = sorted(data.rglob("*.png"))
    model = keras.models.load_model(MODEL)
    fn = tf.function(lambda t: model(t, training=False))
    start = time.perf_counter()
    x = np.stack([np.asarray(Image.open(f), np.float32) for f in files])
    decoded = time.perf_counter()
    fn(x[:batch])
    start_model = time.perf_counter()
    for i in range(0, len(x), batch):
        fn(x[i : i + batch]).numpy()
    end = time.perf_counter()
    return len(x) / (end - start_model), len(x) / (decoded - start + end - start_model)


def audit_pass(data: Path, batch: int) -> float:
    from audit.engine import AuditOptions
    from audit.engine.predict import predict
    from audit.engine.session import Session

    with tempfile.TemporaryDirectory() as out:
        options = AuditOptions(batch_size=batch, explain=(), tensorboard=False)
        session = Session(MODEL, data, Path(out) / "o", None, options, resume=False, progress=False)
        try:
            start = time.perf_counter()
            predict(session)
            return session.dataset.count / (time.perf_counter() - start)
        finally:
            session.close()


def peak_rss_mb(data: Path) -> float:
    """Peak RSS of a whole `keras-audit run` (predictions only), in a fresh process of its own."""
    code = (
        "import resource, sys; from audit.cli import main; code = main(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"
    )
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run(
            [sys.executable, "-c", code, "run", str(MODEL), str(data), "--out", f"{out}/o", "--explain", "none",
             "--bootstrap", "100", "--no-tensorboard", "--quiet"],
            check=True, capture_output=True, text=True,
        )
    return int(done.stdout.strip().splitlines()[-1]) / 1024  # ru_maxrss is in KiB


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--mem", default="1000,10000", help="image counts for the memory comparison")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_images(Path(tmp) / "speed", args.n)
        bare, with_decode = bare_loop(data, args.batch)
        ours = audit_pass(data, args.batch)
        print(f"images: {args.n} (64x64x3 PNG), batch {args.batch}")
        print(f"bare compiled model(x) on decoded arrays:     {bare:8.0f} img/s")
        print(f"bare loop incl. PIL decode of the files:      {with_decode:8.0f} img/s")
        print(f"audit prediction pass (decode+resize+write):  {ours:8.0f} img/s   "
              f"ratio {ours / bare:.2f}x model-only, {ours / with_decode:.2f}x decode+model")
        sizes = [int(s) for s in args.mem.split(",")]
        peaks = [peak_rss_mb(make_images(Path(tmp) / f"mem{n}", n)) for n in sizes]
        for n, peak in zip(sizes, peaks):
            print(f"peak RSS, keras-audit run on {n:>6} images: {peak:9.1f} MiB")
        print(f"peak memory ratio {sizes[-1]} vs {sizes[0]} images: {peaks[-1] / peaks[0]:.2f}x")


if __name__ == "__main__":
    main()
