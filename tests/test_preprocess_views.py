"""Preprocessing as the views show it, its inverse for display, and the near-chance note."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from audit.engine.options import AuditOptions
from audit.io.preprocess import MODES, preset
from audit.pipeline import run_audit
from audit.views.report import preprocessing_words, write_report
from conftest import brightness_model

ENTRY = Path(__file__).resolve().parents[1] / "audit" / "views" / "app" / "main.py"
FAST = {"explain": (), "bootstrap": 0, "tensorboard": False, "min_slice_size": 5}
WORDS = "preprocessing: tf (x/127.5 − 1), resize pad"
NEAR_CHANCE = "is near chance: are the inputs scaled as in training? (see --preprocess)"


@pytest.fixture(scope="module")
def tf_pad_store(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("tf_pad") / "out"
    options = AuditOptions(preprocess="tf", resize="pad", **FAST)
    return run_audit(tiny["model"], tiny["data"], out, options=options, progress=False)


def test_words_of_every_mode():
    assert preprocessing_words(preset("tf", "pad").describe()) == "tf (x/127.5 − 1), resize pad"
    assert preprocessing_words(preset("unit").describe()) == "unit (x/255), resize stretch"
    assert preprocessing_words(preset("none").describe()) == "none (x in 0..255), resize stretch"
    assert preprocessing_words(preset("vgg16").describe()) == (
        "vgg16 (RGB to BGR, x − (103.939, 116.779, 123.68)), resize stretch")
    assert preprocessing_words(preset("torch", "crop").describe()) == (
        "torch ((x − (123.675, 116.28, 103.53))/(58.395, 57.12, 57.375)), resize crop")
    assert preprocessing_words(None) == "" and preprocessing_words({}) == ""  # a store from before


def test_report_run_section_shows_preprocessing(tf_pad_store):
    text = write_report(tf_pad_store, "md").read_text()
    assert WORDS in text
    assert text.index(WORDS) < text.index("## Headline")  # in the run section, not further down
    manifest = json.loads((tf_pad_store / "manifest.json").read_text())
    assert manifest["preprocessing"]["name"] == "tf" and manifest["preprocessing"]["resize"] == "pad"


def test_app_sidebar_shows_preprocessing(tf_pad_store, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(ENTRY), str(tf_pad_store)])
    at = AppTest.from_file(str(ENTRY), default_timeout=90).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(WORDS in m.value for m in at.sidebar.markdown)


@pytest.mark.parametrize("mode", MODES)
def test_inverse_undoes_keras_preprocess_input(mode):
    from keras.applications import imagenet_utils

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 5, 4, 3)).astype(np.uint8)
    if mode in ("none", "unit"):
        y = x.astype(np.float32) / (255.0 if mode == "unit" else 1.0)
    else:
        y = np.asarray(imagenet_utils.preprocess_input(x.astype(np.float32), data_format="channels_last", mode=mode))
    back = preset(mode).inverse(y)
    assert back.dtype == np.uint8
    assert np.abs(back.astype(int) - x.astype(int)).max() <= 1


def _uniform_model(path: Path) -> Path:
    model = brightness_model()
    head = model.get_layer("head")
    head.set_weights([np.zeros_like(w) for w in head.get_weights()])  # every class 1/3
    model.save(path)
    return path


def test_near_chance_note(tiny, tmp_path):
    out = run_audit(_uniform_model(tmp_path / "uniform.keras"), tiny["data"], tmp_path / "out",
                    options=AuditOptions(**FAST), progress=False)
    notes = json.loads((out / "manifest.json").read_text())["notes"]
    assert f"mean confidence 0.33 with 3 classes {NEAR_CHANCE}" in notes
    assert NEAR_CHANCE in write_report(out, "md").read_text()


def test_no_near_chance_note_for_a_confident_model(tf_pad_store):
    # The brightness model reads -1..1 inputs as dark: wrong, but confident, so no note.
    notes = json.loads((tf_pad_store / "manifest.json").read_text())["notes"]
    assert not any(NEAR_CHANCE in n for n in notes)


def test_overview_of_a_run_whose_slices_are_all_too_small(tiny, tmp_path, monkeypatch):
    """30 examples and the default minimum of 30 per slice: nothing can be tested, and the
    overview says so instead of failing on the missing gaps."""
    out = run_audit(tiny["model"], tiny["data"], tmp_path / "out", annotations=tiny["annotations"], progress=False,
                    options=AuditOptions(explain=(), bootstrap=0, tensorboard=False))
    monkeypatch.setattr(sys, "argv", [str(ENTRY), str(out)])
    at = AppTest.from_file(str(ENTRY), default_timeout=90).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("No slice differs" in s.value for s in at.success)
