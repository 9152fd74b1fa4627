"""Explainer speed and memory, measured side by side on one model and one batch.

Prints images/s for a compiled forward pass (``tf.function(model)``), our
Grad-CAM, tf-explain's GradCAM, our occlusion, the ideal occlusion (forward
images/s divided by patches per image) and tf-explain's OcclusionSensitivity,
with the ratios the explainers issue asks for; then the peak RSS of explaining
1k and 10k images, each in a fresh subprocess.

    python benchmarks/bench_explain.py                 # full run, about 2-3 minutes on 2 cores
    python benchmarks/bench_explain.py --images 128 --no-memory   # quick look

Each timing is the best of ``--repeats`` runs after a warm-up call, and the
runs of different methods alternate, because the machine is shared: the best
run is the least disturbed one, and alternating spreads any load evenly.
tf-explain is timed once after its warm-up (it is 10-100x slower).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def build_model(size: int):
    """A ~100k-parameter CNN (random weights, seeded): speed does not depend on training."""
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    inp = keras.Input((size, size, 3))
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv1")(inp)
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="conv3")(x)
    x = layers.Conv2D(128, 3, padding="same", activation="relu", name="conv_last")(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(10, activation="softmax", name="head")(x)
    return keras.Model(inp, out, name="bench_cnn")


def best_times(tasks: dict, repeats: int) -> dict:
    """Best wall time of each task, timed round-robin so that load from other
    processes on the shared machine hits every task alike."""
    for fn in tasks.values():
        fn()
    best = {name: float("inf") for name in tasks}
    for _ in range(repeats):
        for name, fn in tasks.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def measure(args) -> dict:
    import tensorflow as tf

    from audit.explain import GradCAM, OcclusionSensitivity

    model = build_model(args.size)
    x = np.random.default_rng(0).random((args.images, args.size, args.size, 3), dtype=np.float32)
    n, occ_n = len(x), min(len(x), args.occlusion_images)
    out: dict = {"params": model.count_params(), "images": n, "size": args.size, "batch": args.batch,
                 "patch": args.patch}

    forward = tf.function(model)

    def run_forward():
        for i in range(0, n, args.batch):
            forward(x[i : i + args.batch]).numpy()

    gradcam = GradCAM(model, layer="conv_last", batch_size=args.batch)
    tasks = {"forward": run_forward, "gradcam": lambda: gradcam(x)}
    for label, stride in (("same", args.patch), ("default", None)):
        occlusion = OcclusionSensitivity(model, patch_size=args.patch, stride=stride)
        tasks[f"occlusion_{label}"] = lambda occlusion=occlusion: occlusion(x[:occ_n])
        out[f"occlusion_{label}_patches"] = occlusion.patches_for(args.size, args.size)
        out[f"occlusion_{label}_stride"] = occlusion.stride
    best = best_times(tasks, args.repeats)
    out["forward"] = n / best["forward"]
    out["gradcam"] = n / best["gradcam"]
    for label in ("same", "default"):
        out[f"occlusion_{label}"] = occ_n / best[f"occlusion_{label}"]
        out[f"occlusion_{label}_ideal"] = out["forward"] / out[f"occlusion_{label}_patches"]

    if not args.no_tf_explain:
        try:
            from tf_explain.core.grad_cam import GradCAM as TfxGradCAM
            from tf_explain.core.occlusion_sensitivity import OcclusionSensitivity as TfxOcclusion
        except ImportError as e:
            out["tf_explain_error"] = str(e).splitlines()[0]
        else:
            tfx_n = min(n, args.tf_explain_occlusion_images)
            tfx_gradcam, tfx_occlusion = TfxGradCAM(), TfxOcclusion()
            # tf-explain's model.predict draws a progress bar per image, and its
            # Model([model.inputs], ...) makes Keras 3 warn on every call
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tfx = best_times({
                    "gradcam": lambda: tfx_gradcam.explain((x, None), model, class_index=0, layer_name="conv_last"),
                    "occlusion": lambda: tfx_occlusion.explain(
                        (x[:tfx_n], None), model, class_index=0, patch_size=args.patch
                    ),
                }, 1)
            out["tf_explain_gradcam"] = n / tfx["gradcam"]
            out["tf_explain_occlusion"] = tfx_n / tfx["occlusion"]
            out["tf_explain_occlusion_images"] = tfx_n
    return out


def memory_child(args) -> None:
    """Explain ``args.memory_child`` images streamed in batches; print the peak RSS in MiB."""
    import resource

    from audit.explain import GradCAM, OcclusionSensitivity

    model = build_model(args.size)
    gradcam = GradCAM(model, layer="conv_last", batch_size=args.batch)
    occlusion = OcclusionSensitivity(model, patch_size=args.size // 2, stride=args.size // 2)
    rng = np.random.default_rng(0)

    def batches():
        for i in range(0, args.memory_child, args.batch):
            yield rng.random((min(args.batch, args.memory_child - i), args.size, args.size, 3), dtype=np.float32)

    start = time.perf_counter()
    checksum = 0.0
    for maps in gradcam.iter_maps(batches()):
        checksum += float(maps.mean())
    for maps in occlusion.iter_maps(batches()):
        checksum += float(maps.mean())
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images": args.memory_child, "peak_rss_mib": peak_mib, "seconds": seconds, "checksum": checksum}))


def memory(args) -> list[dict]:
    rows = []
    for count in args.memory_counts:
        cmd = [sys.executable, __file__, "--memory-child", str(count)]
        cmd += ["--size", str(args.size), "--batch", str(args.batch)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def report(r: dict, mem: list[dict]) -> None:
    def line(name, value, note=""):
        print(f"  {name:<44}{value:>10.1f} images/s  {note}")

    print(f"model: {r['params']:,} parameters, {r['images']} images of {r['size']}x{r['size']}x3, batch {r['batch']}")
    line("compiled forward (tf.function(model))", r["forward"])
    line("our Grad-CAM", r["gradcam"], f"{r['gradcam'] / r['forward']:.2f}x forward (goal >= 0.6)")
    if "tf_explain_gradcam" in r:
        line("tf-explain GradCAM.explain", r["tf_explain_gradcam"],
             f"ours is {r['gradcam'] / r['tf_explain_gradcam']:.1f}x (goal >= 5)")
    for label in ("same", "default"):
        p, s = r[f"occlusion_{label}_patches"], r[f"occlusion_{label}_stride"]
        ideal = r[f"occlusion_{label}_ideal"]
        line(f"ideal occlusion, patch {r['patch']} stride {s} ({p} patches)", ideal)
        line(f"our occlusion, patch {r['patch']} stride {s}", r[f"occlusion_{label}"],
             f"{r[f'occlusion_{label}'] / ideal:.2f}x ideal (goal >= 0.7)")
    if "tf_explain_occlusion" in r:
        line(f"tf-explain OcclusionSensitivity ({r['tf_explain_occlusion_images']} images)", r["tf_explain_occlusion"],
             f"ours (same patch and stride) is {r['occlusion_same'] / r['tf_explain_occlusion']:.1f}x (goal >= 3)")
    elif "tf_explain_error" in r:
        print(f"  tf-explain not measured: {r['tf_explain_error']}")
    for row in mem:
        print(f"  peak RSS, Grad-CAM + occlusion (4 patches) over {row['images']:>6} images: "
              f"{row['peak_rss_mib']:7.0f} MiB  ({row['seconds']:.0f} s)")
    if len(mem) == 2:
        print(f"  peak RSS growth {mem[0]['images']} -> {mem[1]['images']} images: "
              f"{mem[1]['peak_rss_mib'] - mem[0]['peak_rss_mib']:+.0f} MiB")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--occlusion-images", type=int, default=16)
    parser.add_argument("--tf-explain-occlusion-images", type=int, default=16)
    parser.add_argument("--no-tf-explain", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-counts", type=int, nargs=2, default=[1000, 10000])
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args)
        return
    results = measure(args)
    mem = [] if args.no_memory else memory(args)
    report(results, mem)


if __name__ == "__main__":
    main()
