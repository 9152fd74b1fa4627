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


# -- shared validators: one wording for every option, flag or argument ------------------------
def whole_number(name: str, value, minimum: int = 1, *, none_means: str = "") -> int:
    """``value`` as an int if it is a whole number of at least ``minimum``; else one AuditError line
    naming ``name`` (a CLI flag or an argument). ``none_means`` names what None would mean where
    :func:`optional_whole_number` allows it, so the message can say so.

    >>> whole_number("--seed", 3, 0)
    3
    >>> whole_number("batch_size", 0)
    Traceback (most recent call last):
    audit.errors.AuditError: batch_size must be 1 or more; received 0
    """
    import numbers

    alternative = f" (or None: {none_means})" if none_means else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise AuditError(f"{name} must be a whole number{alternative}; received {value!r}")
    if value < minimum:
        raise AuditError(f"{name} must be {minimum} or more{alternative}; received {value!r}")
    return int(value)


def optional_whole_number(name: str, value, minimum: int = 1, *, none_means: str) -> int | None:
    """None (meaning ``none_means``), or ``value`` checked as :func:`whole_number` does."""
    return None if value is None else whole_number(name, value, minimum, none_means=none_means)


def positive_number(name: str, value) -> float:
    """``value`` as a float if it is a number above zero; else one AuditError line naming ``name``."""
    import numbers

    # float(): numbers.Real guarantees __float__ but not __gt__ (mypy is right to refuse `value > 0`)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0:
        raise AuditError(f"{name} must be a positive number; received {value!r}")
    return float(value)
