"""The real ZAB cores of 3 and 5 servers under random faults, checked after every step.

Each seed picks its own fault mix (:meth:`SimOptions.from_seed`), runs ``STEPS`` steps
checking the invariants after each, then heals everything and requires progress.
``pytest tests/sim --seed N`` replays one seed; ``--soak`` runs many more, longer.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sim.sim import InvariantError, LivenessError, SimOptions, Simulation, run_seed

STEPS = 2_000
SEEDS_3 = 400
SEEDS_5 = 300
SOAK_STEPS = 20_000


def check_seed(options: SimOptions, steps: int) -> Simulation:
    """Run one seed; on failure, print only the report (seed, states, trace tail)."""
    try:
        return run_seed(options, steps)
    except (InvariantError, LivenessError) as failure:
        pytest.fail(f"{type(failure).__name__}: {failure}", pytrace=False)


@pytest.mark.parametrize("seed", range(SEEDS_3))
def test_three_servers_stay_consistent_and_recover(seed: int) -> None:
    check_seed(SimOptions.from_seed(seed, servers=3), STEPS)


@pytest.mark.parametrize("seed", range(SEEDS_5))
def test_five_servers_stay_consistent_and_recover(seed: int) -> None:
    check_seed(SimOptions.from_seed(seed, servers=5), STEPS)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_seed_replays_exactly(seed: int) -> None:
    servers = 3 if seed % 2 == 0 else 5
    first = run_seed(SimOptions.from_seed(seed, servers=servers), 1_000)
    second = run_seed(SimOptions.from_seed(seed, servers=servers), 1_000)
    assert first.trace == second.trace
    assert len(first.trace) > 1_000


def test_a_seed_replays_in_another_process() -> None:
    """Same trace under another hash seed: nothing may depend on set or dict order of strings."""
    here = hashlib.sha256("\n".join(run_seed(SimOptions.from_seed(7, servers=5), 1_000).trace).encode()).hexdigest()
    code = (
        "import hashlib; from tests.sim.sim import SimOptions, run_seed; "
        "print(hashlib.sha256('\\n'.join(run_seed(SimOptions.from_seed(7, servers=5), 1_000).trace).encode())"
        ".hexdigest())"
    )
    root = Path(__file__).resolve().parents[2]
    environment = {**os.environ, "PYTHONHASHSEED": "4242", "PYTHONPATH": str(root)}
    there = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=environment, capture_output=True, text=True, check=True
    )
    assert there.stdout.strip() == here


# Seeds that fail because of an open finding (FINDINGS.md): xfail, not skip, so that a
# fixed core shows them as XPASS.
@pytest.mark.soak
def test_soak(soak_seed: int) -> None:
    """Seeds 10,000-11,999 (tests/sim/conftest.py), odd ones with 3 servers, even ones with 5."""
    check_seed(SimOptions.from_seed(soak_seed, servers=3 if soak_seed % 2 else 5), SOAK_STEPS)
