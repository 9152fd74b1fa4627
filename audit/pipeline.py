"""The product's run: the engine's phases, then the views it writes into the store.

The engine computes the store and never imports a view; this adapter (like the CLI and the
callbacks) wires the two: after the store is finished, discovery (audit.engine.discovery) adds
its groups, then its TensorBoard logs are exported into it (``POST_STEPS``, in that order). The
training callbacks run neither.

Example:
    >>> from audit.pipeline import run_audit
    >>> run_audit("sample_models/shapes_bias.keras", "sample_models/shapes_eval", "audit_out",
    ...           annotations="sample_models/shapes_annotations.csv")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from audit.engine import run as engine
from audit.engine.discovery import discover_store, needs_discovery
from audit.engine.session import Session


def _tensorboard(session: Session) -> None:
    if session.options.tensorboard:
        from audit.views.tensorboard import EVENT_SUFFIX, export

        engine.export_tensorboard(session.writer, export, EVENT_SUFFIX)


def _discovery(session: Session) -> None:
    # A shard's store is discovered only once merged (the merge runs these steps again).
    if getattr(session, "shard", None) is None and needs_discovery(session.writer):
        discover_store(session.writer)


# Discovery first: the TensorBoard export shows the discovered groups.
POST_STEPS: tuple[engine.PostStep, ...] = (_discovery, _tensorboard)


def run_audit(model: str | Path, data: str | Path, out: str | Path, **run_options: Any) -> Path:
    """Audit ``model`` on ``data``: a results store in ``out``, with its TensorBoard logs.

    Takes the keywords of :func:`audit.engine.run.run_audit` (``annotations``, ``options``,
    ``resume``, ``progress``); the post-steps are the product's own.
    """
    return engine.run_audit(model, data, out, post_steps=POST_STEPS, **run_options)


def explain_more(store: str | Path, indices, *, progress: bool = True):
    """``keras-audit explain OUT --indices ...``: maps for those examples added to the finished store
    (:func:`audit.engine.followup.add_explanations`), then discovery and the TensorBoard export
    again, as after a run. Returns the examples added (those without maps before)."""
    from audit.engine.followup import add_explanations
    from audit.store import schema
    from audit.store.reader import Reader
    from audit.store.writer import StoreWriter

    Reader(store)  # refuses a missing, unfinished or foreign folder before the writer touches it
    writer = StoreWriter(store, reopen=True)
    try:
        added = add_explanations(writer, indices, progress=progress)
        manifest = writer.read_manifest()
        if added.size or manifest.get("discovery") == schema.DISCOVERY_PENDING:
            discover_store(writer)
        if added.size and (manifest.get("options") or {}).get("tensorboard", True):
            from audit.views.tensorboard import EVENT_SUFFIX, export

            engine.export_tensorboard(writer, export, EVENT_SUFFIX)
    finally:
        writer.close()
    return added


def rewrite_tensorboard(store: str | Path) -> Path:
    """(Re)write the TensorBoard logs of a finished store, listed as the store's own files."""
    from audit.views.tensorboard import EVENT_SUFFIX, export

    return engine.reexport(store, export, EVENT_SUFFIX)


def merge(out: str | Path, shard_outs, *, tensorboard: bool | None = None, progress: bool = True) -> Path:
    """``keras-audit merge``: finished shard stores (``--shard i/n``) combined into the store ``out``,
    then the product's post-steps once, as after a run (see :func:`audit.engine.shard.merge_shards`)."""
    from audit.engine.shard import merge_shards

    return merge_shards(out, shard_outs, post_steps=POST_STEPS, tensorboard=tensorboard, progress=progress)


def run_distributed(model: str | Path, data: str | Path, out: str | Path, **run_options: Any) -> Path:
    """``keras-audit run --engine ray``: the same store from a Ray cluster (see
    :func:`audit.engine.distributed.run_distributed`), with the product's post-steps."""
    from audit.engine.distributed import run_distributed as run

    return run(model, data, out, post_steps=POST_STEPS, **run_options)
