"""--engine ray on a real local Ray cluster (two CPUs, started once for the module, no mock).

The oracle is the single-process store (test_shards.assert_equivalent_stores): the Ray run's
store must hold the same predictions, images and metrics byte for byte and the same maps
within float16 rounding, also when one actor process is SIGKILLed midway (Ray restarts it and
the retried call resumes its shard).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import ray  # the `ray` extra is part of `test`, so CI fails (not skips) without it

from audit.cli import main
from audit.engine.distributed import LOCAL_SYSTEM_CONFIG, RAY_MISSING, SHARDS_DIR
from audit.pipeline import run_distributed
from audit.store import schema
from test_shards import OPTIONS, assert_equivalent_stores, run_args

pytestmark = pytest.mark.slow
REPO = str(Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def cluster():
    env = {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}}
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", object_store_memory=128 << 20,
             _system_config=LOCAL_SYSTEM_CONFIG, log_to_driver=False, runtime_env=env)
    yield
    ray.shutdown()


def _watch_explained(stores: list[Path], seen: dict, stop: threading.Event) -> None:
    """Record how many examples each shard store's run chose to explain."""
    while not stop.is_set():
        for k, store in enumerate(stores):
            try:
                seen[k] = len(json.loads((store / schema.WORK_DIR / "state.json").read_text())["explained"])
            except (OSError, ValueError, KeyError):
                continue  # not written yet, or being replaced: read on the next pass
        time.sleep(0.02)


def test_ray_store_equals_the_single_process_store(cluster, shard_data, single_store, tmp_path):
    out = tmp_path / "ray"
    seen: dict[int, int] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_explained, args=([out / SHARDS_DIR / "0", out / SHARDS_DIR / "1"],
                                                               seen, stop), daemon=True)
    watcher.start()
    try:
        assert main([*run_args(shard_data, out), "--engine", "ray", "--workers", "2"]) == 0
    finally:
        stop.set()
        watcher.join()
    assert_equivalent_stores(single_store, out)
    assert not (out / SHARDS_DIR).exists()  # the shard stores were the run's work files
    # The actors chose together: they explained the 30 maps of the global selection, no more
    # (alone, each share of 36 would explain candidates: all 36 of its rows).
    assert sorted(seen) == [0, 1] and sum(seen.values()) == 30


def _kill_when_running(store: Path, killed: list, stop: threading.Event) -> None:
    """SIGKILL the process holding the shard store ``store`` once it has recorded some work."""
    lock, state = store / schema.LOCK_FILE, store / schema.WORK_DIR / "state.json"
    while not stop.is_set():
        try:
            pid = int(lock.read_text().strip() or 0)
            started = '"predict_next"' in state.read_text()
        except (OSError, ValueError):
            pid, started = 0, False
        if pid and started and pid != os.getpid():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.01)


def test_a_killed_worker_is_restarted_and_the_store_is_the_same(cluster, shard_data, single_store, tmp_path):
    out = tmp_path / "killed"
    killed: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_kill_when_running, args=(out / SHARDS_DIR / "1", killed, stop), daemon=True)
    watcher.start()
    try:
        run_distributed(shard_data["model"], shard_data["data"], out, annotations=shard_data["annotations"],
                        options=OPTIONS, progress=False, workers=2)
    finally:
        stop.set()
        watcher.join()
    assert killed, "the worker finished before it could be killed"
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)  # it really died
    assert_equivalent_stores(single_store, out)


def test_without_ray_the_message_says_how_to_install(monkeypatch, shard_data, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    out = tmp_path / "o"
    assert main([*run_args(shard_data, out), "--engine", "ray"]) == 2
    assert capsys.readouterr().err == f"keras-audit: error: {RAY_MISSING}\n"
    assert not out.exists()


def test_ray_options_are_refused_where_they_do_not_apply(shard_data, tmp_path, capsys):
    for extra, message in ((["--workers", "2"], "--workers needs --engine ray"),
                           (["--address", "x:1"], "--address needs --engine ray"),
                           (["--engine", "ray", "--shard", "0/2"], "--shard runs one share in this process")):
        assert main([*run_args(shard_data, tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert not (tmp_path / "o").exists()
