"""A real-sized transfer-learning model: keras-audit's phases against a bare forward pass.

ResNet50V2 (``weights=None``: nothing downloaded; speed does not depend on the weights)
at 224x224, nested in the usual Sequential head. Prints, side by side from one run,
images/s and the ratio to a compiled forward pass (``tf.function(model)`` on a
preprocessed batch) of: keras-audit's predict phase (``LoadedModel.predict``, what the
engine runs over preprocessed arrays), Grad-CAM at the default layer (inside the
backbone), and occlusion with patch 28 / stride 28 and with the run's default patch.

    python benchmarks/bench_transfer.py                  # about 3-5 minutes on 2 cores
    python benchmarks/bench_transfer.py --images 8 --occlusion-images 2   # quick look

Each timing is the best of ``--repeats`` runs after a warm-up call, the methods
alternating (see bench_explain.py: the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_explain import best_times  # noqa: E402  (one timing rule for every benchmark)


def build_model(size: int, classes: int = 5):
    import keras

    keras.utils.set_random_seed(0)
    backbone = keras.applications.ResNet50V2(weights=None, include_top=False, input_shape=(size, size, 3))
    return keras.Sequential([
        backbone,
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(classes, activation="softmax"),
    ], name="transfer")


def measure(args) -> dict:
    import keras
    import tensorflow as tf

    from audit.explain import GradCAM, OcclusionSensitivity
    from audit.explain.registry import build_explainer
    from audit.io.models import from_keras

    model = build_model(args.size)
    loaded = from_keras(model)
    pixels = np.random.default_rng(0).integers(0, 256, (args.images, args.size, args.size, 3)).astype(np.float32)
    x = keras.applications.resnet_v2.preprocess_input(pixels)
    n, occ_n = len(x), min(len(x), args.occlusion_images)
    forward = tf.function(model)

    def run_forward():
        for i in range(0, n, args.batch):
            forward(x[i : i + args.batch]).numpy()

    gradcam = GradCAM(loaded, batch_size=args.batch)
    occlusions = {"28": OcclusionSensitivity(loaded, patch_size=28, stride=28),
                  "default": build_explainer("occlusion", loaded)}
    tasks = {"forward": run_forward, "predict": lambda: loaded.predict(x, batch_size=args.batch),
             "gradcam": lambda: gradcam(x)}
    for label, occ in occlusions.items():
        tasks[f"occlusion_{label}"] = lambda occ=occ: occ(x[:occ_n])
    best = best_times(tasks, args.repeats)
    out: dict = {"model": "ResNet50V2 + head", "params": model.count_params(), "size": args.size, "images": n,
                 "occlusion_images": occ_n, "batch": args.batch, "gradcam_layer": gradcam.layer_name}
    for name in ("forward", "predict", "gradcam"):
        out[name] = n / best[name]
    for label, occ in occlusions.items():
        out[f"occlusion_{label}"] = occ_n / best[f"occlusion_{label}"]
        out[f"occlusion_{label}_patch"] = occ.patch_size
        out[f"occlusion_{label}_stride"] = occ.stride
        out[f"occlusion_{label}_patches"] = occ.patches_for(args.size, args.size)
    return out


def print_table(r: dict) -> None:
    f = r["forward"]
    print(f"{r['model']}: {r['params']:,} parameters, {r['size']}x{r['size']}, {r['images']} images "
          f"(occlusion: {r['occlusion_images']}), batch {r['batch']}; Grad-CAM layer {r['gradcam_layer']}")
    print(f"{'phase':<44}{'img/s':>10}{'x forward':>11}")
    rows = [("forward pass (tf.function(model))", f), ("keras-audit predict (LoadedModel.predict)", r["predict"]),
            ("Grad-CAM (default layer)", r["gradcam"])]
    for label in ("28", "default"):
        patches = r[f"occlusion_{label}_patches"]
        rows.append((f"occlusion patch {r[f'occlusion_{label}_patch']} stride {r[f'occlusion_{label}_stride']} "
                     f"({patches} patches)", r[f"occlusion_{label}"]))
        rows.append((f"  ideal: forward / {patches + 1} passes", f / (patches + 1)))
    for name, value in rows:
        print(f"{name:<44}{value:>10.2f}{value / f:>11.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--occlusion-images", type=int, default=4)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print the figures as JSON as well")
    args = p.parse_args()
    result = measure(args)
    print_table(result)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
