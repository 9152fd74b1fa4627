"""The Ray engine against one process: overhead, scaling with workers, and per-worker memory.

    python benchmarks/bench_scale.py [--n 2000] [--occlusion 60] [--mem 1000,5000,20000 | none]

On PNGs of the bundled shapes data (``bench_predict.make_images``) and the bundled shapes
model, printed side by side in one run:

* overhead: ``--engine ray --workers 1`` (one actor with every CPU) against the single-process
  run (``keras-audit run`` in its own process), on the prediction phase (``--explain none``);
* scaling: 2 workers against 1, each actor with one TensorFlow intra-op thread, on the
  prediction phase and on occlusion (``--explain occlusion --explain-limit 0``: every image);
* memory: the peak resident memory of one worker process that runs the whole dataset
  (``--explain none``), from the smallest to the largest ``--mem`` size.

Rates are steady-state phase rates read from the stores' ``work/state.json`` (polled every
20 ms): images recorded per second while every store of the run is inside the phase, after its
first batch. So TensorFlow's import, Ray's start, an actor's model load and the first trace
(fixed costs a long run pays once) are left out, and what is measured is what a large run pays
per image. Whole-run wall times are printed beside them. A machine shared with other work slows
every configuration; on a loaded 2-core machine a second worker competes for the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench_predict import MODEL, make_images  # noqa: E402

from audit.engine import AuditOptions  # noqa: E402
from audit.engine.distributed import LOCAL_SYSTEM_CONFIG  # noqa: E402

# A small run may hold a subset of the classes (make_images cycles through the sorted sample).
CLASSES = ["circle", "square", "triangle"]
PREDICT = AuditOptions(explain=(), bootstrap=0, tensorboard=False, class_names=CLASSES)
# Small batches: the rate is read from the count recorded after each batch.
OCCLUSION = AuditOptions(explain=("occlusion",), explain_limit=None, bootstrap=0, tensorboard=False,
                         class_names=CLASSES, batch_size=4)


class Poller:
    """Samples (time, value) of one counter of each store's state file, from a thread."""

    def __init__(self, stores: list[Path], key: str):
        self.stores, self.key = stores, key
        self.samples: list[list[tuple[float, int]]] = [[] for _ in stores]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for k, store in enumerate(self.stores):
                try:
                    value = json.loads((store / "work" / "state.json").read_text()).get(self.key)
                except (OSError, ValueError):
                    continue
                if isinstance(value, int) and (not self.samples[k] or self.samples[k][-1][1] != value):
                    self.samples[k].append((time.perf_counter(), value))
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def rate(self) -> float:
        """Images per second while every store was past its first batch and not yet done."""
        if not all(len(s) >= 2 for s in self.samples):
            return float("nan")
        begin = max(s[0][0] for s in self.samples)
        end = min(s[-1][0] for s in self.samples)
        if end <= begin:  # no overlap (one store finished before another started): whole spans
            return sum(s[-1][1] - s[0][1] for s in self.samples) / (max(s[-1][0] for s in self.samples) - min(
                s[0][0] for s in self.samples))
        return sum(_at(s, end) - _at(s, begin) for s in self.samples) / (end - begin)


def _at(samples: list[tuple[float, int]], t: float) -> int:
    return max((v for when, v in samples if when <= t), default=samples[0][1])


def _flags(options: AuditOptions) -> list[str]:
    """The CLI flags of the options this benchmark uses."""
    explain = ",".join(options.explain or ()) or "none"
    return ["--explain", explain, "--explain-limit", str(options.explain_limit or 0), "--batch-size",
            str(options.batch_size), "--bootstrap", "0", "--no-tensorboard", "--quiet",
            "--class-names", ",".join(options.class_names or [])]


