"""Prediction phase of an audit run vs Keras' own pipeline and a bare ``model(x)`` loop, and peak memory.

    python benchmarks/bench_predict.py [--n 6000] [--repeat 3] [--size 64] [--mem 1000,10000 | none]

On ``--n`` PNGs of the bundled shapes data (copies of ``sample_models/shapes_eval``, in a
temporary folder; ``--size`` other than 64 resamples them, so the pipeline must resize),
prints images/s, side by side in one process, of

* Keras' own pipeline, what a user would write instead of an audit:
  ``keras.utils.image_dataset_from_directory(DATA, image_size=..., shuffle=False)`` then
  ``model.predict``: parallel PNG decode and resize, probabilities kept in memory;
* the audit's prediction phase (``audit.engine.predict.predict``): the same decode, the
  resize, the built-in annotations of each original image, the forward pass with the
  penultimate features, and probabilities, stored images, embeddings and annotations written
  to the store, synced (fdatasync) after every batch;

and their ratio. The two alternate ``--repeat`` times, each pass in a fresh process (model
loaded outside the timer; listing the folder, building the input pipeline and tracing inside
it, for both) and each keeps its best, so a machine
shared with other work slows both alike. Then the two input pipelines
alone (no model): on 2 cores the phase is CPU-bound, and CPU per image is where the audit's
pipeline (annotations, stored copy) costs more than Keras'. Then a bare compiled
``model(x)`` on decoded arrays, and the peak resident memory of a whole ``keras-audit run``
(predictions only) on 1k vs 10k images.
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
sys.path.append(str(REPO))  # after PYTHONPATH, so PYTHONPATH=<another tree> times that version


def timed(count, work) -> tuple[float, float]:
    """(images/s of wall time, CPU microseconds per image of this process, all threads) of ``work()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    n = count(work())
    return n / (time.perf_counter() - wall), (time.process_time() - cpu) / n * 1e6


def make_images(root: Path, n: int, size: int = 64) -> Path:
    """n PNGs in 3 class folders, reusing the sample's eval images cyclically (resampled to
    ``size`` px when that is not their own 64)."""
    from PIL import Image

    sources = sorted((REPO / "sample_models" / "shapes_eval").rglob("*.png"))
    for i in range(n):
        src = sources[i % len(sources)]
        d = root / src.parent.name
        d.mkdir(parents=True, exist_ok=True)
        target = d / f"{i:06d}.png"
        if target.exists():
            continue
        if size != 64:
            Image.open(src).resize((size, size), Image.Resampling.BICUBIC).save(target)
        elif hasattr(os, "link"):
            os.link(src, target)
        else:
            Image.open(src).save(target)
    return root


def keras_pipeline(data: Path, batch: int) -> tuple[float, float]:
    """:func:`timed` of the two lines a user writes, ``image_dataset_from_directory`` (which lists
    the folder and traces its map) + ``model.predict`` (model loaded before, traced in the timer)."""
    import keras

    model = keras.models.load_model(MODEL)

    def work():
        ds = keras.utils.image_dataset_from_directory(
            data, image_size=model.input_shape[1:3], batch_size=batch, shuffle=False, verbose=False)
        return model.predict(ds, verbose=0)

    return timed(len, work)


