"""Test-only kill points of a run: the store's atomicity is tested by killing a run at exact places.

They live in the store layer because every layer reaches them (the engine's phases, the store's
publish step, the TensorBoard view's export) and the store is the one layer all may import.
"""

from __future__ import annotations

import os
import signal

KILL_AT_ENV = "KERAS_AUDIT_KILL_AT"
_reached: dict[str, int] = {}


def checkpoint(phase: str) -> None:
    """A point where a test may kill the run: TEST-ONLY, never set the variable otherwise.

    With ``KERAS_AUDIT_KILL_AT="phase:k"`` in the environment, the process
    SIGKILLs itself the k-th time (default 1) ``phase`` is reached, as a power
    cut would stop it, so kill-and-resume tests stop at exact points instead of
    racing a timer. Phases: ``predict`` and ``explain`` (after each batch is
    recorded), ``activations`` (each batch of the statistics pass), ``finish``
    (metrics written, manifest not yet complete), ``tensorboard`` (event file
    written, projector not yet), ``publish`` (first log file moved into place) and
    ``commit`` (discovery's first replaced file moved into place, the others not yet).
    Unset, this is one dictionary lookup.
    """
    wanted = os.environ.get(KILL_AT_ENV)
    if not wanted:
        return
    name, _, count = wanted.partition(":")
    if name != phase:
        return
    _reached[phase] = _reached.get(phase, 0) + 1
    if _reached[phase] >= (int(count) if count.isdigit() else 1):
        os.kill(os.getpid(), signal.SIGKILL)
