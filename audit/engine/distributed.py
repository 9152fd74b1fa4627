"""The Ray engine (``keras-audit run --engine ray``): the shard machinery driven by Ray actors.

The driver splits the data into one share per actor (``audit.engine.shard``); each actor loads
the model once and runs the ordinary run of its share into a shard store under
``OUT/work/shards/<k>/`` (on a filesystem every node sees), so prediction, explanations and
activation statistics all run on the actors. Between prediction and explanation the actors meet
once (:class:`AcrossShares`): each computes the one global selection from every share's
predictions and explains only its part of it, so no map is computed that the merge drops. The
driver then merges the shard stores into OUT and runs finish and the post-steps once: only the
merge and the metrics stay on the driver. Ray's own scheduling and retries do the rest; plain
actors rather than a Ray Data pipeline, since each share is one long call that must be resumable
in place (a Ray Data task retried from its start would redo finished batches).

Fault tolerance comes from the shard stores being resumable: an actor killed mid-run is
restarted by Ray (``max_restarts``) and its call retried (``max_task_retries``); the retried
call resumes its shard from the shard's ``work/state.json``, so only unfinished batches are
redone. ``--resume`` after the driver itself died does the same for every unfinished shard.
Progress is one bar for the whole cluster, summed from the shard stores' state files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from audit.engine.options import AuditOptions
from audit.engine.shard import merge_shards, share
from audit.errors import AuditError
from audit.progress import bar
from audit.store import merge as shards_store
from audit.store import schema
from audit.store.writer import StoreWriter

RAY_MISSING = "--engine ray needs Ray: pip install 'keras-audit[ray]'"
SHARDS_DIR = f"{schema.WORK_DIR}/shards"
RETRIES = 3  # restarts of a killed actor, and retries of its call, before the run fails
_POLL_S = 0.5
# Ray starts workers at nice 15 (to keep a laptop responsive); here the actors are the work, and on
# a busy machine niced actors lose their CPUs to everything else (measured: 0.44x one process).
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0}


def _ray():
    try:
        import ray
    except ImportError:
        raise AuditError(RAY_MISSING) from None
    return ray


class AcrossShares:
    """A share's part of the one global selection, chosen by the actors together: each writes its
    rows' selection columns into its shard store, waits for every sibling's, and computes the
    global selection from them all (a pure function of those rows, so every actor gets the same
    one). Unlike ``shard_candidates`` no map is computed that the merge would drop. A resumed or
    finished shard keeps its file, so a restarted actor or a resumed run finds it again."""

    def __init__(self, stores: Sequence[str]):
        self.stores = [Path(s) for s in stores]

    def __call__(self, session, predictions):
        import numpy as np
        import pandas as pd

        from audit.engine.selection import select_for_explanation
        from audit.store.writer import write_parquet

        w, part, o = session.writer, session.shard, session.options
        w.own(shards_store.SELECTION_ROWS)
        write_parquet(w.out / shards_store.SELECTION_ROWS, predictions[list(shards_store.SELECTION_COLUMNS)])
        files = [s / shards_store.SELECTION_ROWS for s in self.stores]
        while not all(f.is_file() for f in files):
            time.sleep(_POLL_S / 5)
        rows = pd.concat([schema.read_parquet(f) for f in files], ignore_index=True)
        chosen = select_for_explanation(rows, o.explain_limit, o.seed, num_classes=len(session.class_names))
        return np.asarray(chosen[(chosen >= part.start) & (chosen < part.stop)], np.int64)


class ShardWorker:
    """A Ray actor: TensorFlow set to its CPUs once, then the ordinary run of one share at a time."""

    def __init__(self, threads: int):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)

    def pid(self) -> int:
        return os.getpid()

    def peak_rss_mb(self) -> float:
        """This actor process's peak resident memory so far (Linux reports KiB)."""
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def run(self, model: str, data: str, out: str, annotations: str | None, options: AuditOptions,
            siblings: Sequence[str] | None = None) -> str:
        """Run (or resume) the shard store ``out``; a finished one is left as it is. ``siblings``:
        every shard store of the run (this one too), to choose the maps to compute with."""
        from audit.engine.run import run_audit

        if (schema.read_manifest_file(Path(out)) or {}).get("complete"):
            return out
        select = AcrossShares(siblings) if siblings else None
        run_audit(model, data, out, annotations=annotations, options=options, resume=True, progress=False,
                  share_selection=select)
        return out


