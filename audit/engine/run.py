"""run_audit(): the wiring of one run, session → predict → explain → finish → post-steps.

Every phase resumes from ``work/state.json``; a batch is a pure function of (model, examples,
options), so a resumed run ends with a store identical to an uninterrupted one. The post-steps
work on the finished store only (never on the model), each from the writer of the session:
the product's first (audit.pipeline) exports TensorBoard logs into a staging folder under work/
and moves them into tensorboard/; until then the manifest says ``"tensorboard": "pending"`` and
``--resume`` redoes only the post-steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from audit.engine.explain import explain
from audit.engine.finish import finish, predictions_table
from audit.engine.options import AuditOptions
from audit.engine.predict import check_readable, predict
from audit.engine.session import Session
from audit.errors import AuditError
from audit.store import schema
from audit.store.writer import StoreWriter

# A view that writes into the store: (store, logdir) -> folder, plus the suffix of its event files.
Exporter = Callable[[Path, Path], Path]
PostStep = Callable[[Session], None]


def export_tensorboard(w: StoreWriter, export: Exporter, event_suffix: str) -> Path:
    """Run ``export`` into work/ and move its files into place, so a kill midway leaves the store
    marked pending (never partial logs passed off as done) and --resume redoes just this.
    Every log file is listed as the store's own, so a re-run removes it.

    The export itself is a view (audit.views.tensorboard), passed in by the product's wiring
    (audit.pipeline): the engine stages and publishes, it never imports a view.
    """
    staging = w.staging(schema.TENSORBOARD_DIR)
    export(w.out, staging)
    # A schema-1 store's `keras-audit tensorboard OUT` wrote here without listing its files; its
    # event files are keras-audit's by name, and a second set would show every summary twice.
    for stale in (w.out / schema.TENSORBOARD_DIR).glob(f"events.out.tfevents.*{event_suffix}"):
        stale.unlink()
    w.publish(staging, schema.TENSORBOARD_DIR)
    w.update_manifest(tensorboard=schema.TENSORBOARD_WRITTEN)
    return w.out / schema.TENSORBOARD_DIR


def reexport(store: str | Path, export: Exporter, event_suffix: str) -> Path:
    """``keras-audit tensorboard OUT``: the same staged, listed export as a run's, into a finished store."""
    writer = StoreWriter(store, reopen=True)
    try:
        return export_tensorboard(writer, export, event_suffix)
    finally:
        writer.close()


def _compute(session: Session, share_selection: Callable | None = None) -> None:
    """Phases 1 to 3, each from where an interrupted run left it."""
    if session.writer.state.get("predict_next", 0) < session.dataset.count:
        predict(session)
    check_readable(session)
    predictions = predictions_table(session)
    if session.shard is not None:  # a share of the data explains candidates for a later merge
        from audit.engine import shard

        shard.choose_candidates(session, predictions, share_selection)
    quality = explain(session, predictions)
    if session.shard is not None:
        shard.keep_for_merge(session)
    finish(session, predictions, quality)


def run_audit(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    annotations: str | Path | None = None,
    options: AuditOptions | None = None,
    resume: bool = False,
    progress: bool = True,
    post_steps: Sequence[PostStep] = (),
    share_selection: Callable | None = None,
) -> Path:
    """Compute a results store in ``out`` from ``model`` on ``data``, then run ``post_steps``
    (steps on the finished store, in order; each decides from the session's options whether it
    applies). The product's run, with its TensorBoard export, is :func:`audit.pipeline.run_audit`.

    ``share_selection``: with ``options.shard``, ``(session, predictions) -> indices`` giving the
    share's part of the global selection (the Ray engine's, which sees every share); None: the
    share explains ``shard_candidates``, a superset any later merge can choose from.
    """
    session = Session(model, data, out, annotations, options or AuditOptions(), resume, progress)
    try:
        if not session.writer.export_only:
            _compute(session, share_selection)
        for step in post_steps:
            step(session)
    except AuditError:
        if not session.writer.export_only:
            session.writer.discard()  # a mistake found midway: leave nothing that looks like a result
        raise
    finally:
        session.close()  # array files and the store's lock, also after an error
    return session.writer.out
