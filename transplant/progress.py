"""Named stages with timings and a live status line.

The pipeline wraps each long step in ``stages.run(name)``; the timings end up in
``transplant.json`` and, in a terminal, a rich spinner shows what is happening.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from rich.console import Console


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
