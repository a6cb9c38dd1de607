"""Whole servers (:class:`~coord.server.core.ServerCore`) under random faults, with clients.

Each seed switches a random subset of fault kinds on (swarm testing,
:meth:`ServerSimOptions.from_seed`), runs ``STEPS`` steps checking the invariants of
:mod:`tests.sim.server_checks` after each, then heals everything and requires
progress. ``pytest tests/sim/test_server_sim.py --seed N`` replays seed N (3 and 5
servers); ``--soak`` adds many more, longer runs. A failure prints the seed, its fault
kinds and options, every server's and client's state, and the trace tail.

The simulator must also catch a broken server: :class:`EagerSyncCore` answers the
leader's own clients' ``sync`` as soon as the quorum round confirms the leadership,
without waiting until the leader applied its commit point (the stale read of
tests/fault/FINDINGS.md, F1, which the ZAB-only simulator could not see).

Running::

    pytest tests/sim/test_server_sim.py                         # CI: 600 + 400 seeds x 2,000 steps, the broken core
    pytest tests/sim/test_server_sim.py --seed 123              # replay seed 123 (3 and 5 servers)
    pytest tests/sim/test_server_sim.py --soak -k soak          # 2,000 seeds x 10,000 steps
    pytest tests/sim/test_server_sim.py --soak --seed 10001 -k soak   # replay one soak seed

In a Python shell::

    from tests.sim.servers import ServerSimOptions, ServerSimulation
    sim = ServerSimulation(ServerSimOptions.from_seed(123, servers=3))
    sim.run(2_000)          # checks after every step
    sim.heal_and_settle()   # then liveness and the final comparison
    print("\n".join(sim.trace[-200:]))

Findings in the core: tests/sim/SERVER_FINDINGS.md (S1-S4, all fixed), each with a regression test below.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from coord import protocol
from coord.pipeline import Pipeline, PipelineConfig
from coord.protocol import ConnectRequest, CreateRequest, PingRequest
from coord.tree import DataTree
from tests.sim.broken import EagerSyncCore
from tests.sim.servers import (
    InvariantError,
    LivenessError,
    ServerSimOptions,
    ServerSimulation,
    run_server_seed,
)

STEPS = 2_000
SEEDS_3 = 600
SEEDS_5 = 400
SOAK_STEPS = 10_000
BROKEN_SEEDS = 200
BROKEN_STEPS = 2_000
S1_SEED = 137  # 3 servers, 2,000 steps, strict: finding S1
S2_SEED = 5  # 3 servers, 2,000 steps, one-way partitions: finding S2
S4_SEED = 830  # 3 servers, 2,000 steps: finding S4


def check_seed(options: ServerSimOptions, steps: int) -> ServerSimulation:
    """Run one seed; on failure, print only the report (seed, fault kinds, states, trace tail)."""
    try:
        return run_server_seed(options, steps)
    except (InvariantError, LivenessError) as failure:
        pytest.fail(f"{type(failure).__name__}: {failure}", pytrace=False)


@pytest.mark.parametrize("seed", range(SEEDS_3))
def test_three_servers_with_clients_stay_consistent(seed: int) -> None:
    check_seed(ServerSimOptions.from_seed(seed, servers=3), STEPS)


@pytest.mark.parametrize("seed", range(SEEDS_5))
def test_five_servers_with_clients_stay_consistent(seed: int) -> None:
    check_seed(ServerSimOptions.from_seed(seed, servers=5), STEPS)


@pytest.mark.soak
def test_soak(soak_seed: int) -> None:
    """Seeds 10,000-11,999 (tests/sim/conftest.py), odd ones with 3 servers, even ones with 5."""
    check_seed(ServerSimOptions.from_seed(soak_seed, servers=3 if soak_seed % 2 else 5), SOAK_STEPS)


def test_the_runs_exercise_what_they_check() -> None:
    """A guard against a simulator that checks nothing: a few seeds together must produce
    acknowledged writes, synced reads, watch events, reads checked, expired sessions and
    restarts."""
    totals: dict[str, int] = {}
    for seed in range(10):
        summary = run_server_seed(ServerSimOptions.from_seed(seed, servers=3), STEPS).summary()
        for key, value in summary.items():
            totals[key] = totals.get(key, 0) + value
    for key in ("acked", "syncs_checked", "events_checked", "reads_checked", "expiries_checked", "sessions"):
        assert totals[key] > 0, (key, totals)
    assert totals["incarnations"] > 10 * 3, totals


@pytest.mark.parametrize("seed", [0, 1])
def test_a_seed_replays_exactly(seed: int) -> None:
    servers = 3 if seed % 2 == 0 else 5
    first = run_server_seed(ServerSimOptions.from_seed(seed, servers=servers), 1_000)
    second = run_server_seed(ServerSimOptions.from_seed(seed, servers=servers), 1_000)
    assert first.trace == second.trace
    assert len(first.trace) > 500


def test_a_seed_replays_in_another_process() -> None:
    """Same trace under another hash seed: nothing may depend on set or dict order of strings."""
    run = run_server_seed(ServerSimOptions.from_seed(7, servers=3), 1_000)
    here = hashlib.sha256("\n".join(run.trace).encode()).hexdigest()
    code = (
        "import hashlib; from tests.sim.servers import ServerSimOptions, run_server_seed; "
        "print(hashlib.sha256('\\n'.join(run_server_seed(ServerSimOptions.from_seed(7, servers=3), 1_000).trace)"
        ".encode()).hexdigest())"
    )
    root = Path(__file__).resolve().parents[2]
    environment = {**os.environ, "PYTHONHASHSEED": "4242", "PYTHONPATH": str(root)}
    there = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=environment, capture_output=True, text=True, check=True
    )
    assert there.stdout.strip() == here


# --- a deliberately broken server -------------------------------------------------------------


def test_random_faults_catch_a_leader_that_answers_sync_before_applying() -> None:
    """Seeds 0 .. BROKEN_SEEDS-1 (3 servers): some must fail invariant 3 with the broken core,
    and each of those must pass with the real one (the failure is the bug's)."""
    caught: list[int] = []
    other: list[str] = []
    for seed in range(BROKEN_SEEDS):
        options = ServerSimOptions.from_seed(seed, servers=3)
        try:
            run_server_seed(options, BROKEN_STEPS, EagerSyncCore)
        except (InvariantError, LivenessError) as failure:
            headline = str(failure).splitlines()[0]
            if "invariant 3" in headline:
                caught.append(seed)
            else:
                other.append(f"seed {seed}: {headline}")
    print(f"the broken sync was caught by {len(caught)} of {BROKEN_SEEDS} seeds: {caught}")
    assert caught, f"no seed in range({BROKEN_SEEDS}) caught the broken sync; other failures: {other}"
    for seed in caught:
        check_seed(ServerSimOptions.from_seed(seed, servers=3), BROKEN_STEPS)


# --- fixed findings (tests/sim/SERVER_FINDINGS.md): regression tests ----------------------------


def test_finding_s1_replies_stay_in_request_order_when_the_session_expires() -> None:
    """Minimal reproduction: a create in flight, the session times out, then a ping: the
    ping's SessionExpired answer leaves before the create's answer (replies out of order)."""
    pipeline = Pipeline(
        DataTree(),
        PipelineConfig(tick_ms=100, min_session_timeout_ms=200, max_session_timeout_ms=5_000),
        rng=random.Random(7),
        now_ms=1_000,
        epoch=1,
    )
    pipeline.open_connection(1, ConnectRequest(timeout_ms=1_000), 1_000)
    pipeline.committed(pipeline.take_output().proposals)
    pipeline.take_output()  # the handshake answer
    pipeline.request(1, 1, CreateRequest(path="/a"), 1_100)  # proposed, not committed yet
    assert len(pipeline.take_output().proposals) == 1
    pipeline.tick(2_100)  # the session times out while its create is in flight
    pipeline.take_output()
    pipeline.request(1, 2, PingRequest(), 2_200)
    answered = [protocol.decode_reply(protocol.decode_body(frame[4:]))[0] for _, frame in pipeline.take_output().frames]
    assert 2 not in answered, f"xid 2 answered while xid 1 is outstanding: {answered}"


def expect_finding(run: Callable[[], object], symptom: str) -> None:
    """Run; a failure must be the finding's ``symptom`` (anything else fails the test)."""
    try:
        run()
    except (InvariantError, LivenessError) as failure:
        headline = str(failure).splitlines()[0]
        if symptom not in headline:
            pytest.fail(f"not the finding ({symptom!r}): {failure}", pytrace=False)
        raise


def test_finding_s1_in_the_simulator() -> None:
    """The same, found by the simulator (strict: the tolerance of finding S1 switched off)."""
    options = ServerSimOptions.from_seed(S1_SEED, servers=3)
    expect_finding(lambda: run_server_seed(options, 2_000, known_findings=frozenset()), "replies out of order")


def test_finding_s2_one_way_partition() -> None:
    """A one-way partition (the follower's messages do not reach the leader, the leader's
    reach it): the follower keeps serving; its clients' writes, syncs and session touches
    vanish (invariant 7; invariant 5 fires too once a session expires early)."""
    options = ServerSimOptions.from_seed(S2_SEED, servers=3, one_way=True)
    expect_finding(lambda: run_server_seed(options, 2_000), "invariant 7")


def test_finding_s4_dropped_follower_is_told() -> None:
    """The leader drops a follower it did not hear during a partition; after the heal the
    follower must learn of it (its links close) instead of serving on while the leader
    ignores its clients' syncs and session touches (invariant 5 fired before the fix)."""
    sim = check_seed(ServerSimOptions.from_seed(S4_SEED, servers=3), STEPS)
    assert any("drops its link" in line for line in sim.trace)