def _connect(ray, address: str | None, cpus: int, gpus: float) -> bool:
    """Join ``address``, or start a local cluster bound to this machine; True when started here."""
    if ray.is_initialized():  # a cluster this process already joined (a notebook, the tests)
        return False
    # The actors import this very keras-audit (a checkout need not be installed); quiet TensorFlow.
    here = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    env = {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": path}}
    common = dict(logging_level=logging.WARNING, log_to_driver=False, runtime_env=env)
    if address:
        ray.init(address=address, **common)
        return False
    ray.init(num_cpus=cpus, num_gpus=int(gpus + 0.999) if gpus else None, include_dashboard=False,
             _node_ip_address="127.0.0.1", object_store_memory=128 << 20, _system_config=LOCAL_SYSTEM_CONFIG,
             **common)
    return True


def _abs(path) -> str | None:
    """A local path made absolute, for actors that may run elsewhere; a URL (remote DATA) as given."""
    from audit.io.remote import is_url

    if path is None:
        return None
    return path if is_url(path) else str(Path(path).resolve())


def _state(store: Path) -> dict:
    """How far a shard got: its state file while it runs, everything once it is complete."""
    manifest = schema.read_manifest_file(store) or {}
    if manifest.get("complete"):
        return {"complete": True, "explained_count": (manifest.get("explained") or {}).get("count", 0)}
    try:
        return json.loads((store / schema.WORK_DIR / "state.json").read_text())
    except (OSError, ValueError):  # not started yet, or between the rename and the read
        return {}


def _counts(stores: list[Path], rows: list[int]) -> tuple[int, int, int | None]:
    """(predicted, explained, to explain or None while some shard is still choosing)."""
    predicted = explained = 0
    to_explain: int | None = 0
    for store, n in zip(stores, rows):
        s = _state(store)
        if s.get("complete"):
            predicted, explained = predicted + n, explained + s["explained_count"]
            to_explain = None if to_explain is None else to_explain + s["explained_count"]
            continue
        predicted += min(int(s.get("predict_next", 0)), n)
        explained += int(s.get("explain_done", 0))
        to_explain = None if to_explain is None or "explained" not in s else to_explain + len(s["explained"])
    return predicted, explained, to_explain


def _step(ray, pending: list) -> list:
    """Wait a moment for the calls; a call that failed is raised at once (its siblings would wait
    for its selection rows forever)."""
    ready, pending = ray.wait(pending, timeout=_POLL_S)
    for call in ready:
        _get(ray, call)
    return pending


def _wait(ray, calls: list, stores: list[Path], rows: list[int], progress: bool) -> None:
    """Wait for every shard call, showing one bar for the cluster: predict, then explain."""
    pending = list(calls)
    with bar("predict", sum(rows), enabled=progress) as advance:
        done = 0
        while pending and done < sum(rows):
            pending = _step(ray, pending)
            predicted = _counts(stores, rows)[0]
            advance(predicted - done)
            done = predicted
    _, explained, total = _counts(stores, rows)
    while pending and total is None:
        pending = _step(ray, pending)
        _, explained, total = _counts(stores, rows)
    if total:
        with bar("explain", total, enabled=progress) as advance:
            shown = 0
            while pending:
                pending = _step(ray, pending)
                explained = _counts(stores, rows)[1]
                advance(explained - shown)
                shown = explained
    while pending:
        pending = _step(ray, pending)


def _check_room(ray, n: int, cpus: int, gpus: float) -> None:
    """The actors choose their maps together, so all ``n`` must run at once: refuse a cluster
    that cannot hold them rather than wait forever."""
    have = ray.cluster_resources()
    for what, need in (("CPU", n * cpus), ("GPU", n * gpus)):
        if need and have.get(what, 0) < need:
            raise AuditError(f"the Ray cluster has {have.get(what, 0):g} {what}s; --workers {n} needs {need:g} "
                             f"({cpus if what == 'CPU' else gpus:g} each): use fewer --workers")


def _get(ray, call):
    """The call's result; a user mistake found on an actor is raised here as itself (one line)."""
    try:
        return ray.get(call)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, AuditError):
            raise e.cause from None
        raise


