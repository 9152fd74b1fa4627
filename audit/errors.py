"""User-facing errors.

Every mistake a user can make (a bad file, a wrong option) raises an
:class:`AuditError` whose message is one line naming the file and what is
wrong. The CLI prints that line and exits with status 2; anything else is a bug
and exits with status 1.
"""

from __future__ import annotations

from pathlib import Path


class AuditError(Exception):
    """A problem with the user's input, reported as one actionable line."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ModelError(AuditError):
    """The model file cannot be loaded or is not an image classifier."""


class DataError(AuditError):
    """The dataset or annotations table cannot be used."""


class StoreError(AuditError):
    """The results store is missing, incomplete, of another version, or not a store."""
