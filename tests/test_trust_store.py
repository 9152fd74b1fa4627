"""Trust at the edges of a run: --resume checks every input, options are checked before anything
is written, a folder of someone else's files is left alone, and one run holds a store at a time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audit.engine import AuditOptions
from audit.errors import AuditError, StoreError
from audit.pipeline import run_audit
from audit.store import schema
from audit.store.reader import Reader
from audit.store.writer import StoreWriter, write_owned_file
from conftest import brightness_model

FAST = dict(explain=("gradcam",), bootstrap=20, tensorboard=False)
START_OVER = "rerun without --resume to start over"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _open_fds_under(folder: Path) -> list[str]:
    fds = Path("/proc/self/fd")
    targets = [os.path.realpath(fds / fd) for fd in os.listdir(fds)]
    return [t for t in targets if t.startswith(str(folder.resolve()) + "/")]


@pytest.fixture
def inputs(tiny, tmp_path):
    """Copies of the tiny model, data and annotations that a test may change."""
    shutil.copytree(tiny["data"], tmp_path / "data")
    shutil.copy(tiny["annotations"], tmp_path / "ann.csv")
    shutil.copy(tiny["model"], tmp_path / "model.keras")
    return {"model": tmp_path / "model.keras", "data": tmp_path / "data", "annotations": tmp_path / "ann.csv"}


def _interrupted(inputs, out, monkeypatch, annotations="given"):
    """An incomplete store: the run stops (as on Ctrl-C) after its first recorded batch."""

    def stop(phase):
        if phase == "predict":
            raise KeyboardInterrupt

    monkeypatch.setattr("audit.engine.predict.checkpoint", stop)
    with pytest.raises(KeyboardInterrupt):
        run_audit(inputs["model"], inputs["data"], out, options=AuditOptions(batch_size=8, **FAST), progress=False,
                  annotations=inputs["annotations"] if annotations == "given" else None)
    monkeypatch.undo()
    assert json.loads((out / "work" / "state.json").read_text())["predict_next"] == 8


def _finished_store(out: Path) -> Path:
    """A small complete store made through the writer alone (no model), with one file of its own."""
    w = StoreWriter(out)
    w.write_manifest({"complete": False})
    w.write_json(schema.METRICS, {"accuracy": 1.0})
    w.finish({"complete": True})
    w.close()
    return out


def test_resume_names_the_input_that_changed(inputs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _interrupted(inputs, out, monkeypatch)
    assert _open_fds_under(out) == []  # the interrupted run closed its array files and its lock
    before = _snapshot(out)

    def refused(annotations=inputs["annotations"], **options) -> str:
        with pytest.raises(AuditError) as e:
            run_audit(inputs["model"], inputs["data"], out, annotations=annotations, resume=True, progress=False,
                      options=AuditOptions(**{"batch_size": 8, **FAST, **options}))
        assert _snapshot(out) == before  # a refused resume writes nothing
        return str(e.value)

    # Changes pile up from the last input checked to the first, so each message names the newest one.
    assert refused(seed=1) == (
        f"{out}: --resume: --seed is 1 but the interrupted run used 0; pass the same options or {START_OVER}")
    assert refused(class_names=["c1_mid", "c0_dark", "c2_light"]) == (
        f"{out}: --resume: the class names changed since the interrupted run (c0_dark, c1_mid, c2_light then, "
        f"c1_mid, c0_dark, c2_light now); {START_OVER}")
    assert refused(annotations=None) == (
        f"{out}: --resume: --annotations {inputs['annotations']} was given to the interrupted run; "
        f"pass the same --annotations or {START_OVER}")
    table = inputs["annotations"].read_text().splitlines()
    inputs["annotations"].write_text("\n".join([table[0], table[1].replace(",a,", ",b,"), *table[2:]]) + "\n")
    message = refused()
    assert message.startswith(f"{out}: --resume: the annotations table {inputs['annotations']} changed since the "
                              "interrupted run (sha256 ") and message.endswith(START_OVER)
    image = next((inputs["data"] / "c0_dark").glob("*.png"))
    image.write_bytes(next((inputs["data"] / "c2_light").glob("*.png")).read_bytes())
    message = refused()
    assert message.startswith(f"{out}: --resume: the image files of {inputs['data']} changed since the interrupted "
                              "run (fingerprint "), message
    brightness_model("logits").save(inputs["model"])
    message = refused()
    assert message.startswith(f"{out}: --resume: the model file {inputs['model']} changed since the interrupted run "
                              "(sha256 "), message


def test_resume_refuses_annotations_the_interrupted_run_did_not_have(inputs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _interrupted(inputs, out, monkeypatch, annotations=None)
    with pytest.raises(AuditError) as e:
        run_audit(inputs["model"], inputs["data"], out, annotations=inputs["annotations"], resume=True, progress=False,
                  options=AuditOptions(batch_size=8, **FAST))
    assert str(e.value) == (f"{out}: --resume: --annotations {inputs['annotations']} was given now but not to the "
                            f"interrupted run; pass the same --annotations or {START_OVER}")


@pytest.mark.parametrize("options, message", [
    (dict(seed=-1), "--seed must be 0 or more; received -1"),
    (dict(seed=1.5), "--seed must be a whole number; received 1.5"),
    (dict(bootstrap=-5), "--bootstrap must be 0 or more; received -5"),
    (dict(min_slice_size=-1), "--min-slice-size must be 1 or more; received -1"),
    (dict(batch_size=0), "--batch-size must be 1 or more; received 0"),
    (dict(explain_limit=0), "--explain-limit must be 1 or more (or None: explain every example); received 0"),
    (dict(occlusion_patch=0),
     "--occlusion-patch must be 1 or more (or None: about 1/8 of the shorter side); received 0"),
    (dict(rescale=0.0), "--rescale must be a positive number; received 0.0"),
    (dict(explain=("gradcam", "shap")),
     "--explain: unknown explainer 'shap'; choose from gradcam, gradcam++, occlusion, scorecam, activations"),
    (dict(explain="gradcam"), "--explain must be a list of explainer names (or None); received 'gradcam'"),
    (dict(class_names=["a", "b", "a"]), "--class-names names 'a' twice"),
    (dict(slice_pairs="yes"), "--slice-pairs must be true, false or None; received 'yes'"),
])
def test_bad_options_are_refused_before_anything_is_written(tiny, tmp_path, options, message):
    out = tmp_path / "out"
    with pytest.raises(AuditError) as e:
        run_audit(tiny["model"], tiny["data"], out, options=AuditOptions(**options), progress=False)
    assert str(e.value) == message
    assert not out.exists()


def test_occlusion_patch_must_be_smaller_than_the_image(tiny, tmp_path):
    for patch in (16, 40):
        with pytest.raises(AuditError) as e:
            options = AuditOptions(explain=("occlusion",), occlusion_patch=patch, bootstrap=0, tensorboard=False)
            run_audit(tiny["model"], tiny["data"], tmp_path / "out", progress=False, options=options)
        assert str(e.value) == (f"--occlusion-patch {patch} is not smaller than the model's 16x16 input images "
                                "(every occlusion map would be zero); choose at most 15")
        assert not (tmp_path / "out").exists()
    out = run_audit(tiny["model"], tiny["data"], tmp_path / "out", progress=False,
                    options=AuditOptions(explain=("occlusion",), occlusion_patch=15, bootstrap=0, tensorboard=False))
    assert np.load(out / schema.heatmap_file("occlusion")).max() > 0


def test_a_folder_of_someone_elses_files_is_refused_untouched(tiny, tmp_path):
    theirs = tmp_path / "site"
    (theirs / "tensorboard").mkdir(parents=True)
    (theirs / "work").mkdir()
    (theirs / "manifest.json").write_text(json.dumps({"name": "My web app", "version": 2}))
    (theirs / "tensorboard" / "events.out.tfevents.1.host.training").write_bytes(b"training logs")
    (theirs / "work" / "todo.txt").write_text("mine")
    (theirs / "predictions.parquet").write_bytes(b"not ours")
    legacy = tmp_path / "old_store"
    legacy.mkdir()
    legacy_manifest = {"schema_version": 1, "complete": True, "model": {}, "dataset": {}}
    (legacy / "manifest.json").write_text(json.dumps(legacy_manifest))
    (legacy / "images.npy").write_bytes(b"old")
    for folder, message in (
        (theirs, "--out is an existing directory that is not a keras-audit store; refusing to write into it"),
        (legacy, "--out holds a results store of an older keras-audit, which does not list its own files; "
                 "delete it yourself or choose another --out"),
    ):
        before = _snapshot(folder)
        for resume in (False, True):
            with pytest.raises(StoreError) as e:
                run_audit(tiny["model"], tiny["data"], folder, options=AuditOptions(**FAST), resume=resume,
                          progress=False)
            assert str(e.value) == f"{folder}: {message}"
            assert _snapshot(folder) == before  # not even a lock file
    assert schema.is_store(legacy) and not schema.is_store(theirs)


def test_a_rerun_removes_only_the_files_the_store_lists(tiny, tmp_path):
    out = run_audit(tiny["model"], tiny["data"], tmp_path / "out", annotations=tiny["annotations"], progress=False,
                    options=AuditOptions(explain=("gradcam", "activations"), bootstrap=0))
    listed = set(Reader(out).manifest["files"])
    on_disk = set(_snapshot(out))
    assert on_disk == listed | {schema.MANIFEST, schema.LOCK_FILE}  # every file it wrote is listed, nothing else
    assert any(f.startswith("tensorboard/model/events.out.tfevents.") for f in listed)  # the run: model.keras
    write_owned_file(out, "report.md", b"# report\n")
    assert "report.md" in Reader(out).manifest["files"]
    (out / "tensorboard" / "my_notes.txt").write_text("mine")
    (out / "README.txt").write_text("also mine")

    run_audit(tiny["model"], tiny["data"], out, options=AuditOptions(explain=(), bootstrap=0, tensorboard=False),
              progress=False)
    files = set(_snapshot(out))
    assert files == set(Reader(out).manifest["files"]) | {schema.MANIFEST, schema.LOCK_FILE, "tensorboard/my_notes.txt",
                                                          "README.txt"}
    assert (out / "tensorboard" / "my_notes.txt").read_text() == "mine"
    assert (out / "README.txt").read_text() == "also mine"
    assert not (out / "report.md").exists()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["tensorboard"]  # heatmaps/, activations/ removed


def test_write_owned_file_refuses_paths_outside_and_folders_that_are_not_stores(tmp_path):
    store = _finished_store(tmp_path / "store")
    assert write_owned_file(store, "report_files/curves.png", b"png") == store / "report_files" / "curves.png"
    assert "report_files/curves.png" in json.loads((store / schema.MANIFEST).read_text())["files"]
    for rel in ("../escape.md", "/tmp/abs.md", "a/../../b.md", schema.MANIFEST, schema.LOCK_FILE, "folder/"):
        with pytest.raises(StoreError, match="is not a file path inside the store"):
            write_owned_file(store, rel, b"x")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a keras-audit results store"):
        write_owned_file(tmp_path / "plain", "report.md", b"x")
    assert list((tmp_path / "plain").iterdir()) == []


HOLD = "import sys; from pathlib import Path; from audit.store.writer import StoreLock; " \
       "lock = StoreLock(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()"


def test_a_second_run_into_a_store_in_use_is_refused(tiny, tmp_path):
    store = _finished_store(tmp_path / "store")
    before = {k: v for k, v in _snapshot(store).items() if k != schema.LOCK_FILE}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert (store / schema.LOCK_FILE).read_text() == f"{holder.pid}\n"
        expected = (f"{store}: in use by another keras-audit run (process {holder.pid}); "
                    "wait for it to end or choose another --out")
        with pytest.raises(StoreError) as e:
            run_audit(tiny["model"], tiny["data"], store, options=AuditOptions(**FAST), progress=False)
        assert str(e.value) == expected
        with pytest.raises(StoreError) as e:
            write_owned_file(store, "report.md", b"x")
        assert str(e.value) == expected
        assert {k: v for k, v in _snapshot(store).items() if k != schema.LOCK_FILE} == before  # nothing cleared
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    StoreWriter(store).close()  # free again once the holder has gone
    assert (store / schema.LOCK_FILE).read_text() == ""


def test_resume_after_a_very_early_kill_starts_afresh(tiny, tmp_path):
    only_lock = tmp_path / "only_lock"
    only_lock.mkdir()
    (only_lock / schema.LOCK_FILE).write_text("")  # killed just after taking the lock
    no_state = tmp_path / "no_state"
    w = StoreWriter(no_state)  # killed after its first manifest, before any state.json
    w.write_manifest({"complete": False})
    w.close()
    for out in (tmp_path / "never_made", only_lock, no_state):
        run_audit(tiny["model"], tiny["data"], out, options=AuditOptions(explain=(), bootstrap=0, tensorboard=False),
                  resume=True, progress=False)
        assert Reader(out).complete
    done = _finished_store(tmp_path / "done")
    with pytest.raises(StoreError, match="run is already complete; nothing to resume"):
        StoreWriter(done, resume=True)


def test_notes_belong_to_the_run_not_to_the_options(tiny, tmp_path):
    options = AuditOptions(explain=(), bootstrap=0, tensorboard=False)
    notes = [Reader(run_audit(tiny["model"], tiny["data"], tmp_path / f"out{k}", options=options, progress=False))
             .manifest["notes"] for k in range(2)]
    assert notes[0] and notes[0] == notes[1]


def test_store_files_follow_the_umask_of_the_moment(tmp_path):
    old = os.umask(0o027)
    try:
        store = _finished_store(tmp_path / "store")
    finally:
        os.umask(old)
    assert (store / schema.METRICS).stat().st_mode & 0o777 == 0o640
    assert (store / schema.MANIFEST).stat().st_mode & 0o777 == 0o640


def test_a_listed_path_under_a_planted_symlink_is_not_followed(tiny, tmp_path):
    """A store someone tampered with (its heatmaps/ made a link to the user's folder) must not make a
    re-run delete what the link points to."""
    out = tmp_path / "out"
    run_audit(tiny["model"], tiny["data"], out, options=AuditOptions(**FAST), progress=False)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "gradcam.npy").write_text("the user's own file")
    shutil.rmtree(out / "heatmaps")
    (out / "heatmaps").symlink_to(victim, target_is_directory=True)
    run_audit(tiny["model"], tiny["data"], out, options=AuditOptions(**FAST), progress=False)
    assert (victim / "gradcam.npy").read_text() == "the user's own file"


def test_a_mistake_found_midway_leaves_no_store(tmp_path):
    """No readable image is only known after decoding: the half-made store is removed, not left behind."""
    for k in ("a", "b", "c"):
        (tmp_path / "data" / k).mkdir(parents=True)
        (tmp_path / "data" / k / "x.png").write_bytes(b"\x89PNG broken")
    brightness_model().save(tmp_path / "m.keras")
    with pytest.raises(AuditError, match="none of the 3 images"):
        run_audit(tmp_path / "m.keras", tmp_path / "data", tmp_path / "out", options=AuditOptions(**FAST),
                  progress=False)
    assert not (tmp_path / "out").exists()


def test_tensorboard_command_lists_its_logs_as_the_stores_own(tiny, tmp_path):
    from audit.cli import main

    out = tmp_path / "out"
    run_audit(tiny["model"], tiny["data"], out, options=AuditOptions(**FAST), progress=False)
    assert main(["tensorboard", str(out)]) == 0
    listed = Reader(out).manifest["files"]
    logs = sorted(p.relative_to(out).as_posix() for p in (out / "tensorboard").rglob("*") if p.is_file())
    assert logs and set(logs) <= set(listed)
    (out / "tensorboard" / "mine.txt").write_text("a user's file")
    run_audit(tiny["model"], tiny["data"], out, options=AuditOptions(**FAST), progress=False)  # no export this time
    left = sorted(p.relative_to(out).as_posix() for p in (out / "tensorboard").rglob("*") if p.is_file())
    assert left == ["tensorboard/mine.txt"]
