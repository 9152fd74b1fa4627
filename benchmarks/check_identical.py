"""Check that the prediction phase writes the same bytes as a baseline version of keras-audit.

    python benchmarks/check_identical.py [--baseline REV] [--keep DIR]

Extracts ``audit/`` at git revision ``--baseline`` (default ``HEAD``, read with ``git
archive``, the working tree is not touched), then runs an audit with no explanations
(``audit.engine.run.run_audit``: the phases, without the post-steps such as discovery and
TensorBoard, which read the store and do not write these files) with the baseline and with
this checkout on the same inputs, in fresh processes, and compares
``predictions.parquet`` (bytes, and the frame cell by cell), ``images.npy``,
``embeddings.npy`` and the manifest's list of skipped files. The inputs cover every
branch of the input pipeline: the bundled shapes (PNG folders, 64 px, stored at the
model's size), the digits ``.npz`` (one-channel model), ``--resize pad``/``crop`` with
presets, and a folder of mixed sizes and modes (grey, grey+alpha, RGB, RGBA, JPEG, a
corrupt file) through models of 150x140 input (stored copy smaller than the input), one-
and three-channel. Exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_models"


def baseline_tree(rev: str, into: Path) -> Path:
    """``audit/`` as it is at ``rev``, extracted under ``into`` (an importable root)."""
    blob = subprocess.run(["git", "-C", str(REPO), "archive", rev, "audit"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into


def mixed_folder(root: Path) -> Path:
    """Class folders of images of many sizes and modes, one JPEG and one corrupt file (seeded)."""
    from PIL import Image

    rs = np.random.RandomState(7)
    sizes = [(64, 64), (40, 70), (100, 80), (150, 140), (33, 33), (200, 120)]
    modes = ["RGB", "L", "LA", "RGBA"]
    for i in range(46):
        h, w = sizes[i % len(sizes)]
        mode = modes[i % len(modes)]
        pixels = rs.randint(0, 256, (h, w, len(mode)), dtype=np.uint8)
        d = root / ("abc"[i % 3])
        d.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
        img.save(d / f"{i:03d}.png")
    Image.fromarray(rs.randint(0, 256, (90, 60, 3), dtype=np.uint8)).save(root / "a" / "photo.jpg", quality=90)
    (root / "b" / "broken.png").write_bytes(b"not an image")
    return root


def tiny_model(path: Path, channels: int) -> Path:
    """A small seeded conv net of 150x140 input, so the stored copy (128x119) is smaller than the input."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((150, 140, channels))
    y = keras.layers.Rescaling(1 / 255)(inputs)
    y = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv")(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(y)).save(path)
    return path


def cases(tmp: Path) -> list[tuple[str, Path, Path, dict]]:
    shapes, folder = SAMPLES / "shapes_bias.keras", mixed_folder(tmp / "mixed")
    return [
        ("shapes, defaults", shapes, SAMPLES / "shapes_eval", {}),
        ("shapes, pad + tf, batch 50", shapes, SAMPLES / "shapes_eval",
         {"resize": "pad", "preprocess": "tf", "batch_size": 50}),
        ("digits .npz, 1 channel", SAMPLES / "digits.keras", SAMPLES / "digits_eval.npz", {"rescale": 1 / 255}),
        ("mixed folder, crop + caffe, batch 7", shapes, folder, {"resize": "crop", "preprocess": "caffe",
                                                                 "batch_size": 7}),
        ("mixed folder, 150x140x1 model", tiny_model(tmp / "grey.keras", 1), folder, {"batch_size": 8}),
        ("mixed folder, 150x140x3 model, pad", tiny_model(tmp / "rgb.keras", 3), folder, {"resize": "pad"}),
    ]


RUN = """
import sys
from audit.engine import AuditOptions
from audit.engine.run import run_audit
options = AuditOptions(explain=(), bootstrap=20, tensorboard=False, **{options!r})
run_audit(sys.argv[1], sys.argv[2], sys.argv[3], options=options, progress=False)
"""


def run(src: Path, model: Path, data: Path, out: Path, options: dict) -> Path:
    """One audit with the package found in ``src``, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(src), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", RUN.format(options=options), str(model), str(data), str(out)],
                          env=env, cwd=out.parent, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"audit failed ({src}):\n{done.stderr[-3000:]}")
    return out


def differences(a: Path, b: Path) -> list[str]:
    """What differs between the predict-phase outputs of two stores (empty: identical)."""
    import json

    import pandas as pd

    found = []
    for name in ("predictions.parquet", "images.npy", "embeddings.npy"):
        fa, fb = a / name, b / name
        if fa.is_file() != fb.is_file():
            found.append(f"{name}: in one store only")
        elif fa.is_file() and fa.read_bytes() != fb.read_bytes():
            found.append(f"{name}: bytes differ")
    pa, pb = pd.read_parquet(a / "predictions.parquet"), pd.read_parquet(b / "predictions.parquet")
    common = [c for c in pa.columns if c in pb.columns]
    if not pa[common].equals(pb[common]):
        found.append(f"predictions.parquet: values differ in {[c for c in common if not pa[c].equals(pb[c])]}")
    skipped = [json.loads((s / "manifest.json").read_text()).get("skipped") for s in (a, b)]
    if skipped[0] != skipped[1]:
        found.append("manifest skipped lists differ")
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="HEAD", help="git revision to compare with (default HEAD)")
    p.add_argument("--keep", type=Path, help="keep the stores in this folder")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = args.keep or Path(t)
        tmp.mkdir(parents=True, exist_ok=True)
        base = baseline_tree(args.baseline, tmp / "baseline")
        failed = 0
        for k, (name, model, data, options) in enumerate(cases(tmp)):
            a = run(base, model, data, tmp / f"base{k}", options)
            b = run(REPO, model, data, tmp / f"new{k}", options)
            diff = differences(a, b)
            failed += bool(diff)
            print(f"{'DIFFERENT' if diff else 'identical'}  {name}" + "".join(f"\n    {d}" for d in diff), flush=True)
    print("all stores identical" if not failed else f"{failed} case(s) differ")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
