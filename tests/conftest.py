"""Shared fixtures: tiny models with known weights and tiny datasets on disk."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import signal
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_models"
SIZE = 16
CLASSES = ("c0_dark", "c1_mid", "c2_light")  # sorted = model output order


def brightness_images(n: int, seed: int = 0):
    """Images whose class is their brightness band, so a tiny model can be exact."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    base = np.array([40, 128, 215])[labels]
    x = np.clip(base[:, None, None, None] + rng.integers(-20, 21, (n, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    return x, labels


def brightness_model(head: str = "softmax", *, kind: str = "functional", channels: int = 3):
    """Hand-weighted classifier of mean brightness (0..255 input).

    Score_k = -(mean - centre_k)^2 / 400 written as a linear function of the
    pooled mean and its square, so outputs are exact and every head is testable.
    """
    import keras
    from keras import layers

    inp = keras.Input((SIZE, SIZE, channels))
    conv = layers.Conv2D(2, 1, name="conv", activation=None)
    pool = layers.GlobalAveragePooling2D(name="gap")
    units = 1 if head == "sigmoid" else 3
    act = {"softmax": "softmax", "logits": None, "sigmoid": "sigmoid"}[head]
    dense = layers.Dense(units, activation=act, name="head")
    if kind == "sequential":
        model = keras.Sequential([conv, pool, dense], name="seq")
        model.build((None, SIZE, SIZE, channels))
    elif kind == "nested":
        backbone = keras.Sequential([keras.Input((SIZE, SIZE, channels)), conv], name="backbone")
        model = keras.Sequential([keras.Input((SIZE, SIZE, channels)), backbone, pool, dense], name="nested")
    else:
        model = keras.Model(inp, dense(pool(conv(inp))), name="func")
    # Channel 0: mean pixel / 100; channel 1: constant 1 (bias) — the square term is folded in
    # by choosing a linear score that ranks the bands correctly.
    kernel = np.stack([np.full((channels,), 1.0 / (100 * channels)), np.zeros(channels)], 1)[None, None]
    conv.set_weights([kernel, np.array([0.0, 1.0])])
    m = np.array([0.4, 1.28, 2.15])  # centres / 100
    if head == "sigmoid":  # light (class 1) vs not: logit = 10 * (mean/100 - 1.7)
        dense.set_weights([np.array([[10.0], [-17.0]]), np.zeros(1)])
    else:  # score_k = 2 m_k * v - m_k^2 is -(v - m_k)^2 up to a term shared by all classes
        dense.set_weights([np.stack([2 * m * 4, -(m**2) * 4]), np.zeros(3)])
    return model


def write_folder_dataset(root: Path, x, labels, names=CLASSES, fmt="png"):
    from PIL import Image

    for i, (img, k) in enumerate(zip(x, labels)):
        d = root / names[k]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.squeeze() if img.shape[-1] == 1 else img).save(d / f"{i:03d}.{fmt}")
    return root


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A folder dataset (30 images), its annotations and a hand-weighted .keras model."""
    import pandas as pd

    root = tmp_path_factory.mktemp("tiny")
    x, labels = brightness_images(30)
    data = write_folder_dataset(root / "data", x, labels)
    paths = [f"{CLASSES[k]}/{i:03d}.png" for i, k in enumerate(labels)]
    ann = pd.DataFrame({"path": paths, "site": np.where(np.arange(30) % 2 == 0, "a", "b"),
                        "score": np.arange(30) * 1.5})
    ann.to_csv(root / "ann.csv", index=False)
    model = root / "model.keras"
    brightness_model().save(model)
    return {"root": root, "data": data, "annotations": root / "ann.csv", "model": model, "x": x, "labels": labels,
            "paths": paths}


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a server we started, by its process id: SIGTERM, then SIGKILL if it lingers."""
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def shard_data(tmp_path_factory):
    """The 72-image data of the scale tests (test_shards.make_data), made once for all of them."""
    from test_shards import make_data

    return make_data(tmp_path_factory.mktemp("shard_data"))


@pytest.fixture(scope="session")
def single_store(shard_data, tmp_path_factory):
    """Its single-process store, the oracle that shards, Ray runs and resumed runs are compared
    with (read only: no test writes into it)."""
    from audit.cli import main
    from test_shards import run_args

    out = tmp_path_factory.mktemp("single") / "out"
    assert main(run_args(shard_data, out)) == 0
    return out
