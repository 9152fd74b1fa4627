"""`keras-audit explain OUT --indices ...`: a saved follow-up run that adds maps to a finished store.

Oracle: a second run of the same model and data that explained every example; the maps,
no-signal flags and activations the follow-up adds must be the rows that run stored for those
examples, and the rows that were there before must not move.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from audit.cli import main
from audit.engine import AuditOptions
from audit.pipeline import run_audit
from audit.store import schema
from audit.store.reader import Reader

pytestmark = pytest.mark.slow
OPTIONS = dict(explain=("gradcam", "occlusion", "activations"), bootstrap=20, tensorboard=False, batch_size=8)


@pytest.fixture(scope="module")
def stores(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("followup")
    common = dict(annotations=tiny["annotations"], progress=False)
    capped = run_audit(tiny["model"], tiny["data"], root / "capped",
                       options=AuditOptions(explain_limit=8, **OPTIONS), **common)
    full = run_audit(tiny["model"], tiny["data"], root / "full", options=AuditOptions(explain_limit=None, **OPTIONS),
                     **common)
    return {"root": root, "capped": capped, "full": full}


def _rows(run: Reader, rel: str, indices) -> np.ndarray:
    arr = np.load(run.path / rel)
    return np.stack([arr[run.heatmap_index[int(i)]] for i in indices])


def test_added_maps_are_the_full_runs(stores, capsys):
    work = stores["root"] / "work_copy"
    shutil.copytree(stores["capped"], work)
    before = Reader(work)
    old = sorted(before.heatmap_index)
    new = [i for i in range(30) if i not in before.heatmap_index][:3]
    old_maps = _rows(before, schema.heatmap_file("gradcam"), old)
    assert main(["explain", str(work), "--indices", ",".join(map(str, new)), "--quiet"]) == 0
    assert "maps added for 3 examples" in capsys.readouterr().out
    after, full = Reader(work), Reader(stores["full"])
    assert sorted(after.heatmap_index) == sorted({*old, *new})
    rels = [schema.heatmap_file(m) for m in ("gradcam", "occlusion")] + [schema.signal_file("gradcam")]
    rels += [schema.activation_file(layer) for layer in full.activation_layers]
    assert after.activation_layers == full.activation_layers and rels[3:]
    for rel in rels:
        np.testing.assert_allclose(_rows(after, rel, new).astype(np.float32), _rows(full, rel, new).astype(np.float32),
                                   atol=2e-3, err_msg=rel)
    np.testing.assert_array_equal(_rows(after, schema.heatmap_file("gradcam"), old), old_maps)
    manifest = after.manifest
    assert manifest["explained"]["count"] == len(old) + 3 and manifest["explained"]["added"] == new
    assert after.metrics["explanations"]["gradcam"]["n"] == len(old) + 3
    assert manifest["discovery"] == schema.DISCOVERY_WRITTEN
    # Asking again for examples that have maps changes nothing.
    assert main(["explain", str(work), "--indices", str(new[0]), "--quiet"]) == 0
    assert "already have maps" in capsys.readouterr().out


def test_classes_with_too_few_maps_are_noted(stores):
    run = Reader(stores["capped"])  # 8 maps over 3 classes: none has the 12 clustering needs
    notes = run.metrics["discovery"]["notes"]
    pred = run.predictions.set_index("index").loc[sorted(run.heatmap_index), "pred"]
    for k, name in enumerate(run.class_names):
        count = int((pred == k).sum())
        if count:
            assert f"class {name!r}: {count} maps, too few to cluster (need 12)" in notes, notes
    assert run.discovered("strategy") == []


def test_slice_adds_its_examples(stores):
    work = stores["root"] / "slice_copy"
    shutil.copytree(stores["capped"], work)
    assert main(["explain", str(work), "--slice", "site=a", "--quiet"]) == 0
    run = Reader(work)
    assert set(run.slice_rows("site", "a").tolist()) <= set(run.heatmap_index)


@pytest.mark.parametrize(("argv", "says"), [
    (["--indices", "999"], "--indices: 999 is not an example of this store"),
    (["--slice", "site=zzz"], "has no value 'zzz'"),
    (["--slice", "nocolumn"], "--slice must be COLUMN=VALUE"),
])
def test_bad_requests_are_refused_and_change_nothing(stores, capsys, argv, says):
    store = stores["capped"]
    manifest = (store / schema.MANIFEST).read_bytes()
    assert main(["explain", str(store), *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and err.strip().count("\n") == 0, err
    assert (store / schema.MANIFEST).read_bytes() == manifest


def test_mistakes_of_an_exact_model_are_none(stores, capsys):
    assert Reader(stores["capped"]).metrics["accuracy"] == 1.0  # the hand-weighted model is exact
    assert main(["explain", str(stores["capped"]), "--mistakes"]) == 0
    assert "no examples to explain" in capsys.readouterr().out


def test_unparsable_indices_exit_2(stores, capsys):
    with pytest.raises(SystemExit) as e:
        main(["explain", str(stores["capped"]), "--indices", "3,x"])
    assert e.value.code == 2 and "--indices" in capsys.readouterr().err


def test_changed_model_is_refused(stores, tiny, tmp_path, capsys):
    work = tmp_path / "moved"
    shutil.copytree(stores["capped"], work)
    manifest = json.loads((work / schema.MANIFEST).read_text())
    manifest["model"]["sha256"] = "f" * 64  # as if the model file had changed since the run
    (work / schema.MANIFEST).write_text(json.dumps(manifest))
    missing = next(i for i in range(30) if i not in Reader(work).heatmap_index)
    index = (work / schema.HEATMAP_INDEX).read_bytes()
    assert main(["explain", str(work), "--indices", str(missing)]) == 2
    assert "changed since the run" in capsys.readouterr().err
    assert (work / schema.HEATMAP_INDEX).read_bytes() == index and not (work / schema.WORK_DIR).exists()


def test_run_killed_in_discovery_resumes_to_the_same_store(stores, tiny):
    """A `keras-audit run` SIGKILLed while discovery moves its files into place leaves the store
    complete but marked pending; `--resume` redoes discovery and ends as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys

    from test_runner import assert_same_store

    out = stores["root"] / "killed"
    args = [sys.executable, "-m", "audit.cli", "run", str(tiny["model"]), str(tiny["data"]), "--out", str(out),
            "--annotations", str(tiny["annotations"]), "--explain", "gradcam,occlusion,activations",
            "--explain-limit", "8", "--bootstrap", "20", "--batch-size", "8", "--no-tensorboard", "--quiet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    killed = subprocess.run(args, env={**env, "KERAS_AUDIT_KILL_AT": "commit"}, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    manifest = json.loads((out / schema.MANIFEST).read_text())
    assert manifest["complete"] and manifest["discovery"] == schema.DISCOVERY_PENDING
    done = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_store(stores["capped"], out)


def test_quality_means_cover_old_and_new_maps():
    from audit.engine.followup import _quality

    metrics = {"explanations": {"gradcam": {"deletion_auc": 0.5, "insertion_auc": 0.8, "n": 4,
                                            "no_signal": {"count": 0, "of": 4, "reason": "r", "suggestion": "s"}}}}
    scores = np.array([[0.2, 0.6], [0.3, 0.9]], np.float32)
    q = _quality(metrics, "gradcam", scores, np.array([True] * 5 + [False]))
    # (4 * 0.5 + 0.2 + 0.3) / 6 and (4 * 0.8 + 0.6 + 0.9) / 6, by hand
    assert q["deletion_auc"] == pytest.approx(2.5 / 6) and q["insertion_auc"] == pytest.approx(4.7 / 6)
    assert q["n"] == 6 and q["no_signal"]["count"] == 1 and q["no_signal"]["of"] == 6
