"""Scripted scenarios compared against their checked-in transcripts, and crash points.

Each file in ``tests/sim/transcripts/`` is a script with the transcript it produced;
the test reruns the script and compares, so a protocol change is reviewed as a diff.
Accept a deliberate change with ``COORD_UPDATE_TRANSCRIPTS=1 pytest tests/sim/test_scenarios.py``.

The crash-point test reruns scenarios crashing the writing server at each durable
write in turn, before and after the write: every run must stay safe and converge.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from tests.sim.scenarios import TRANSCRIPTS, Scenario, ScriptError, parse_transcript, run_transcript
from tests.sim.sim import InvariantError, LivenessError

SCRIPTS = sorted(TRANSCRIPTS.glob("*.txt"))


@pytest.mark.parametrize("path", SCRIPTS, ids=[path.stem for path in SCRIPTS])
def test_transcript_is_unchanged(path: Path) -> None:
    text = path.read_text()
    try:
        new = run_transcript(text)
    except (InvariantError, LivenessError, ScriptError) as failure:
        pytest.fail(f"{path.name}: {type(failure).__name__}: {failure}", pytrace=False)
    if os.environ.get("COORD_UPDATE_TRANSCRIPTS"):
        path.write_text(new)
        return
    if new != text:
        diff = "".join(difflib.unified_diff(text.splitlines(True), new.splitlines(True), "checked-in", "now"))
        pytest.fail(f"{path.name} changed (COORD_UPDATE_TRANSCRIPTS=1 to accept):\n{diff}", pytrace=False)


def scenario_for(settings: dict[str, str]) -> Scenario:
    """A fresh scenario with a transcript's ``servers`` and ``config`` settings."""
    config = tuple((key, int(value)) for key, value in (item.split("=") for item in settings.get("config", "").split()))
    return Scenario(int(settings.get("servers", "3")), config=config)


def durable_writes(path: Path) -> int:
    """How many durable writes the scenario's clean run makes."""
    settings, script = parse_transcript(path.read_text())
    scenario = scenario_for(settings)
    for kind, line in script:
        if kind == "command":
            scenario.run(line)
    return scenario.sim.flushes


CRASH_SCRIPTS = SCRIPTS


@pytest.mark.parametrize("path", CRASH_SCRIPTS, ids=[path.stem for path in CRASH_SCRIPTS])
def test_crash_at_every_durable_write(path: Path) -> None:
    settings, script = parse_transcript(path.read_text())
    total = durable_writes(path)
    assert total > 5
    for point in range(1, total + 1):
        for after in (False, True):
            scenario = scenario_for(settings)
            scenario.sim.crash_at_flush = (point, after)
            try:
                for kind, line in script:
                    if kind == "command":
                        scenario.run(line)
            except ScriptError:
                pass  # the crash changed who leads or what is delivered: fine, safety is what counts
            assert any("durable write #" in line for line in scenario.sim.trace), "the crash point was not reached"
            try:
                scenario.sim.heal_and_settle()
            except (InvariantError, LivenessError) as failure:
                where = "after" if after else "before"
                pytest.fail(f"crash {where} durable write #{point}: {failure}", pytrace=False)


def test_election_completes_whatever_the_tick_phases() -> None:
    """The truncation scenario with clocks that tick in descending id order and never drift.

    Regression test for FINDINGS.md F2: a FOLLOWERINFO that reached a leader still
    finishing its election was lost, and phase-locked timers then livelocked.
    """
    _, script = parse_transcript((TRANSCRIPTS / "truncate_uncommitted.txt").read_text())
    scenario = Scenario(3, tick_phases=(30, 20, 10), clock_skew=0.0)
    try:
        for kind, line in script:
            if kind == "command":
                scenario.run(line)
    except ScriptError as failure:
        pytest.fail(str(failure).splitlines()[0], pytrace=False)
