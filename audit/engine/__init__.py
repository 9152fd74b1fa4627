"""The engine: computes a results store from a model and a dataset.

One run is wired in :mod:`~audit.engine.run` from its phases, one module each:
:mod:`~audit.engine.options` (what the user asked), :mod:`~audit.engine.session`
(inputs validated, manifest, resume check, the store's writer),
:mod:`~audit.engine.predict`, :mod:`~audit.engine.explain`, :mod:`~audit.engine.finish`;
:mod:`~audit.engine.live` is the same pipeline in memory, for the training callbacks.

Views never import this package (they read the store), and it never imports a view: the
product's run, which adds the TensorBoard export, is wired in :mod:`audit.pipeline`.
"""

from __future__ import annotations

from audit.engine.options import AuditOptions
from audit.engine.run import run_audit

__all__ = ["AuditOptions", "run_audit"]
