"""Comparing two runs: paired differences against a row-resampling bootstrap, winners, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console
from scipy.stats import binomtest

from audit.errors import AuditError, StoreError
from audit.metrics.paired import compare_runs
from audit.views.terminal import render_comparison
from metrics_data import planted_predictions, predictions_from, write_store

NAMES = ["cat", "dog", "fox"]
ANNOTATIONS = ["background", "site", "aspect_ratio", "resolution", "brightness", "contrast"]


def model_b(frame, seed=41, dark_accuracy=0.9):
    """A second model on the same rows: as good elsewhere, much better on dark backgrounds."""
    rng = np.random.default_rng(seed)
    dark = (frame["background"] == "dark").to_numpy()
    correct = np.where(dark, rng.random(len(frame)) < dark_accuracy, frame["correct"].to_numpy())
    return predictions_from(frame["label"].to_numpy(), correct, len(NAMES), rng,
                            {c: frame[c] for c in ANNOTATIONS})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    fa = planted_predictions(1200, 3, seed=40)
    fb = model_b(fa)
    a = write_store(root / "a", fa, NAMES, model_name="small", bootstrap=0, heatmaps=False, images=False)
    b = write_store(root / "b", fb, NAMES, model_name="big", bootstrap=0, heatmaps=False, images=False)
    return fa, fb, a, b


@pytest.fixture(scope="module")
def result(runs):
    _, _, a, b = runs
    return compare_runs(a, b, bootstrap=1000, seed=0)


def test_overall_difference_and_counts(runs, result):
    fa, fb, _, _ = runs
    ca, cb = fa["correct"].to_numpy(), fb["correct"].to_numpy()
    o, g = result["overall"], result["agreement"]
    assert o["accuracy_a"] == pytest.approx(ca.mean()) and o["accuracy_b"] == pytest.approx(cb.mean())
    assert o["accuracy_difference"] == pytest.approx(cb.mean() - ca.mean())
    assert (g["only_a_right"], g["only_b_right"]) == ((ca & ~cb).sum(), (~ca & cb).sum())
    assert g["both_right"] + g["both_wrong"] + g["only_a_right"] + g["only_b_right"] == len(fa)
    assert g["predictions_differ"] == (fa["pred"] != fb["pred"]).sum()
    assert o["mcnemar_p"] == pytest.approx(binomtest(int((ca & ~cb).sum()), int((ca != cb).sum()), 0.5).pvalue)
    assert o["accuracy_winner"] == "b"
    json.dumps(result, allow_nan=False)


def test_paired_interval_matches_row_resampling(runs, result):
    fa, fb, _, _ = runs
    ca, cb = fa["correct"].to_numpy(float), fb["correct"].to_numpy(float)
    rng = np.random.default_rng(5)
    rows = rng.integers(0, len(ca), size=(2000, len(ca)))
    diffs = cb[rows].mean(1) - ca[rows].mean(1)
    assert result["overall"]["accuracy_difference_ci"] == pytest.approx(np.percentile(diffs, [2.5, 97.5]), abs=0.006)


def test_slices_and_classes(runs, result):
    fa, fb, _, _ = runs
    dark = next(s for s in result["slices"] if (s["column"], s["value"]) == ("background", "dark"))
    mask = (fa["background"] == "dark").to_numpy()
    assert dark["n"] == mask.sum()
    assert dark["accuracy_a"] == pytest.approx(fa["correct"][mask].mean())
    assert dark["accuracy_b"] == pytest.approx(fb["correct"][mask].mean())
    assert dark["winner"] == "b" and dark["difference_ci"][0] > 0.15
    light = next(s for s in result["slices"] if (s["column"], s["value"]) == ("background", "light"))
    assert light["difference"] == 0 and light["winner"] == "tie"  # B differs only on dark rows
    assert "background = dark" in result["wins"]["b"] and not result["wins"]["a"]
    for c, row in enumerate(result["per_class"]):
        sel = (fa["label"] == c).to_numpy()
        assert row["recall_a"] == pytest.approx(fa["correct"][sel].mean())
        assert row["recall_b"] == pytest.approx(fb["correct"][sel].mean())


def test_disagreements_most_telling_first(runs, result):
    fa, fb, _, _ = runs
    rows = result["disagreements"]
    assert 0 < len(rows) <= 50
    for d in rows:
        i = d["index"]
        assert d["pred_a"] != d["pred_b"]
        assert d["label"] == NAMES[fa["label"][i]]
        assert d["right"] == ("a" if fa["correct"][i] else "b" if fb["correct"][i] else "neither")
    rights = [d["right"] for d in rows]
    assert rights == sorted(rights, key=lambda r: r == "neither")  # someone right comes first
    wrong_conf = [d["confidence_a"] if d["right"] == "b" else d["confidence_b"]
                  for d in rows if d["right"] != "neither"]
    assert wrong_conf == sorted(wrong_conf, reverse=True)


def test_render(result):
    console = Console(width=160, record=True, highlight=False)
    console.print(render_comparison(result))
    plain = console.export_text()
    assert "B better" in plain and "background = dark" in plain
    assert "small" in plain and "big" in plain
    assert "McNemar" in plain and "[bold" not in plain
    dark = next(line for line in plain.splitlines() if "background = dark" in line)
    s = next(s for s in result["slices"] if (s["column"], s["value"]) == ("background", "dark"))
    lo, hi = s["difference_ci"]
    assert f"{s['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]" in dark and dark.rstrip().endswith("B better")


def test_render_shows_user_strings_as_text(result):
    hostile = {**result, "a": {"path": "[bold]a[/bold]", "model": "[red]m"}, "notes": ["[link=x]n[/link]"]}
    console = Console(width=160, record=True, highlight=False)
    console.print(render_comparison(hostile))
    plain = console.export_text()
    assert "[bold]a[/bold]" in plain and "[red]m" in plain and "[link=x]n[/link]" in plain


def test_kept_comparison_is_read_back_only_for_the_same_runs(runs, result, tmp_path):
    import shutil

    from audit.store.writer import write_owned_file
    from audit.views.terminal import comparison_bytes, comparison_file, stored_comparison

    _, _, a, b = runs
    a = shutil.copytree(a, tmp_path / "a")
    assert stored_comparison(a, b) is None
    write_owned_file(a, comparison_file(b), comparison_bytes(a, b, result=result))
    assert stored_comparison(a, b)["comparison"] == json.loads(json.dumps(result))
    assert comparison_file(b) in json.loads((a / "manifest.json").read_text())["files"]  # a re-run removes it
    rerun = shutil.copytree(b, tmp_path / "b")
    write_owned_file(a, comparison_file(rerun), comparison_bytes(a, rerun, result=result))
    assert comparison_file(rerun) != comparison_file(b) and stored_comparison(a, rerun) is not None
    manifest = json.loads((rerun / "manifest.json").read_text())
    manifest["finished_at"] = "later"  # B run again into the same folder, with the same model
    (rerun / "manifest.json").write_text(json.dumps(manifest))
    assert stored_comparison(a, rerun) is None


def test_cli_compare_saves_for_the_app(runs, tmp_path, capsys):
    import shutil

    from audit.cli import main
    from audit.views.terminal import stored_comparison

    _, _, a, b = runs
    a = shutil.copytree(a, tmp_path / "a")
    assert main(["compare", str(a), str(b), "--bootstrap", "50"]) == 0
    assert "--save" in capsys.readouterr().out and stored_comparison(a, b) is None
    assert main(["compare", str(a), str(b), "--bootstrap", "50", "--save"]) == 0
    kept = stored_comparison(a, b)
    assert kept["refused"] is None and kept["comparison"]["bootstrap"] == 50
    assert kept["comparison"] == json.loads(json.dumps(compare_runs(a, b, bootstrap=50, max_disagreements=2000)))


def test_runs_on_other_examples_are_refused(runs, tmp_path):
    fa, fb, a, _ = runs
    shorter = write_store(tmp_path / "short", fb.iloc[:-1], NAMES, bootstrap=0, heatmaps=False, images=False)
    with pytest.raises(StoreError, match="not on the same examples"):
        compare_runs(a, shorter)
    relabelled = fb.copy()
    relabelled.loc[5, "label"] = (relabelled.loc[5, "label"] + 1) % 3
    other = write_store(tmp_path / "labels", relabelled, NAMES, bootstrap=0, heatmaps=False, images=False)
    with pytest.raises(StoreError, match="example 5 has label"):
        compare_runs(a, other)
    moved = fb.copy()
    moved.loc[7, "path"] = "elsewhere.png"
    other = write_store(tmp_path / "paths", moved, NAMES, bootstrap=0, heatmaps=False, images=False)
    with pytest.raises(StoreError, match="elsewhere.png"):
        compare_runs(a, other)
    other = write_store(tmp_path / "classes", fb, ["cat", "dog", "wolf"], bootstrap=0, heatmaps=False, images=False)
    with pytest.raises(StoreError, match="different classes"):
        compare_runs(a, other)
    with pytest.raises(AuditError, match="--bootstrap"):
        compare_runs(a, a, bootstrap=-5)


def test_without_bootstrap_there_are_no_winners(runs):
    _, _, a, b = runs
    r = compare_runs(a, b, bootstrap=0)
    assert r["overall"]["accuracy_difference_ci"] is None and r["overall"]["accuracy_winner"] is None
    assert all(s["winner"] is None for s in r["slices"])
    assert any("bootstrap is off" in n for n in r["notes"])
    render_comparison(r)
