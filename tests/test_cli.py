"""The command line: one clear line and exit 2 for every user mistake."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from audit.cli import main
from conftest import brightness_images, brightness_model, write_folder_dataset


def _run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _one_error_line(err, *needles):
    lines = [line for line in err if line.startswith("keras-audit: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in "\n".join(err)
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory):
    import keras

    root = tmp_path_factory.mktemp("bad_models")
    nan = brightness_model()
    head = nan.get_layer("head")
    head.set_weights([np.full_like(w, np.nan) for w in head.get_weights()])
    nan.save(root / "nan.keras")
    keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Lambda(lambda t: t + 1), keras.layers.Flatten(),
                      keras.layers.Dense(3, activation="softmax")]).save(root / "lambda.keras")
    keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(3, 1)]).save(root / "segmenter.keras")
    keras.Sequential([keras.Input((16, 16, 2)), keras.layers.Flatten(),
                      keras.layers.Dense(3, activation="softmax")]).save(root / "two_channel.keras")
    (root / "truncated.keras").write_bytes((root / "nan.keras").read_bytes()[:500])
    return root


def test_user_mistakes_exit_2_with_one_line(tiny, bad_models, tmp_path, capsys):
    m, d = str(tiny["model"]), str(tiny["data"])
    out = str(tmp_path / "out")
    cases = [
        ((str(tmp_path / "nope.keras"), d), ["nope.keras", "does not exist"]),
        ((str(bad_models / "truncated.keras"), d), ["truncated.keras", "truncated or corrupt"]),
        ((str(bad_models / "segmenter.keras"), d), ["segmenter.keras", "needs a classifier"]),
        ((str(bad_models / "lambda.keras"), d), ["lambda.keras", "Lambda layer", "--unsafe"]),
        ((str(bad_models / "two_channel.keras"), d), ["two_channel.keras", "2-channel input"]),
        ((m, str(tmp_path / "missing_dir")), ["missing_dir", "does not exist"]),
        ((m, d, "--annotations", str(tmp_path / "none.csv")), ["none.csv", "does not exist"]),
        ((m, d, "--class-names", "a,b"), ["--class-names", "outputs 3"]),
    ]
    for args, needles in cases:
        code, err = _run(capsys, "run", *args, "--out", out, "--quiet", "--no-tensorboard")
        assert code == 2, (args, err)
        _one_error_line(err, *needles)
        assert not os.path.exists(out), "nothing may be written before the inputs are validated"

    (tmp_path / "ann.csv").write_text("where,site\nx.png,a\n")
    code, err = _run(capsys, "run", m, d, "--annotations", str(tmp_path / "ann.csv"), "--out", out)
    assert code == 2
    _one_error_line(err, "ann.csv", "'path' column")

    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("keep me")
    code, err = _run(capsys, "run", m, d, "--out", str(tmp_path / "precious"), "--quiet")
    assert code == 2 and (tmp_path / "precious" / "thesis.tex").read_text() == "keep me"
    _one_error_line(err, "precious", "not a keras-audit store")


def test_nan_outputs_are_refused(tiny, bad_models, tmp_path, capsys):
    code, err = _run(capsys, "run", str(bad_models / "nan.keras"), str(tiny["data"]), "--out", str(tmp_path / "o"),
                     "--quiet", "--no-tensorboard")
    assert code == 2
    _one_error_line(err, "nan.keras", "NaN")


def test_all_images_unreadable(tmp_path, tiny, capsys):
    for k in ("a", "b", "c"):
        (tmp_path / "data" / k).mkdir(parents=True)
        (tmp_path / "data" / k / "x.png").write_bytes(b"\x89PNG broken")
    code, err = _run(capsys, "run", str(tiny["model"]), str(tmp_path / "data"), "--out", str(tmp_path / "o"),
                     "--quiet", "--no-tensorboard")
    assert code == 2
    _one_error_line(err, "none of the 3 images could be read")


def test_some_images_unreadable_are_listed(tmp_path, capsys):
    x, labels = brightness_images(12)
    write_folder_dataset(tmp_path / "data", x, labels)
    bad = sorted((tmp_path / "data").rglob("*.png"))[4]
    bad.write_bytes(b"truncated")
    brightness_model().save(tmp_path / "m.keras")
    code, _ = _run(capsys, "run", str(tmp_path / "m.keras"), str(tmp_path / "data"), "--out", str(tmp_path / "o"),
                   "--quiet", "--no-tensorboard", "--explain", "none", "--bootstrap", "20")
    assert code == 0
    from audit.store.reader import Reader

    run = Reader(tmp_path / "o")
    assert run.manifest["dataset"]["readable"] == 11 and len(run.predictions) == 11
    assert [s["path"] for s in run.manifest["dataset"]["skipped"]] == [bad.relative_to(tmp_path / "data").as_posix()]
    assert any("skipped 1 unreadable" in n for n in run.manifest["notes"])


def test_bad_option_values(capsys):
    for argv in (["run", "m", "d", "--out", "o", "--rescale", "abc"],
                 ["run", "m", "d", "--out", "o", "--explain", "lime"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_console_script_exit_codes(tmp_path):
    """The installed command: a user mistake is one line on stderr and exit 2, no traceback."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    (tmp_path / "data").mkdir()
    argv = ["keras-audit", "run", str(tmp_path / "m.keras"), str(tmp_path / "data"), "--out", str(tmp_path / "o")]
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"keras-audit: error: {tmp_path / 'data'}: data directory is empty"]
    done = subprocess.run([sys.executable, "-c", "import audit, sys; print('tensorflow' in sys.modules)"],
                          capture_output=True, text=True)
    assert done.stdout.strip() == "False", "import audit must stay light"


def test_rescale_takes_fractions_with_decimals():
    from audit.cli import _rescale

    assert _rescale("1/127.5") == 1 / 127.5 and _rescale("1/255") == 1 / 255 and _rescale("0.5") == 0.5
