"""What a user sees while long work runs: named stages with timings, and progress bars.

The pipeline wraps each long step in ``stages.run(name)``; the timings end up in
``transplant.json`` and, in a terminal, a rich spinner shows what is happening.
Evaluations report windows scored through a per-model callback drawn as a bar.

Work inside a stage that runs for minutes (OMP over 200k rows, embedding a vocabulary)
reports through ``stages.progress(total, label)``, which returns ``advance(n)``. The
pipeline hands that factory to methods in their ``Context``, and they hand the ``advance``
callable down to the math, so the math modules stay free of I/O and the default (library
use, ``--json``) shows nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.status import Status

Advance = Callable[[int], None]  # n more units of work done
ProgressFactory = Callable[[int, str], Advance]  # (total, label) -> advance

PLAIN_EVERY_S = 10.0  # off a terminal, a line at least this often...
PLAIN_EVERY_FRACTION = 0.1  # ...and at every tenth of the total


def no_progress(total: int, label: str) -> Advance:
    """The default factory: the work is not shown."""
    return lambda n: None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass
class Meter:
    """Work done towards a total, in words: ``label done/total (rate/s, ETA …)``."""

    total: int
    label: str
    clock: Callable[[], float] = time.monotonic
    done: int = 0
    start: float = field(init=False)

    def __post_init__(self) -> None:
        self.start = self.clock()

    def advance(self, n: int) -> None:
        self.done += n

    def __str__(self) -> str:
        text = f"{self.label} {self.done:,}/{self.total:,}"
        elapsed = self.clock() - self.start
        if self.done == 0 or elapsed <= 0:
            return text
        rate = self.done / elapsed
        left = f"ETA {_duration((self.total - self.done) / rate)}" if self.done < self.total else _duration(elapsed)
        return f"{text} ({rate:,.0f}/s, {left})"


@dataclass
class Stages:
    console: Console | None = None
    timings: dict[str, float] = field(default_factory=dict)
    _running: tuple[str, Status] | None = field(default=None, init=False, repr=False)

    @contextmanager
    def run(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.console is None:
            yield
        else:
            with self.console.status(f"{name}…") as status:
                self._running = (name, status)
                try:
                    yield
                finally:
                    self._running = None
        elapsed = time.perf_counter() - start
        self.timings[name] = round(elapsed, 3)
        if self.console is not None:
            self.console.print(f"[green]✓[/] {name} [dim]({elapsed:.1f}s)[/]")

    def progress(self, total: int, label: str) -> Advance:
        """``advance(n)`` for work inside the running stage. In a terminal the stage's spinner
        line shows it live; elsewhere (logs, CI) it prints a plain line every tenth of the
        total or every ``PLAIN_EVERY_S`` seconds, whichever comes first."""
        if self.console is None:
            return no_progress(total, label)
        meter = Meter(total, label)
        if self.console.is_terminal and self._running is not None:
            name, status = self._running

            def live(n: int) -> None:
                meter.advance(n)
                status.update(f"{name}… {meter}")

            return live
        return _PlainLines(meter, self.console)


@dataclass
class _PlainLines:
    """The off-terminal ``advance``: prints the meter when a tenth or ``PLAIN_EVERY_S`` has passed."""

    meter: Meter
    console: Console
    printed_done: int = 0
    printed_at: float = field(init=False)

    def __post_init__(self) -> None:
        self.printed_at = self.meter.start

    def __call__(self, n: int) -> None:
        self.meter.advance(n)
        step = max(1, int(self.meter.total * PLAIN_EVERY_FRACTION))
        now = self.meter.clock()
        finished = self.meter.done >= self.meter.total
        if finished or self.meter.done // step > self.printed_done // step or now - self.printed_at >= PLAIN_EVERY_S:
            self.console.print(f"  {self.meter}", highlight=False)
            self.printed_done, self.printed_at = self.meter.done, now


def scoring_lines(label: str, console: Console | None = None) -> Callable[[int, int], None]:
    """An evaluation's ``(done, total)`` callback for a trainer's log: plain lines, every tenth
    of the windows or ``PLAIN_EVERY_S`` seconds, so a long evaluation is never silent."""
    lines = _PlainLines(Meter(0, label), console or Console(highlight=False))

    def advance(done: int, total: int) -> None:
        lines.meter.total = total
        lines(done)

    return advance


@contextmanager
def progress_bars(console: Console) -> Iterator[Callable[[str], Callable[[int, int], None]]]:
    """A factory of per-model progress callbacks ``(done, total)`` drawing bars on ``console``;
    the total may grow between calls (evaluation counts a long document's windows as it reads it)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bars:
        tasks: dict[str, int] = {}

        def factory(label: str) -> Callable[[int, int], None]:
            def advance(done: int, total: int) -> None:
                if label not in tasks:
                    tasks[label] = bars.add_task(f"scoring {label}", total=total)
                bars.update(tasks[label], total=total, advance=done)

            return advance

        yield factory
