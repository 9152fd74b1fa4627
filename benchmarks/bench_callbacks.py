"""Seconds per epoch of a small CNN with and without AuditCallback (issue 5: keep the overhead small).

Run: ``python benchmarks/bench_callbacks.py [--epochs 8] [--train 2000] [--val 256] [--repeats 2]``.

Trains the same seeded model (32x32x3, 3 classes, two conv layers) once
without the callback and once per callback configuration, ``--repeats`` times
in alternation so that a busy machine slows every configuration alike. The
first epoch (tracing, the callback's first pass) is left out.
Prints per configuration: mean seconds per epoch (amortised over audited
and skipped epochs), the ratio to the plain run, and the mean time spent
inside the callback's ``on_epoch_end``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

SIZE, CLASSES = 32, 3


def data(n: int, rng: np.random.Generator):
    """Class = which third of the image holds a bright bar; ``site`` is an annotation with no effect."""
    x = rng.uniform(0, 0.3, (n, SIZE, SIZE, 3)).astype(np.float32)
    y = rng.integers(0, CLASSES, n)
    for i, k in enumerate(y):
        x[i, :, k * SIZE // 3 : (k + 1) * SIZE // 3 - 2] += 0.6
    return x, y, {"site": rng.choice(["north", "south"], n), "day": rng.integers(0, 7, n)}


def model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    m = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(16, 3, activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(name="pool1"),
        keras.layers.Conv2D(32, 3, activation="relu", name="conv2"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(CLASSES, activation="softmax", name="head"),
    ])
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def timed_fit(train, callbacks_for, epochs: int, seed: int) -> tuple[list[float], list[float]]:
    """Epoch durations, and the time spent between two timers around the audited callbacks."""
    import keras

    epoch_times, inside = [], []
    marks: dict[str, float] = {}

    class Start(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            marks["begin"] = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            marks["before"] = time.perf_counter()

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            inside.append(now - marks["before"])
            epoch_times.append(now - marks["begin"])

    x, y = train
    model(seed).fit(x, y, epochs=epochs, batch_size=64, verbose=0, callbacks=[Start(), *callbacks_for(), Stop()])
    return epoch_times[1:], inside[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from audit.callbacks import AuditCallback

    rng = np.random.default_rng(0)
    x, y, _ = data(args.train, rng)
    xv, yv, annotations = data(args.val, rng)
    logs = Path(tempfile.mkdtemp(prefix="bench_callbacks_"))
    configs = {
        "no callback": lambda: [],
        "AuditCallback defaults (gradcam, 16 images, all summaries)": lambda: [
            AuditCallback((xv, yv), annotations=annotations, log_dir=logs / f"a{time.time_ns()}")],
        "AuditCallback gradcam + occlusion": lambda: [
            AuditCallback((xv, yv), annotations=annotations, log_dir=logs / f"b{time.time_ns()}",
                          explainers=("gradcam", "occlusion"))],
        "AuditCallback defaults, freq=5": lambda: [
            AuditCallback((xv, yv), annotations=annotations, log_dir=logs / f"c{time.time_ns()}", freq=5)],
    }
    epochs: dict[str, list[float]] = {name: [] for name in configs}
    inside: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, make in configs.items():
            e, i = timed_fit((x, y), make, args.epochs, seed=0)
            epochs[name] += e
            inside[name] += i
    base = statistics.mean(epochs["no callback"])
    print(f"small CNN {SIZE}x{SIZE}x3, {args.train} training / {args.val} validation images, "
          f"{args.epochs} epochs x {args.repeats} (first epoch of each fit left out; means, so freq=5 shows "
          "its amortised cost)")
    for name in configs:
        per_epoch = statistics.mean(epochs[name])
        print(f"  {name:58s} {per_epoch:6.3f} s/epoch  ratio {per_epoch / base:5.2f}  "
              f"in callback {statistics.mean(inside[name]):6.3f} s/epoch")
    print(f"logs: {logs}")


if __name__ == "__main__":
    main()
