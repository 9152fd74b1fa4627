"""Progress bars for long work: counts, rate and time left, on stderr; and the
test-only kill points of a run (:func:`checkpoint`)."""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True, highlight=False)


class RateColumn(ProgressColumn):
    """Images per second, the unit people compare explainers and models in."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- img/s" if speed is None else f"{speed:,.0f} img/s", style="progress.data.speed")


@contextlib.contextmanager
def bar(description: str, total: int, *, completed: int = 0, enabled: bool = True) -> Iterator:
    """A progress bar; yields ``advance(n)``."""
    if not enabled:
        yield lambda n: None
        return
    columns = (
        TextColumn("[bold]{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, completed=completed)
        yield lambda n: progress.advance(task, n)


# -- test-only --------------------------------------------------------------------------------
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
    written, projector not yet) and ``publish`` (first log file moved into place).
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
