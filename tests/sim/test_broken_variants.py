"""The simulator must catch deliberately broken cores (docs/correctness.md, "Simulation").

Each variant (tests/sim/broken.py) is a role class with one known-bad shortcut, given
to ``Peer(..., roles=...)``; the simulator's options name it (``bugs={...}``). For each, a scripted
scenario forces the bad interleaving: it must pass on the correct core and fail an
invariant on the broken one. Where random faults find the bug quickly too, a bounded
seed search (with the aggressive fault mix) must find a seed that fails with the bug
and passes without it — so the failure is the bug's, not some other finding's.
"""

from __future__ import annotations

import pytest

from tests.sim.catch_rates import ZAB_STEPS
from tests.sim.scenarios import Scenario, ScriptError, parse_transcript
from tests.sim.sim import InvariantError, LivenessError, SimOptions, run_seed

# Followers ACK proposals they have not made durable: the leader commits what only it holds.
ACK_BEFORE_FSYNC = """
# servers: 3
> elect
> propose a
> settle
> hold 1
> hold 2
> propose x
> run 1
"""

# The leader DIFFs where it must TRUNC: s2 keeps x (never committed) under the new epoch's y,
# and delivers it (ZOOKEEPER-1154). The same script as transcripts/truncate_uncommitted.txt.
SKIP_TRUNC = """
# servers: 3
> elect
> expect-leader 3
> propose a
> settle
> hold 3
> block 3->1
> propose x
> run 1
> crash 3
> release 3
> partition 2 | 1 3
> crash 1
> restart 1
> restart 3
> elect
> propose y
> settle
> heal
> settle
"""

# A leader that has not established its epoch delivers what a quorum *holds* (docs/correctness.md, rule 2).
# s3 leads epoch 2 with s1 and logs z alone. s2 (currentEpoch 1) syncs z from s3's epoch-3
# attempt but crashes before its new currentEpoch is durable; it rejoins s3's epoch-4
# attempt, whose broken leader counts {s3, s2} as holding z and delivers it. s3 dies; s1
# (currentEpoch 2) beats s2 (currentEpoch 1) and truncates z: a delivered txn is gone.
COUNT_OLD_EPOCH_ACKS = """
# servers: 3
> elect
> expect-leader 3
> propose a
> settle
> crash 2
> crash 3
> crash 1
> restart 1
> restart 3
> elect
> expect-leader 3
> block 3->1
> propose z
> run 1
> crash 1
> wait-role 3 LOOKING
> heal
> hold 2
> restart 2
> wait-pending 2 1
> flush 2
> wait-pending 2 2
> crash 2 keep 1
> restart 2
> wait-pending 2 1
> flush 2
> run 1
> crash 3
> crash 2
> release 2
> restart 2
> restart 1
> elect
"""

SCRIPTS = {
    "ack_before_fsync": ACK_BEFORE_FSYNC,
    "skip_trunc": SKIP_TRUNC,
    "count_old_epoch_acks": COUNT_OLD_EPOCH_ACKS,
}


def run_script(text: str, bugs: frozenset[str]) -> Scenario:
    """Run a script (then heal and settle) on cores with ``bugs``."""
    settings, script = parse_transcript(text.strip())
    scenario = Scenario(int(settings.get("servers", "3")), bugs=bugs)
    for kind, line in script:
        if kind == "command":
            scenario.run(line)
    scenario.check_converged()
    return scenario


@pytest.mark.parametrize("bug", sorted(SCRIPTS))
def test_scripted_scenario_passes_on_the_correct_core(bug: str) -> None:
    run_script(SCRIPTS[bug], frozenset())


@pytest.mark.parametrize("bug", sorted(SCRIPTS))
def test_scripted_scenario_catches_the_broken_variant(bug: str) -> None:
    try:
        run_script(SCRIPTS[bug], frozenset({bug}))
    except ScriptError as error:  # the script lost its way: not a detection
        pytest.fail(f"{bug}: the script did not reach its point: {error}", pytrace=False)
    except InvariantError as error:
        assert "invariant" in str(error)
        return
    pytest.fail(f"{bug}: every invariant held on the broken core", pytrace=False)


SEARCH_BOUND = {"ack_before_fsync": 5, "skip_trunc": 60, "count_old_epoch_acks": 400}
"""Seeds searched per variant (python -m tests.sim.catch_rates measures the catch rates)."""


@pytest.mark.parametrize("bug", sorted(SEARCH_BOUND))
def test_random_faults_catch_the_broken_variant(bug: str) -> None:
    """Seeds 0, 1, ... (aggressive mix with buggify crashes, 3 servers) until one fails only with the bug."""
    steps = ZAB_STEPS[bug]
    for seed in range(SEARCH_BOUND[bug]):
        try:
            run_seed(SimOptions.from_seed(seed, servers=3, aggressive=True, bugs=frozenset({bug})), steps)
        except (InvariantError, LivenessError):
            try:
                run_seed(SimOptions.from_seed(seed, servers=3, aggressive=True), steps)
            except (InvariantError, LivenessError):
                continue  # fails without the bug too: some other finding, not this bug's
            print(f"{bug}: caught by seed {seed}")
            return
    pytest.fail(f"{bug}: no seed in range({SEARCH_BOUND[bug]}) caught it", pytrace=False)
