"""What a user sees while long work runs: named stages with timings, and progress bars.

The pipeline wraps each long step in ``stages.run(name)``; the timings end up in
``transplant.json`` and, in a terminal, a rich spinner shows what is happening.
Evaluations report windows scored through a per-model callback drawn as a bar.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@dataclass
class Stages:
    console: Console | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def run(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.console is None:
            yield
        else:
            with self.console.status(f"{name}…"):
                yield
        elapsed = time.perf_counter() - start
        self.timings[name] = round(elapsed, 3)
        if self.console is not None:
            self.console.print(f"[green]✓[/] {name} [dim]({elapsed:.1f}s)[/]")


@contextmanager
def progress_bars(console: Console) -> Iterator[Callable[[str], Callable[[int, int], None]]]:
    """A factory of per-model progress callbacks ``(done, total)`` drawing bars on ``console``."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bars:
        tasks: dict[str, int] = {}

        def factory(label: str) -> Callable[[int, int], None]:
            def advance(done: int, total: int) -> None:
                if label not in tasks:
                    tasks[label] = bars.add_task(f"scoring {label}", total=total)
                bars.advance(tasks[label], done)

            return advance

        yield factory
