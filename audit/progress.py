"""Progress bars for long work: counts, rate and time left, on stderr.

The rate and the time left come from finished batches, measured by :class:`Meter`: the first
batch of a phase also traces and compiles the model's functions (often most of the time
before the first count moves), so the bar says "compiling" until it ends, then shows that
batch's rate at once, and from the second batch on the rate of the batches after it, which is
what the rest of the phase will run at.

>>> meter = Meter(0.0, completed=0)
>>> meter.advance(32, 40.0); round(meter.rate(), 2)     # first batch: tracing included
0.8
>>> meter.advance(32, 42.0); meter.rate(), meter.remaining(120, 42.0)   # then the steady rate
(16.0, 3.5)
>>> meter.remaining(120, 44.0)      # between batches the time left counts down
1.5
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

console = Console(stderr=True, highlight=False)


class Meter:
    """Examples done over time, batch by batch, starting at ``start`` with ``completed`` done (a resume)."""

    def __init__(self, start: float, completed: int = 0):
        self.start, self.done = start, completed
        self._base = completed
        self.first: tuple[float, int] | None = None  # (time, done) when the first batch ended
        self.last: tuple[float, int] | None = None

    def advance(self, n: int, now: float) -> None:
        if n <= 0:  # a refresh, not a batch
            return
        self.done += n
        if self.first is None:
            self.first = (now, self.done)
        self.last = (now, self.done)

    def rate(self) -> float | None:
        """Examples per second: of the batches after the first once there are some, else of the first."""
        if self.first is None or self.last is None:
            return None
        (t1, n1), (t2, n2) = self.first, self.last
        if n2 > n1 and t2 > t1:
            return (n2 - n1) / (t2 - t1)
        return (n1 - self._base) / (t1 - self.start) if t1 > self.start else None

    def remaining(self, total: int, now: float) -> float | None:
        """Seconds left at :meth:`rate` from ``now`` (counting down since the last batch ended), or
        None before the first batch ends."""
        rate = self.rate()
        if not rate or self.last is None:
            return None
        return max(max(total - self.done, 0) / rate - (now - self.last[0]), 0.0)


def _clock_text(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class RateColumn(ProgressColumn):
    """Images per second, the unit people compare explainers and models in; "compiling" before the
    first batch ends."""

    def render(self, task) -> Text:
        meter: Meter = task.fields["meter"]
        rate = meter.rate()
        if rate is None:
            text = "done" if task.finished else "first batch (incl. compiling)"
        else:
            text = f"{rate:,.1f} img/s" if rate < 10 else f"{rate:,.0f} img/s"
        return Text(text, style="progress.data.speed")


class LeftColumn(ProgressColumn):
    """Time left at the meter's rate."""

    def __init__(self, clock: Callable[[], float]):
        super().__init__()
        self.clock = clock

    def render(self, task) -> Text:
        left = task.fields["meter"].remaining(int(task.total or 0), self.clock())
        return Text("left --" if left is None else f"left {_clock_text(left)}", style="progress.remaining")


@contextlib.contextmanager
def bar(description: str, total: int, *, completed: int = 0, enabled: bool = True,
        clock: Callable[[], float] = time.monotonic, out: Console | None = None) -> Iterator:
    """A progress bar; yields ``advance(n)``, to call after each batch with its number of examples.

    ``clock`` and ``out`` are for tests (a fake clock, a recording console).
    """
    if not enabled:
        yield lambda n: None
        return
    columns = (
        TextColumn("[bold]{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        LeftColumn(clock),
    )
    with Progress(*columns, console=out or console, transient=False, get_time=clock) as progress:
        meter = Meter(clock(), completed)
        task = progress.add_task(description, total=total, completed=completed, meter=meter)

        def advance(n: int) -> None:
            meter.advance(n, clock())
            progress.advance(task, n)
            progress.refresh()  # batches are seconds apart: show the new count and rate now

        yield advance

