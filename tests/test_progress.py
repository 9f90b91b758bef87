"""Progress inside long stages: the meter's words, plain lines off a terminal, none without a console."""

from __future__ import annotations

import io

from rich.console import Console

from transplant.progress import Meter, Stages


def test_meter_says_done_total_rate_and_eta() -> None:
    now = [100.0]
    meter = Meter(1000, "omp input rows", clock=lambda: now[0])
    assert str(meter) == "omp input rows 0/1,000"
    now[0] += 5.0
    meter.advance(250)
    assert str(meter) == "omp input rows 250/1,000 (50/s, ETA 15s)"
    now[0] += 150.0
    meter.advance(750)
    assert str(meter) == "omp input rows 1,000/1,000 (6/s, 2m35s)"


def test_plain_lines_every_tenth_when_not_a_terminal() -> None:
    out = io.StringIO()
    stages = Stages(console=Console(file=out, force_terminal=False, width=200))
    with stages.run("initializing rows"):
        advance = stages.progress(40, "omp input rows")
        for _ in range(40):
            advance(1)
    lines = [line for line in out.getvalue().splitlines() if "omp input rows" in line]
    assert [line.split()[3] for line in lines] == [f"{4 * i}/40" for i in range(1, 11)]
    assert "ETA" in lines[0] and "/s" in lines[0]
    assert out.getvalue().splitlines()[-1].startswith("✓ initializing rows")


def test_no_console_shows_nothing() -> None:
    stages = Stages()
    with stages.run("initializing rows"):
        stages.progress(10, "rows")(10)
    assert set(stages.timings) == {"initializing rows"}


def test_terminal_shows_progress_on_the_stage_spinner_line() -> None:
    out = io.StringIO()
    stages = Stages(console=Console(file=out, force_terminal=True, width=200))
    with stages.run("initializing rows"):
        stages.progress(100, "omp input rows")(40)
    assert "initializing rows… omp input rows 40/100 (" in out.getvalue()
    assert "\n  omp input rows" not in out.getvalue()  # no plain lines in a terminal
