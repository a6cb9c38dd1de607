"""Knobs and the summary table of the fault schedules (tests/fault/test_schedules.py).

Environment:
    COORD_FAULT_SOAK=1        run the soak set: every nemesis, many seeds, longer loads
    COORD_FAULT_SEEDS=N       seeds per nemesis in the soak set (default 5)
    COORD_FAULT_SECONDS=S     seconds of load per schedule (default 8 in CI, 30 in soak)
    COORD_FAULT_ONLY=a,b      only these nemeses (e.g. "pause,kill-all")

The schedules are seeded (the nemesis's choices and timing, the workers' operations),
but thread and process scheduling are not, so a seed names a schedule, not a trace:
rerun a failure with ``pytest tests/fault -k pause-3``, a few times if need be.
"""

from __future__ import annotations

import pytest

from .harness import Outcomes

_SUMMARY = pytest.StashKey[list[Outcomes]]()


@pytest.fixture
def fault_summary(request: pytest.FixtureRequest) -> list[Outcomes]:
    """Where each schedule leaves its outcome, for the table at the end of the run."""
    return request.config.stash.setdefault(_SUMMARY, [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    outcomes = config.stash.get(_SUMMARY, [])
    if not outcomes:
        return
    write = terminalreporter.write_line
    terminalreporter.section("coord fault schedules")
    for outcome in outcomes:
        write(outcome.summary())
    operations = sum(len(outcome.operations) for outcome in outcomes)
    calls = sum(outcome.counts.get("lin-calls", 0) for outcome in outcomes)
    txns = sum(outcome.counts.get("txns", 0) for outcome in outcomes)
    wall = sum(outcome.wall_s for outcome in outcomes)
    failed = sum(not outcome.ok for outcome in outcomes)
    write(
        f"{len(outcomes)} schedules, {operations} operations checked against {txns} logged txns, "
        f"{calls} through the linearizability checker, {wall:.0f} s; {failed} with violations"
    )