def start_workers(ray, n: int, *, cpus_per_worker: int, gpus_per_worker: float) -> list:
    """``n`` ShardWorker actors, each restarted (and its call retried) when its process dies."""
    actor = ray.remote(ShardWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                            max_restarts=RETRIES, max_task_retries=RETRIES)
    return [actor.remote(cpus_per_worker) for _ in range(n)]


def _post_steps_only(writer: StoreWriter, options: AuditOptions, post_steps: Sequence) -> Path:
    from audit.engine.shard import MergedSession

    try:
        manifest = writer.read_manifest()
        session = MergedSession(options, writer, list(manifest["class_names"]), manifest, [], ())
        for step in post_steps:
            step(session)
    finally:
        writer.close()
    return writer.out


def run_distributed(model: str | Path, data: str | Path, out: str | Path, *, annotations: str | Path | None = None,
                    options: AuditOptions | None = None, resume: bool = False, progress: bool = True,
                    address: str | None = None, workers: int = 2, gpus_per_worker: float = 0.0,
                    cpus_per_worker: int = 1, post_steps: Sequence = ()) -> Path:
    """Compute the store ``out`` on a Ray cluster: the same store as :func:`audit.engine.run.run_audit`
    (predictions, probabilities and stored images byte for byte; maps and activation statistics
    within float16 rounding), then run ``post_steps`` once on the driver.

    ``address``: a running cluster to join; None starts a local one for the run (``workers`` ×
    ``cpus_per_worker`` CPUs, on 127.0.0.1) and stops it after. Each of ``workers`` actors runs one
    share, reserving ``cpus_per_worker`` CPUs (TensorFlow's intra-op threads) and ``gpus_per_worker``.

    Raises:
        AuditError: Ray is not installed, or any input or option is wrong (one line, as a run says it).
    """
    ray = _ray()
    from audit.io.data import open_dataset

    options = (options or AuditOptions()).validate()
    if options.shard is not None:
        raise AuditError("--shard runs one share in this process; drop it with --engine ray (which shards itself)")
    count = open_dataset(data).count  # DATA checked before anything is written; no image is read
    n = max(1, min(int(workers), count))
    writer = StoreWriter(out, resume=resume)
    if writer.resuming and writer.state.get("shards") not in (None, n):
        writer.close()  # the interrupted run's shards stay, for a --resume with its --workers
        raise AuditError(f"--resume: the interrupted run used --workers {writer.state['shards']}; pass the same "
                         "--workers or rerun without --resume to start over", writer.out)
    if writer.export_only:  # killed in its post-steps: the store is complete but for them
        return _post_steps_only(writer, options, post_steps)
    started = False
    try:
        writer.own(f"{SHARDS_DIR}/")
        writer.save_state(engine="ray", shards=n)
        stores = [writer.out / SHARDS_DIR / str(k) for k in range(n)]
        rows = [(lambda s: s.stop - s.start)(share(f"{k}/{n}", count, options.batch_size)) for k in range(n)]
        started = _connect(ray, address, n * cpus_per_worker, gpus_per_worker)
        _check_room(ray, n, cpus_per_worker, gpus_per_worker)
        actors = start_workers(ray, n, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker)
        try:
            calls = [a.run.remote(_abs(model), _abs(data), str(s), _abs(annotations),
                                  dataclasses.replace(options, shard=f"{k}/{n}", tensorboard=False),
                                  [str(p) for p in stores])
                     for k, (a, s) in enumerate(zip(actors, stores))]
            _wait(ray, calls, stores, rows, progress)
        finally:
            for a in actors:
                ray.kill(a)
        merge_shards(writer.out, stores, post_steps=post_steps, tensorboard=options.tensorboard, progress=progress,
                     writer=writer, paths={"model": model, "data": data, "annotations": annotations})
    except AuditError:
        # A fresh run leaves nothing behind; a resumed one keeps what the interrupted run did (a shard
        # refusing to resume, say, because an option changed), still marked incomplete.
        if not writer.resuming:
            writer.discard()
        raise
    finally:
        if started:
            ray.shutdown()
        writer.close()
    return writer.out
