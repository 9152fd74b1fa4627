"""The terminal: the summary leads with the strongest finding in words and prints commands that paste
(one line each, whatever the width, through a pipe too); the progress bar's rate and time left come
from finished batches (driven here by a fake clock)."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from rich.console import Console

from audit.progress import bar
from audit.store import schema
from audit.views.terminal import print_summary
from metrics_data import planted_predictions, write_store

LONG = "a results folder whose name is long enough to wrap at eighty columns (copy 2)"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    frame = planted_predictions(600, 3, seed=31)
    path = write_store(tmp_path_factory.mktemp("terminal") / LONG, frame, ["cat", "dog", "fox"], bootstrap=0)
    (path / schema.TENSORBOARD_DIR).mkdir()
    return path


def _dark(store):
    metrics = json.loads((store / schema.METRICS).read_text())
    return next(r for r in metrics["slices"]["rows"] if r["column"] == "background" and r["value"] == "dark")


def _commands(text: str) -> dict[str, list[str]]:
    """The printed commands, split as a shell would, by what they start."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"\s+(app|TensorBoard|report):\s+(.*)$", line)
        if m:
            found[m[1]] = shlex.split(m[2])
    return found


def test_summary_leads_with_the_finding_in_words(store, capsys):
    print_summary(store)
    text = capsys.readouterr().out
    row = _dark(store)
    lines = [line for line in text.splitlines() if line.strip()]
    # right after the accuracy line: the sentence, then what it means
    assert lines[1].startswith("Strongest finding: Accuracy drops ")
    assert lines[1].endswith(f"where background = dark: {row['n']} examples")
    wrong_inside = round((1 - row["accuracy"]) * 100)
    wrong_outside = round((1 - row["rest_accuracy"]) * 100)
    assert lines[2].strip().startswith(f"The model is wrong on {wrong_inside}% of the {row['n']} examples "
                                       f"where background = dark, against {wrong_outside}% of the rest")
    assert text.index("Strongest finding") < text.index("Worst flagged slices")


def test_commands_are_one_line_each_through_a_pipe(store, capsys):
    """capsys is not a terminal: rich would wrap at 80 columns; each command must paste whole."""
    print_summary(store)
    commands = _commands(capsys.readouterr().out)
    assert commands["app"] == ["keras-audit", "app", str(store)]
    assert commands["report"] == ["keras-audit", "report", str(store)]
    assert commands["TensorBoard"] == ["tensorboard", "--logdir", str(store / "tensorboard"), "--host", "127.0.0.1"]


def test_narrow_terminal_does_not_break_commands(store):
    out = io.StringIO()
    print_summary(store, Console(file=out, width=40, soft_wrap=True, highlight=False))
    assert _commands(out.getvalue())["app"] == ["keras-audit", "app", str(store)]


def test_worst_slice_in_words_when_a_discovered_group_leads(store, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(store, copy)
    metrics = json.loads((copy / schema.METRICS).read_text())
    metrics["discovered"] = [{
        # 160 examples, at least 46 points worse: surely 74 more mistakes than the rest's rate would
        # give, against the flagged slice's 155 examples at least 31 points worse (48)
        "method": "errors", "group": 0, "n": 160, "errors": 120, "accuracy": 0.25, "accuracy_ci": [0.14, 0.4],
        "rest_accuracy": 0.86, "gap": -0.61, "gap_ci": [-0.75, -0.46], "p_value": 1e-9, "q_value": 2e-8,
        "description": "fox predictions", "predicate": None, "heatmap": None, "significant": True}]
    (copy / schema.METRICS).write_text(json.dumps(metrics))
    print_summary(copy)
    text = capsys.readouterr().out
    assert "Strongest finding: Accuracy drops 61 points (95% CI 46–75) in a discovered group (fox predictions): " \
           "160 examples" in text
    assert "clustering the embeddings" in text and "q = 2e-08" in text
    assert "Worst slice: Accuracy drops" in text and "where background = dark" in text


# -- progress ------------------------------------------------------------------------------------
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _last_frame(out: io.StringIO) -> str:
    frames = [f.strip() for f in re.split(r"[\r\n]", ANSI.sub("\n", out.getvalue())) if "explain" in f]
    return frames[-1]


def test_bar_says_compiling_then_shows_rate_and_time_left():
    now = [1000.0]
    out = Console(file=io.StringIO(), force_terminal=True, width=160, color_system=None)
    with bar("explain", 120, clock=lambda: now[0], out=out) as advance:
        now[0] = 1020.0
        advance(0)  # nothing finished yet (a refresh at 20 s)
        assert re.search(r"0/120 first batch \(incl\. compiling\) 0:00:20 left --", _last_frame(out.file))
        now[0] = 1040.0
        advance(32)  # the first batch: 40 s, tracing included -> 0.8 img/s, 88 left -> 110 s
        assert re.search(r"32/120 0\.8 img/s 0:00:40 left 0:01:50", _last_frame(out.file))
        now[0] = 1042.0
        advance(32)  # the second: 32 in 2 s -> 16 img/s, 56 left -> 3.5 s
        assert re.search(r"64/120 16 img/s 0:00:42 left 0:00:0[34]", _last_frame(out.file))
        now[0] = 1044.5
        advance(0)  # 2.5 s into the third batch: 1 s left
        assert re.search(r"64/120 16 img/s 0:00:44 left 0:00:01", _last_frame(out.file))
        now[0] = 1046.0
        advance(56)
        assert re.search(r"120/120 \d+(\.\d)? img/s", _last_frame(out.file))


def test_resumed_bar_rates_only_what_it_did():
    now = [0.0]
    out = Console(file=io.StringIO(), force_terminal=True, width=160, color_system=None)
    with bar("explain", 120, completed=100, clock=lambda: now[0], out=out) as advance:
        now[0] = 10.0
        advance(10)  # 10 examples in 10 s, not 110
        assert re.search(r"110/120 1\.0 img/s 0:00:10 left 0:00:10", _last_frame(out.file))


@pytest.mark.slow
def test_keras_audit_through_a_pipe_prints_pasteable_commands(tiny, tmp_path):
    """The installed command with stdout a pipe: every command line is whole and names the store."""
    out = tmp_path / LONG
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "60"}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    argv = [sys.executable, "-m", "audit.cli", "run", str(tiny["model"]), str(tiny["data"]), "--out", str(out),
            "--annotations", str(tiny["annotations"]), "--explain", "gradcam", "--no-tensorboard", "--quiet"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    commands = _commands(done.stdout)
    assert commands["app"] == ["keras-audit", "app", str(out)]
    assert commands["report"] == ["keras-audit", "report", str(out)]
    assert f"Results: {out}" in done.stdout.splitlines()
