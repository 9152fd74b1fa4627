"""--engine ray when the driver itself dies: `keras-audit run --engine ray` SIGKILLed midway, then
`--resume`, ends with the single-process store and keeps the batches the shards had recorded.

The drivers are real processes (``python -m audit.cli run ... --engine ray``) without --address, so
each starts its own local Ray cluster, as a user's run does. Each runs in a session of its own
(``start_new_session``) with a Ray temp dir of its own (``RAY_TMPDIR``, also kept from finding any
other cluster through ``ray_current_cluster``), so the processes of its cluster (gcs, raylet,
workers) are known by that session and by the temp dir in their command lines and environments:
they are killed with the driver and none outlives the test, while another cluster (tests/test_ray.py
joins one in this process) is never touched. A `ray start --head` cluster shared by both drivers
would record itself in the default temp dir, where any address-less ``ray.init`` finds it, and
`ray stop` would stop every cluster of the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from audit.engine.distributed import SHARDS_DIR
from audit.errors import StoreError
from audit.store import schema
from audit.store.killpoint import KILL_AT_ENV
from audit.store.reader import Reader
from audit.store.writer import StoreWriter, _exclusive_tmp
from test_shards import assert_equivalent_stores, run_args

REPO = str(Path(__file__).resolve().parents[1])
WORKERS = 2
DEADLINE_S = 180  # far above what a run takes here; only a hung run reaches it


# -- the drivers' processes ----------------------------------------------------------------------
def _session_processes(tag: str, sessions: set[int]) -> list[int]:
    """Live processes of the drivers' sessions, or whose command line or environment names ``tag``
    (the drivers' Ray temp dir: a Ray process that left the session still names it)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            state, _ppid, _pgrp, sid = stat[stat.rindex(")") + 2:].split()[:4]
            if state in ("Z", "X"):  # dead, not yet reaped: holds no lock, port or CPU
                continue
            mine = int(sid) in sessions or tag.encode() in (
                Path(entry.path, "cmdline").read_bytes() + Path(entry.path, "environ").read_bytes())
        except (OSError, ValueError):  # gone meanwhile, or another user's
            continue
        if mine:
            found.append(int(entry.name))
    return found


class Drivers:
    """`keras-audit run --engine ray` processes, each in a session of its own, sharing a Ray temp dir."""

    def __init__(self, root: Path):
        # Ray's sockets live under the temp dir, and a socket path has at most 107 bytes: keep it short.
        self.tmp = tempfile.mkdtemp(prefix="kar-")
        self.root, self.procs, self.logs = root, [], {}
        keep = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", KILL_AT_ENV)}
        path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
        self.env = {**keep, "RAY_TMPDIR": self.tmp, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3",
                    "RAY_USAGE_STATS_ENABLED": "0"}

    def start(self, args: list[str]) -> subprocess.Popen:
        log = self.root / f"driver{len(self.procs)}.log"
        with open(log, "wb") as out:  # the driver writes into its own copy of the file
            proc = subprocess.Popen([sys.executable, "-m", "audit.cli", *args], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def output(self, proc: subprocess.Popen) -> str:
        return self.logs[proc.pid].read_text(errors="replace")[-3000:]

    def alive(self) -> list[int]:
        return _session_processes(self.tmp, {p.pid for p in self.procs})

    def kill_all(self) -> list[int]:
        """SIGKILL every process of the drivers' sessions (each group, then any straggler by id) and
        wait until none is left; returns those still alive (none, unless one refuses to die)."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):  # the whole group has exited already
                os.killpg(proc.pid, signal.SIGKILL)  # the session's group: the driver and its cluster
            proc.wait()
        deadline = time.monotonic() + 30
        while (left := self.alive()) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):  # it exited between the sweep and now
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        return left

    def close(self) -> None:
        self.kill_all()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def drivers(tmp_path):
    d = Drivers(tmp_path)
    yield d
    d.close()


# -- the shard stores ------------------------------------------------------------------------------
def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _progress(store: Path) -> dict:
    """What a shard store has recorded: its state (None when it has none) and its manifest."""
    return {"state": _read(store / schema.WORK_DIR / "state.json"), "manifest": schema.read_manifest_file(store)}


def _watch_progress(stores: list[Path], before: list[dict], problems: list[str], stop: threading.Event) -> None:
    """While the resumed run goes, note any shard whose recorded progress goes back: its state
    cleared, fewer batches predicted or explained than ``before``, another selection, a new start."""
    while not stop.is_set():
        for k, (store, was) in enumerate(zip(stores, before)):
            try:
                state = _read(store / schema.WORK_DIR / "state.json")  # first: a finished shard drops it
            except ValueError:
                continue
            manifest = schema.read_manifest_file(store)
            if manifest is None or was["state"] is None:  # merged away, or had recorded nothing
                continue
            if manifest.get("started_at") != was["manifest"]["started_at"]:
                problems.append(f"shard {k} started over at {manifest.get('started_at')}")
            if state is None:
                if not manifest.get("complete"):
                    problems.append(f"shard {k}: its state was cleared")
                continue
            for key in ("predict_next", "explain_done"):
                if state.get(key, 0) < was["state"].get(key, 0):
                    problems.append(f"shard {k}: {key} {state.get(key, 0)} < {was['state'][key]} recorded before")
            if "explained" in was["state"] and state.get("explained") != was["state"]["explained"]:
                problems.append(f"shard {k}: another selection to explain")
        time.sleep(0.005)


def _wait_for_predictions(proc: subprocess.Popen, stores: list[Path], drivers: Drivers) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        for store in stores:
            try:
                if '"predict_next"' in (store / schema.WORK_DIR / "state.json").read_text():
                    return
            except OSError:
                continue  # not written yet
        if proc.poll() is not None:
            pytest.fail(f"the driver ended (exit {proc.returncode}) before it could be killed:\n{drivers.output(proc)}")
        time.sleep(0.01)
    pytest.fail("no shard recorded a prediction batch in time")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the drivers' processes through /proc")
def test_a_killed_driver_resumes_to_the_same_store(shard_data, single_store, drivers, tmp_path):
    out = tmp_path / "out"
    args = [*run_args(shard_data, out), "--engine", "ray", "--workers", str(WORKERS)]
    stores = [out / SHARDS_DIR / str(k) for k in range(WORKERS)]

    first = drivers.start(args)
    _wait_for_predictions(first, stores, drivers)
    os.kill(first.pid, signal.SIGKILL)  # the driver, as the OOM killer would; then its cluster
    assert drivers.kill_all() == [], "processes of the killed driver's Ray cluster survive"
    assert first.returncode == -signal.SIGKILL

    # What the killed run leaves is no result: not complete, refused by every view, but resumable.
    manifest = schema.read_manifest_file(out)
    assert manifest is not None and schema.is_marked(manifest) and not manifest.get("complete")
    with pytest.raises(StoreError, match="run is incomplete"):
        Reader(out)
    # The lock file still names the dead driver: its lock went with it (flock), so it is no obstacle.
    assert (out / schema.LOCK_FILE).read_text().strip() == str(first.pid)
    before = [_progress(s) for s in stores]
    assert any((b["state"] or {}).get("predict_next", 0) > 0 for b in before), before
    assert not all((b["manifest"] or {}).get("complete") for b in before), "every shard finished before the kill"

    problems: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_progress, args=(stores, before, problems, stop), daemon=True)
    watcher.start()
    try:
        resumed = drivers.start([*args, "--resume"])
        try:
            resumed.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the resumed run did not end in {DEADLINE_S} s:\n{drivers.output(resumed)}")
    finally:
        stop.set()
        watcher.join()
    assert resumed.returncode == 0, drivers.output(resumed)
    drivers.kill_all()

    assert problems == []
    assert_equivalent_stores(single_store, out)
    assert not (out / SHARDS_DIR).exists()
    # The merged store records when the interrupted run started, not when it was resumed.
    started = [b["manifest"]["started_at"] for b in before if b["state"]]
    assert json.loads((out / schema.MANIFEST).read_text())["started_at"] == min(started)


def test_a_run_killed_in_its_first_manifest_write_leaves_a_folder_a_resume_takes(tmp_path):
    """The driver's first write is OUT's manifest (through a temporary file, then a rename); killed in
    between, it leaves its lock file and that temporary file. --resume (or a rerun) takes the folder
    as the empty one it is, not as someone else's, and the leftover goes; so it does from a store."""
    out = tmp_path / "out"
    out.mkdir()
    (out / schema.LOCK_FILE).write_text("4194304\n")  # the dead driver's process id
    os.close(_exclusive_tmp(out / schema.MANIFEST)[0])
    writer = StoreWriter(out, resume=True)
    try:
        assert not writer.resuming  # nothing was recorded: it starts afresh
        writer.save_state(engine="ray", shards=2)
    finally:
        writer.close()
    os.close(_exclusive_tmp(out / schema.MANIFEST)[0])  # killed again, rewriting the manifest
    writer = StoreWriter(out, resume=True)
    try:
        assert writer.resuming and writer.state == {"engine": "ray", "shards": 2}
    finally:
        writer.close()
    assert sorted(p.name for p in out.rglob("*")) == sorted([schema.LOCK_FILE, schema.MANIFEST, "state.json",
                                                             schema.WORK_DIR])
