"""keras-audit: explain and audit a trained Keras image classifier.

``import audit`` is cheap: TensorFlow, Streamlit and TensorBoard are imported
only by the functions that need them.

>>> from audit import Reader
>>> run = Reader("audit_out")                # doctest: +SKIP
>>> run.predictions.groupby("background").correct.mean()  # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from audit.errors import AuditError, DataError, ModelError, StoreError
from audit.store.reader import Reader
from audit.store.schema import SCHEMA_VERSION

__version__ = "0.1.0"

__all__ = [
    "AuditError",
    "DataError",
    "ModelError",
    "StoreError",
    "Reader",
    "SCHEMA_VERSION",
    "run_audit",
    "load_model",
    "what_if",
    "__version__",
]

_LAZY = {"run_audit": "audit.pipeline", "load_model": "audit.io.models", "what_if": "audit.wit"}

if TYPE_CHECKING:  # pragma: no cover
    from audit.io.models import load_model
    from audit.pipeline import run_audit
    from audit.wit import what_if


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'audit' has no attribute {name!r}")
