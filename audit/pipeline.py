"""The product's run: the engine's phases, then the views it writes into the store.

The engine computes the store and never imports a view; this adapter (like the CLI and the
callbacks) wires the two: after the store is finished, its TensorBoard logs are exported into it.
Discovery and other post-steps join ``POST_STEPS``.

Example:
    >>> from audit.pipeline import run_audit
    >>> run_audit("sample_models/shapes_bias.keras", "sample_models/shapes_eval", "audit_out",
    ...           annotations="sample_models/shapes_annotations.csv")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from audit.engine import run as engine
from audit.engine.session import Session


def _tensorboard(session: Session) -> None:
    if session.options.tensorboard:
        from audit.views.tensorboard import EVENT_SUFFIX, export

        engine.export_tensorboard(session.writer, export, EVENT_SUFFIX)


POST_STEPS: tuple[engine.PostStep, ...] = (_tensorboard,)


def run_audit(model: str | Path, data: str | Path, out: str | Path, **run_options: Any) -> Path:
    """Audit ``model`` on ``data``: a results store in ``out``, with its TensorBoard logs.

    Takes the keywords of :func:`audit.engine.run.run_audit` (``annotations``, ``options``,
    ``resume``, ``progress``); the post-steps are the product's own.
    """
    return engine.run_audit(model, data, out, post_steps=POST_STEPS, **run_options)


def rewrite_tensorboard(store: str | Path) -> Path:
    """(Re)write the TensorBoard logs of a finished store, listed as the store's own files."""
    from audit.views.tensorboard import EVENT_SUFFIX, export

    return engine.reexport(store, export, EVENT_SUFFIX)