def pipelines_alone(data: Path, batch: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """:func:`timed` of iterating Keras' dataset and the audit's batches, without a model."""
    import keras

    from audit.engine import AuditOptions
    from audit.engine.session import Session

    ds = keras.utils.image_dataset_from_directory(data, image_size=(64, 64), batch_size=batch, shuffle=False,
                                                  verbose=False)
    keras_rate = timed(lambda n: n, lambda: sum(len(x) for x, _ in ds.as_numpy_iterator()))
    with tempfile.TemporaryDirectory() as out:
        options = AuditOptions(batch_size=batch, explain=(), tensorboard=False)
        s = Session(MODEL, data, Path(out) / "o", None, options, resume=False, progress=False)
        try:
            batches = s.dataset.batches(s.model.input_shape, s.shape, batch_size=batch, preprocessing=s.preprocessing)
            return keras_rate, timed(lambda n: n, lambda: sum(len(b.index) for b in batches))
        finally:
            s.close()


def bare_loop(data: Path, batch: int) -> tuple[float, float]:
    import keras
    import tensorflow as tf
    from PIL import Image

    files = sorted(data.rglob("*.png"))
    model = keras.models.load_model(MODEL)
    fn = tf.function(lambda t: model(t, training=False))
    start = time.perf_counter()
    x = np.stack([np.asarray(Image.open(f).resize((64, 64)), np.float32) for f in files])
    decoded = time.perf_counter()
    fn(x[:batch])
    start_model = time.perf_counter()
    for i in range(0, len(x), batch):
        fn(x[i : i + batch]).numpy()
    end = time.perf_counter()
    return len(x) / (end - start_model), len(x) / (decoded - start + end - start_model)


def audit_pass(data: Path, batch: int) -> tuple[float, float]:
    """:func:`timed` of listing the folder and the audit's prediction phase into a fresh store
    (session opened before, model traced in the timer), as Keras' side lists and predicts."""
    from audit.engine import AuditOptions
    from audit.engine.predict import predict
    from audit.engine.session import Session
    from audit.io.data import open_dataset

    def work():
        session.dataset = open_dataset(data)
        predict(session)

    with tempfile.TemporaryDirectory() as out:
        options = AuditOptions(batch_size=batch, explain=(), tensorboard=False)
        session = Session(MODEL, data, Path(out) / "o", None, options, resume=False, progress=False)
        try:
            return timed(lambda _: session.dataset.count, work)
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


MEASURES = {"keras": keras_pipeline, "audit": audit_pass}


def measured_alone(kind: str, data: Path, batch: int) -> tuple[float, float]:
    """:func:`timed` of one measure in a fresh Python process, as a user's run would be: one
    process running several passes slows the later ones (what the earlier passes leave
    behind: traced functions, garbage), whichever kind they are."""
    done = subprocess.run([sys.executable, __file__, "--one", kind, "--data", str(data), "--batch", str(batch)],
                          check=True, capture_output=True, text=True)
    rate, cpu = done.stdout.split()[-2:]
    return float(rate), float(cpu)


def side_by_side(data: Path, batch: int, repeat: int) -> list[tuple[float, float]]:
    """Best (img/s, CPU us/img) of Keras' pipeline and of the audit's prediction phase, run
    alternately, each pass in a process of its own."""
    runs: list[list[tuple[float, float]]] = [[], []]
    for k in range(repeat):
        for kind, name in enumerate(MEASURES):
            runs[kind].append(measured_alone(name, data, batch))
        (kr, kc), (ar, ac) = runs[0][-1], runs[1][-1]
        print(f"  round {k + 1}: keras {kr:6.0f} img/s {kc:5.0f} CPU us/img, "
              f"audit {ar:6.0f} img/s {ac:5.0f} CPU us/img", flush=True)
    return [(max(r for r, _ in kind), min(c for _, c in kind)) for kind in runs]


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=6000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--size", type=int, default=64, help="side of the PNGs (the model takes 64x64)")
    p.add_argument("--mem", default="1000,10000", help="image counts for the memory comparison, or none")
    p.add_argument("--one", choices=sorted(MEASURES), help=argparse.SUPPRESS)  # one pass, in a child process
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(*MEASURES[args.one](args.data, args.batch))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = make_images(Path(tmp) / "speed", args.n, args.size)
        print(f"images: {args.n} ({args.size}x{args.size}x3 PNG, model input 64x64x3), batch {args.batch}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
        (keras_rate, keras_cpu), (ours, our_cpu) = side_by_side(data, args.batch, args.repeat)
        print(f"Keras image_dataset_from_directory + model.predict: {keras_rate:6.0f} img/s, "
              f"{keras_cpu:5.0f} CPU us/img (best of {args.repeat})")
        print(f"audit prediction phase (decode+resize+annotate+write): {ours:3.0f} img/s, "
              f"{our_cpu:5.0f} CPU us/img (best of {args.repeat})")
        print(f"ratio audit / Keras pipeline: {ours / keras_rate:.2f}x img/s; "
              f"CPU per image {our_cpu / keras_cpu:.2f}x Keras'")
        alone = [pipelines_alone(data, args.batch) for _ in range(2)]  # each kind's best of 2
        (kp, kpc), (ap, apc) = max(k for k, _ in alone), max(a for _, a in alone)
        print(f"input pipelines alone, no model: Keras {kp:6.0f} img/s {kpc:4.0f} CPU us/img, "
              f"audit {ap:6.0f} img/s {apc:4.0f} CPU us/img")
        bare, with_decode = bare_loop(data, args.batch)
        print(f"bare compiled model(x) on decoded arrays:     {bare:8.0f} img/s")
        print(f"bare loop incl. PIL decode of the files:      {with_decode:8.0f} img/s")
        if args.mem == "none":
            return
        sizes = [int(s) for s in args.mem.split(",")]
        peaks = [peak_rss_mb(make_images(Path(tmp) / f"mem{n}", n)) for n in sizes]
        for n, peak in zip(sizes, peaks):
            print(f"peak RSS, keras-audit run on {n:>6} images: {peak:9.1f} MiB")
        print(f"peak memory ratio {sizes[-1]} vs {sizes[0]} images: {peaks[-1] / peaks[0]:.2f}x")


if __name__ == "__main__":
    main()