def measure(engine: str, data: Path, out: Path, options: AuditOptions, key: str, workers: int = 1,
            cpus_per_worker: int = 1) -> tuple[float, float]:
    """(steady-state images/s of the phase counted by ``key``, whole-run wall seconds)."""
    from audit.engine.distributed import SHARDS_DIR, run_distributed

    shutil.rmtree(out, ignore_errors=True)
    stores = [out] if engine == "local" else [out / SHARDS_DIR / str(k) for k in range(workers)]
    start = time.perf_counter()
    with Poller(stores, key) as poll:
        if engine == "local":  # its own process, as a user runs it (this one hosts Ray's driver)
            subprocess.run([sys.executable, "-m", "audit.cli", "run", str(MODEL), str(data), "--out", str(out),
                            *_flags(options)], check=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                           stdout=subprocess.DEVNULL)
        else:
            run_distributed(MODEL, data, out, options=options, progress=False, workers=workers,
                            cpus_per_worker=cpus_per_worker)
    return poll.rate(), time.perf_counter() - start


def peak_rss(data: Path, out: Path) -> float:
    """Peak RSS (MiB) of the one worker that runs the whole of ``data`` as a single share."""
    import dataclasses

    import ray

    from audit.engine.distributed import start_workers

    shutil.rmtree(out, ignore_errors=True)
    (worker,) = start_workers(ray, 1, cpus_per_worker=1, gpus_per_worker=0)
    options = dataclasses.replace(PREDICT, shard="0/1")
    ray.get(worker.run.remote(str(MODEL), str(data), str(out), None, options))
    rss = ray.get(worker.peak_rss_mb.remote())
    ray.kill(worker)
    return rss


def _row(name: str, rate: float, wall: float, base: float | None = None, target: str = "") -> str:
    ratio = f"{rate / base:5.2f}x" if base else "      "
    return f"  {name:<42} {rate:8.1f} img/s  {ratio}  (whole run {wall:5.1f} s)  {target}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="images for the prediction phase")
    parser.add_argument("--occlusion", type=int, default=60, help="images for occlusion (every one explained)")
    parser.add_argument("--mem", default="1000,5000,20000", help="sizes for per-worker peak RSS, or none")
    args = parser.parse_args()
    import ray

    cpus = os.cpu_count() or 1
    mem = [] if args.mem == "none" else [int(s) for s in args.mem.split(",")]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = {n: make_images(tmp / f"d{n}", n) for n in sorted({args.n, args.occlusion, *mem})}
        ray.init(num_cpus=max(cpus, 2), include_dashboard=False, _node_ip_address="127.0.0.1",
                 object_store_memory=128 << 20, _system_config=LOCAL_SYSTEM_CONFIG, log_to_driver=False,
                 runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}})
        print(f"{cpus} CPUs; load average {os.getloadavg()[0]:.1f} at the start; {args.n} images for predict, "
              f"{args.occlusion} for occlusion; steady-state phase rates")
        d, out = data[args.n], tmp / "out"
        single, w_single = measure("local", d, out, PREDICT, "predict_next")
        ray1, w_ray1 = measure("ray", d, out, PREDICT, "predict_next", workers=1, cpus_per_worker=cpus)
        print("overhead (prediction phase, --explain none)")
        print(_row("single process", single, w_single))
        print(_row(f"--engine ray --workers 1 ({cpus} threads)", ray1, w_ray1, single, "target >= 0.85x"))
        print("scaling (one intra-op thread per worker)")
        for label, n, options, key in (("predict", args.n, PREDICT, "predict_next"),
                                       ("occlusion", args.occlusion, OCCLUSION, "explain_done")):
            one, w_one = measure("ray", data[n], out, options, key, workers=1, cpus_per_worker=1)
            two, w_two = measure("ray", data[n], out, options, key, workers=2, cpus_per_worker=1)
            print(_row(f"{label}: 1 worker", one, w_one))
            print(_row(f"{label}: 2 workers", two, w_two, one, "target >= 1.7x"))
        if mem:
            print("per-worker peak RSS (--explain none, one worker runs everything)")
            for n in mem:
                print(f"  {n:>7} images  {peak_rss(data[n], tmp / 'mem'):8.0f} MiB")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
        ray.shutdown()


if __name__ == "__main__":
    main()
