"""How long writes stop when the leader of a 3-server ensemble is SIGKILLed: coord and ZooKeeper 3.8.

Usage (from the repository root)::

    .venv/bin/python -m bench.failover                      # 5 runs of coord
    .venv/bin/python -m bench.failover --runs 5 --system both
    .venv/bin/python -m bench.failover --system zk --writers 8 --before 3

Each run starts a fresh ensemble (:func:`bench.coord_server.run_coord_ensemble` /
:func:`bench.zk_server.run_zookeeper_ensemble`, fsync on, loopback only) and runs a steady
write load on it: ``--writers`` writers, each with its own client session given all three
servers' addresses, each creating new 100-byte persistent znodes one at a time in a loop. An
error (connection loss, not-leader, timeout, ...) is counted and the writer goes on with the
next znode after a short pause (10 ms doubling to 50 ms while errors repeat); nothing is
retried under the same name, so every acknowledged create is one distinct znode. Once every
writer has written and ``--before`` seconds of steady load have passed, the leader (per
``coord status`` / ``srvr``) is SIGKILLed; the load goes on until every writer has had a write
acknowledged again, plus ``--settle`` seconds, or until ``--after`` seconds after the kill.

Per run it reports, counting from just before the SIGKILL:

- ``resume_s``: until the first acknowledged write that was *issued after* the kill
  (writes resume: a write issued after the kill needs the new leader);
- ``all_resumed_s``: until every writer has had such a write acknowledged;
- ``election_s``: until the status of the survivors shows one leader and the other following
  (polled every 20 ms);
- ``max_gap_s``: the longest time between two consecutive acknowledged writes (all writers
  together) over the whole load, and ``steady_gap_s``, the same before the kill, as a baseline;
- the errors the writers saw after the kill, by type, and where each writer was connected;
- ``lost``: acknowledged creates missing afterwards (read back after a ``sync`` through a fresh
  session) — this must be 0;
- for coord, ``sync timeouts``: server log lines of a leader/follower handshake that ran out of
  ``init_limit_ticks`` (each stuck round costs 2 s).

A run whose writes have not resumed ``--after`` seconds after the kill is reported as ``never``
and counts as an infinitely long outage in the median, min and max. ``--logs DIR`` keeps every
run's server logs.

ZooKeeper is driven by **kazoo** (one ``KazooClient`` and one thread per writer, synchronous
creates with a timeout); coord by our trio client (one session and one trio task per writer).
Both clients reconnect by themselves; how fast they try again is part of what is measured (kazoo
goes round its shuffled host list, then backs off from 0.1 s). The ensembles use their usual
timing: coord ``tick_ms=100, init_limit_ticks=20, sync_limit_ticks=5``; ZooKeeper
``tickTime=2000, initLimit=10, syncLimit=5`` (its sample config). Sessions ask for 10 s.

The table shows every run, then per system the median, min and max. Everything goes to
``bench/results/failover-YYYYmmdd-HHMMSS.json`` (git-ignored). Exit status: 0 if writes resumed
in every run and nothing acknowledged was lost, 1 otherwise, 130 on Ctrl-C or SIGTERM (servers
are stopped and temp dirs removed in every case).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import itertools
import json
import logging
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as `python bench/failover.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from bench.coord_server import CoordEnsemble, CoordNotAvailableError, CoordStartError, run_coord_ensemble
from bench.zk_server import (
    ZooKeeperEnsemble,
    ZooKeeperMember,
    ZooKeeperNotInstalledError,
    ZooKeeperStartError,
    run_zookeeper_ensemble,
)

if TYPE_CHECKING:
    from kazoo.client import KazooClient

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent
COORD = "coord"
ZOOKEEPER = "zookeeper"
ROOT = "/failover"
VALUE = (b"coord-failover-value-" * 5)[:100]
ERROR_PAUSE_FIRST = 0.01
ERROR_PAUSE_MAX = 0.05
POLL_INTERVAL = 0.02


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Bounds of one run; every loop of the benchmark is bounded by these.

    Attributes:
        writers: Concurrent writers (one session each).
        before: Seconds of steady load before the kill (after every writer has written once).
        after: Longest the load goes on after the kill (a run where writes have not resumed by
            then is reported as not resumed).
        settle: Seconds of load after every writer has resumed.
        op_timeout: Bound on one create; a create that takes longer counts as an error (``Timeout``).
        max_ops: Most creates one writer issues in a run.
        start_timeout: Bound on connecting every writer and seeing a first write from each.
        session_timeout: Session timeout the clients ask for, seconds.
    """

    writers: int = 4
    before: float = 2.0
    after: float = 30.0
    settle: float = 1.0
    op_timeout: float = 10.0
    max_ops: int = 200_000
    start_timeout: float = 30.0
    session_timeout: float = 10.0

    @property
    def budget(self) -> float:
        """Wall-clock bound on one writer's whole life in a run (connect to close)."""
        return self.start_timeout + self.before + self.after + self.settle + self.op_timeout + 30.0


@dataclass(frozen=True, slots=True)
class Write:
    """One create: when it was issued and completed (``time.monotonic()``), and its error type (None: acknowledged)."""

    writer: int
    index: int
    issued: float
    done: float
    error: str | None


@dataclass(slots=True, kw_only=True)
class RunResult:
    """What one failover run measured (seconds are from just before the SIGKILL; None: did not happen)."""

    system: str
    run: int
    killed: int | None = None
    new_leader: int | None = None
    writers_on: list[str] = field(default_factory=list)
    steady_ops_per_s: float = 0.0
    resume_s: float | None = None
    first_ack_s: float | None = None
    all_resumed_s: float | None = None
    election_s: float | None = None
    max_gap_s: float | None = None
    steady_gap_s: float | None = None
    load_after_kill_s: float | None = None
    acknowledged: int = 0
    errors_after_kill: dict[str, int] = field(default_factory=dict)
    errors_total: int = 0
    reconnect_failures: dict[str, int] = field(default_factory=dict)
    lost: int | None = None
    verify_error: str | None = None
    sync_timeouts: int | None = None
    failure: str | None = None
    server_log_notes: list[str] = field(default_factory=list)

    @property
    def killed_leader(self) -> bool:
        """True if the run got as far as killing the leader."""
        return self.killed is not None

    @property
    def ok(self) -> bool:
        """Writes resumed, nothing acknowledged was lost, and the run did not fail otherwise."""
        return self.failure is None and self.resume_s is not None and self.lost == 0 and self.verify_error is None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for the JSON report."""
        return asdict(self)


def analyse(writes: Sequence[Write], killed_at: float, load_end: float, writers: int) -> dict[str, Any]:
    """The failover metrics of one run from its writes, the kill time and the end of the load.

    Args:
        writes: Every create of the run, any order.
        killed_at: ``time.monotonic()`` just before the SIGKILL.
        load_end: ``time.monotonic()`` when the writers were told to stop; the time from the last
            acknowledged write to it counts as a gap (so a run whose writes never resume shows a
            gap as long as the load went on after the kill).
        writers: Number of writers (for ``all_resumed_s``: None unless every one resumed).

    Returns:
        ``resume_s``, ``first_ack_s``, ``all_resumed_s``, ``max_gap_s``, ``steady_gap_s``,
        ``steady_ops_per_s``, ``load_after_kill_s``, ``acknowledged``, ``errors_after_kill``,
        ``errors_total`` (times in seconds, rounded to 0.1 ms; None when it never happened).
    """

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    acked = sorted(write.done for write in writes if write.error is None)
    after_issue = [write for write in writes if write.error is None and write.issued >= killed_at]
    resume = min((write.done for write in after_issue), default=None)
    first_ack = next((done for done in acked if done >= killed_at), None)
    per_writer: dict[int, float] = {}
    for write in after_issue:
        per_writer[write.writer] = min(per_writer.get(write.writer, write.done), write.done)
    all_resumed = max(per_writer.values()) if len(per_writer) == writers else None
    timeline = [*acked, max(load_end, acked[-1])] if acked else []
    gaps = [later - earlier for earlier, later in itertools.pairwise(timeline)]
    before = [done for done in acked if done < killed_at]
    steady_gaps = [later - earlier for earlier, later in itertools.pairwise(before)]
    steady_rate = (len(before) - 1) / (before[-1] - before[0]) if len(before) > 1 and before[-1] > before[0] else 0.0
    return {
        "resume_s": rounded(None if resume is None else resume - killed_at),
        "first_ack_s": rounded(None if first_ack is None else first_ack - killed_at),
        "all_resumed_s": rounded(None if all_resumed is None else all_resumed - killed_at),
        "max_gap_s": rounded(max(gaps, default=None)),
        "steady_gap_s": rounded(max(steady_gaps, default=None)),
        "steady_ops_per_s": round(steady_rate, 1),
        "load_after_kill_s": rounded(load_end - killed_at),
        "acknowledged": len(acked),
        "errors_after_kill": dict(Counter(write.error for write in writes if write.error and write.done >= killed_at)),
        "errors_total": sum(1 for write in writes if write.error),
    }


def _node(writer: int, index: int) -> str:
    return f"{ROOT}/w{writer}/n{index:07d}"


def _pause(consecutive_errors: int) -> float:
    return min(ERROR_PAUSE_MAX, ERROR_PAUSE_FIRST * 2 ** max(0, consecutive_errors - 1))


class _Progress:
    """Shared state of the writers of one run; written from kazoo threads or trio tasks, read by the driver."""

    def __init__(self, writers: int) -> None:
        self.writes: list[list[Write]] = [[] for _ in range(writers)]
        """Per writer, its creates in order (each list appended to by its own writer only)."""
        self.killed_at: float | None = None
        self.load_ended_at: float | None = None
        self.addresses: list[str | None] = [None] * writers
        """Per writer, ``host:port`` of the server its first session went to."""
        self.reconnect_failures: Counter[str] = Counter()
        self.first_reconnect_failure: str | None = None
        self.stopped = threading.Event()
        """Set when the writers are to stop (checked before every create; kazoo writers also wait on it)."""

    def note_reconnect_failure(self, writer: int, error: BaseException) -> None:
        """A writer could not open a session (or prepare its parent znode); count it by type."""
        self.reconnect_failures[type(error).__name__] += 1
        if self.first_reconnect_failure is None:
            self.first_reconnect_failure = f"writer {writer}: {_describe(error)}"

    def acked_by_all(self) -> bool:
        """True once every writer has had a create acknowledged."""
        return all(any(write.error is None for write in writes) for writes in self.writes)

    def resumed_by(self, count: int) -> bool:
        """True once ``count`` writers have had a create acknowledged that they issued after the kill."""
        killed_at = self.killed_at
        if killed_at is None:
            return False
        resumed = sum(any(w.error is None and w.issued >= killed_at for w in writes) for writes in self.writes)
        return resumed >= count

    def resumed_by_all(self) -> bool:
        """True once every writer has resumed."""
        return self.resumed_by(len(self.writes))

    def acked_paths(self, writer: int) -> set[str]:
        """Paths of one writer's acknowledged creates."""
        return {_node(writer, write.index) for write in self.writes[writer] if write.error is None}

    def all_writes(self) -> list[Write]:
        """Every writer's creates, in one list."""
        return [write for writes in self.writes for write in writes]


def _roles_of_writers(progress: _Progress, addresses: dict[int, str], roles: dict[int, str]) -> list[str]:
    """Per writer, ``N (role)`` of the server it was connected to at the kill."""
    described = []
    for address in progress.addresses:
        server_id = next((sid for sid, member in addresses.items() if member == address), None)
        described.append(f"{server_id} ({roles.get(server_id, '?')})" if server_id else f"{address} (?)")
    return described


def _settled_leader(roles: dict[int, str]) -> int | None:
    """The leader's id if the running servers show one leader and every other following, else None."""
    running = {server_id: role for server_id, role in roles.items() if role != "down"}
    leaders = [server_id for server_id, role in running.items() if role == "leader"]
    if len(leaders) == 1 and all(role == "follower" for sid, role in running.items() if sid != leaders[0]):
        return leaders[0]
    return None


def _finish(result: RunResult, progress: _Progress, settings: Settings) -> list[Write]:
    """Fill ``result`` from the writes (if the kill happened) and return them."""
    writes = progress.all_writes()
    if progress.killed_at is not None:
        load_end = progress.load_ended_at or time.monotonic()
        _fill(result, analyse(writes, progress.killed_at, load_end, settings.writers))
        if result.resume_s is None and result.failure is None:
            result.failure = f"writes did not resume within {result.load_after_kill_s:.1f}s of the kill"
    result.reconnect_failures = dict(progress.reconnect_failures)
    if progress.first_reconnect_failure:
        result.server_log_notes.append(f"client, first failed (re)connect: {progress.first_reconnect_failure}")
    if result.lost and result.failure is None:
        result.failure = f"{result.lost} acknowledged creates missing afterwards"
    return writes


# --------------------------------------------------------------------------- coord (trio client)


async def _coord_writer(connect_string: str, writer: int, progress: _Progress, settings: Settings) -> None:
    """One coord writer: its own session, creates in a loop until stopped (bounded by time and count).

    A session that expires is replaced by a new one (the failed create counts as a ``SessionExpiredError``).
    """
    import client

    retry = client.Retry(max_tries=50, delay=0.01, max_delay=0.1)
    index = 0
    consecutive = 0
    hard_deadline = time.monotonic() + settings.budget
    records = progress.writes[writer]
    with trio.move_on_at(trio.current_time() + settings.budget):
        while index < settings.max_ops and time.monotonic() < hard_deadline and not progress.stopped.is_set():
            try:
                async with client.connect(connect_string, session_timeout=settings.session_timeout) as zk:
                    await retry(zk.ensure_path, f"{ROOT}/w{writer}")
                    if progress.addresses[writer] is None:
                        address = zk.server_address
                        progress.addresses[writer] = f"{address[0]}:{address[1]}" if address else None
                    while index < settings.max_ops and time.monotonic() < hard_deadline:
                        if progress.stopped.is_set():
                            return
                        issued = time.monotonic()
                        error: str | None = None
                        with trio.move_on_after(settings.op_timeout) as scope:
                            try:
                                await zk.create(_node(writer, index), VALUE)
                            except client.SessionExpiredError:
                                records.append(Write(writer, index, issued, time.monotonic(), "SessionExpiredError"))
                                index += 1
                                raise
                            except Exception as caught:  # whatever the client raises: count it by type
                                error = type(caught).__name__
                        if scope.cancelled_caught:
                            error = "Timeout"
                        records.append(Write(writer, index, issued, time.monotonic(), error))
                        index += 1
                        if error is None:
                            consecutive = 0
                        else:
                            consecutive += 1
                            await trio.sleep(_pause(consecutive))
            except client.SessionExpiredError:
                await trio.sleep(ERROR_PAUSE_FIRST)  # and open a new session
            except Exception as caught:  # connecting or ensure_path failed: count it, try again (bounded)
                progress.note_reconnect_failure(writer, caught)
                await trio.sleep(ERROR_PAUSE_MAX)


async def _coord_verify(connect_string: str, progress: _Progress, writers: int) -> int:
    """Acknowledged creates missing from the ensemble, read through a fresh session after a ``sync``."""
    import client

    retry = client.Retry(max_tries=100, delay=0.05, max_delay=0.5)
    lost = 0
    async with client.connect(connect_string, session_timeout=10.0) as zk:
        for writer in range(writers):
            parent = f"{ROOT}/w{writer}"
            await retry(zk.sync, parent)
            children = await retry(zk.get_children, parent)
            present = {f"{parent}/{name}" for name in children}
            lost += len(progress.acked_paths(writer) - present)
    return lost


async def _coord_run(ensemble: CoordEnsemble, settings: Settings, result: RunResult, progress: _Progress) -> None:
    """One failover run on a running coord ensemble: load, kill, wait for writes to resume, check."""
    connect_string = ensemble.connect_string
    addresses = {sid: ensemble.client_address(sid) for sid in ensemble.server_ids}
    async with trio.open_nursery() as nursery:
        for writer in range(settings.writers):
            nursery.start_soon(_coord_writer, connect_string, writer, progress, settings)
        try:
            with trio.fail_after(settings.start_timeout):
                while not progress.acked_by_all():
                    await trio.sleep(POLL_INTERVAL)
            await trio.sleep(settings.before)
            roles = await trio.to_thread.run_sync(ensemble.roles)
            leader = _settled_leader(roles)
            if leader is None:
                raise RuntimeError(f"no clear leader before the kill: roles {roles}")
            result.killed = leader
            result.writers_on = _roles_of_writers(progress, addresses, roles)
            progress.killed_at = killed_at = await trio.to_thread.run_sync(ensemble.kill, leader)
            deadline = killed_at + settings.after
            while time.monotonic() < deadline:  # election poll; the writers keep going meanwhile
                new_leader = _settled_leader(await trio.to_thread.run_sync(lambda: ensemble.roles(timeout=0.5)))
                if new_leader is not None:
                    result.election_s = round(time.monotonic() - killed_at, 4)
                    result.new_leader = new_leader
                    break
                await trio.sleep(POLL_INTERVAL)
            while time.monotonic() < deadline and not progress.resumed_by_all():
                await trio.sleep(POLL_INTERVAL)
            if progress.resumed_by_all():
                await trio.sleep(min(settings.settle, max(0.0, deadline - time.monotonic())))
        finally:
            progress.load_ended_at = time.monotonic()
            progress.stopped.set()
            # Writers return at their next create; bound the wait in case a close hangs.
            nursery.cancel_scope.deadline = trio.current_time() + settings.op_timeout + 15.0
    if not progress.resumed_by(1):
        return  # no leader to read back from; the run is reported as not resumed
    try:
        with trio.fail_after(60.0):
            result.lost = await _coord_verify(connect_string, progress, settings.writers)
    except Exception as error:
        result.verify_error = _describe(error)


async def _coord_run_with_signals(
    ensemble: CoordEnsemble, settings: Settings, result: RunResult, progress: _Progress
) -> None:
    """:func:`_coord_run`, ended cleanly by SIGTERM or Ctrl-C (raises KeyboardInterrupt)."""
    terminated = False
    try:
        with trio.open_signal_receiver(signal.SIGTERM) as received:
            async with trio.open_nursery() as nursery:

                async def cancel_on_sigterm() -> None:
                    nonlocal terminated
                    async for _ in received:
                        terminated = True
                        nursery.cancel_scope.cancel()

                nursery.start_soon(cancel_on_sigterm)
                await _coord_run(ensemble, settings, result, progress)
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from None
        raise
    if terminated:
        raise KeyboardInterrupt


SYNC_TIMEOUT_MARKERS: tuple[str, ...] = ("not synchronised with", "epoch not established")
"""coord log phrases of a leader/follower handshake that ran out of ``init_limit_ticks``."""


def _scan_coord_logs(ensemble: CoordEnsemble, result: RunResult) -> None:
    """Count handshake timeouts in the coord server logs, and keep lines that look like trouble."""
    timeouts = 0
    trouble = []
    for member in ensemble.members.values():
        if not member.log_path.is_file():
            continue
        for line in member.log_path.read_text(errors="replace").splitlines():
            if any(marker in line for marker in SYNC_TIMEOUT_MARKERS):
                timeouts += 1
            if "Traceback" in line or " ERROR " in line or " CRITICAL " in line:
                trouble.append(f"server {member.server_id}: {line.strip()}")
    result.sync_timeouts = timeouts
    result.server_log_notes.extend(trouble[:20])


def _exited(ensemble: CoordEnsemble | ZooKeeperEnsemble) -> list[str]:
    """Servers that exited by themselves (not killed by us)."""
    return [
        f"server {member.server_id} exited with code {member.process.returncode}"
        for member in ensemble.members.values()
        if member.process is not None and member.process.poll() is not None
    ]


def run_coord_once(run: int, settings: Settings, logs_dir: Path | None = None) -> tuple[RunResult, list[Write]]:
    """One coord failover run on a fresh 3-server ensemble; its server logs are copied to ``logs_dir`` if given."""
    result = RunResult(system=COORD, run=run)
    progress = _Progress(settings.writers)
    with run_coord_ensemble(3) as ensemble:
        try:
            trio.run(_coord_run_with_signals, ensemble, settings, result, progress)
        except KeyboardInterrupt:
            raise
        except Exception as error:
            traceback.print_exc()
            result.failure = _describe(error)
        writes = _finish(result, progress, settings)
        _scan_coord_logs(ensemble, result)
        exited = _exited(ensemble)
        if exited:
            result.failure = "; ".join([*exited, *([result.failure] if result.failure else [])])
        if not result.ok:
            result.server_log_notes.append(ensemble.log_tails(lines=40))
        if logs_dir is not None:
            _keep_logs(logs_dir / f"{result.system}-run{run}", ensemble)
    return result, writes


# --------------------------------------------------------------------------- ZooKeeper (kazoo)


def _kazoo_writer(zk: KazooClient, writer: int, progress: _Progress, settings: Settings) -> None:
    """One kazoo writer thread: synchronous creates with a timeout, in a loop until stopped (bounded)."""
    index = 0
    consecutive = 0
    hard_deadline = time.monotonic() + settings.budget
    records = progress.writes[writer]
    while index < settings.max_ops and time.monotonic() < hard_deadline and not progress.stopped.is_set():
        issued = time.monotonic()
        error: str | None = None
        try:
            zk.create_async(_node(writer, index), VALUE).get(timeout=settings.op_timeout)
        except Exception as caught:  # kazoo's errors, and its handler's timeout
            error = "Timeout" if type(caught).__name__ == "KazooTimeoutError" else type(caught).__name__
        records.append(Write(writer, index, issued, time.monotonic(), error))
        index += 1
        if error is None:
            consecutive = 0
        else:
            consecutive += 1
            progress.stopped.wait(_pause(consecutive))


def _kazoo_verify(connect_string: str, progress: _Progress, writers: int) -> int:
    """Acknowledged creates missing from the ensemble, read through a fresh session after a ``sync``."""
    from kazoo.client import KazooClient
    from kazoo.retry import KazooRetry

    zk = KazooClient(hosts=connect_string, timeout=10.0)
    zk.start(timeout=30)
    try:
        retry = KazooRetry(max_tries=100, delay=0.05, max_delay=0.5)
        lost = 0
        for writer in range(writers):
            parent = f"{ROOT}/w{writer}"
            retry(zk.sync, parent)
            present = {f"{parent}/{name}" for name in retry(zk.get_children, parent)}
            lost += len(progress.acked_paths(writer) - present)
        return lost
    finally:
        zk.stop()
        zk.close()


def _kazoo_run(ensemble: ZooKeeperEnsemble, settings: Settings, result: RunResult, progress: _Progress) -> None:
    """One failover run on a running ZooKeeper ensemble: load, kill, wait for writes to resume, check."""
    from kazoo.client import KazooClient

    from bench.load import kazoo_server_address

    connect_string = ensemble.connect_string
    addresses = {sid: ensemble.client_address(sid) for sid in ensemble.server_ids}
    clients: list[KazooClient] = []
    threads: list[threading.Thread] = []
    try:
        for writer in range(settings.writers):
            zk = KazooClient(hosts=connect_string, timeout=settings.session_timeout)
            clients.append(zk)
            zk.start(timeout=settings.start_timeout)
            zk.ensure_path(f"{ROOT}/w{writer}")
            progress.addresses[writer] = kazoo_server_address(zk)
        for writer, zk in enumerate(clients):
            thread = threading.Thread(
                target=_kazoo_writer, args=(zk, writer, progress, settings), name=f"writer-{writer}", daemon=True
            )
            threads.append(thread)
            thread.start()
        deadline = time.monotonic() + settings.start_timeout
        while not progress.acked_by_all():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not every writer wrote within {settings.start_timeout}s")
            time.sleep(POLL_INTERVAL)
        time.sleep(settings.before)
        roles = ensemble.roles()
        leader = _settled_leader(roles)
        if leader is None:
            raise RuntimeError(f"no clear leader before the kill: roles {roles}")
        result.killed = leader
        result.writers_on = _roles_of_writers(progress, addresses, roles)
        progress.killed_at = killed_at = ensemble.kill(leader)
        deadline = killed_at + settings.after
        while time.monotonic() < deadline:  # election poll; the writer threads keep going meanwhile
            new_leader = _settled_leader(ensemble.roles(timeout=0.5))
            if new_leader is not None:
                result.election_s = round(time.monotonic() - killed_at, 4)
                result.new_leader = new_leader
                break
            time.sleep(POLL_INTERVAL)
        while time.monotonic() < deadline and not progress.resumed_by_all():
            time.sleep(POLL_INTERVAL)
        if progress.resumed_by_all():
            time.sleep(min(settings.settle, max(0.0, deadline - time.monotonic())))
    finally:
        progress.load_ended_at = time.monotonic()
        progress.stopped.set()
        for thread in threads:
            thread.join(timeout=settings.op_timeout + 5.0)
        for zk in clients:
            with contextlib.suppress(Exception):
                zk.stop()
                zk.close()
    if not progress.resumed_by(1):
        return
    try:
        result.lost = _kazoo_verify(connect_string, progress, settings.writers)
    except Exception as error:
        result.verify_error = _describe(error)


def run_zookeeper_once(run: int, settings: Settings, logs_dir: Path | None = None) -> tuple[RunResult, list[Write]]:
    """One ZooKeeper failover run on a fresh 3-server ensemble; its logs are copied to ``logs_dir`` if given."""
    result = RunResult(system=ZOOKEEPER, run=run)
    progress = _Progress(settings.writers)
    with run_zookeeper_ensemble(3) as ensemble:
        try:
            _kazoo_run(ensemble, settings, result, progress)
        except KeyboardInterrupt:
            raise
        except Exception as error:
            traceback.print_exc()
            result.failure = _describe(error)
        writes = _finish(result, progress, settings)
        exited = _exited(ensemble)
        if exited:
            result.failure = "; ".join([*exited, *([result.failure] if result.failure else [])])
        if not result.ok:
            result.server_log_notes.append(ensemble.log_tails(lines=40))
        if logs_dir is not None:
            _keep_logs(logs_dir / f"{result.system}-run{run}", ensemble)
    return result, writes


# --------------------------------------------------------------------------- report


def _keep_logs(target: Path, ensemble: CoordEnsemble | ZooKeeperEnsemble) -> None:
    """Copy every server's log files into ``target/server-ID/`` (before the temp dir is deleted)."""
    for server_id, member in ensemble.members.items():
        paths = member.log_paths if isinstance(member, ZooKeeperMember) else (member.log_path,)
        destination = target / f"server-{server_id}"
        destination.mkdir(parents=True, exist_ok=True)
        for path in paths:
            if path.is_file():
                shutil.copy2(path, destination / path.name)


def _fill(result: RunResult, metrics: dict[str, Any]) -> None:
    for key, value in metrics.items():
        setattr(result, key, value)


def _describe(error: BaseException) -> str:
    """``Type: message`` of an error, looking inside exception groups (trio wraps errors in them)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}"


def _seconds(value: float | None, never: str = "never") -> str:
    """Seconds with 3 decimals; ``never`` for ``inf`` (did not happen within the run), ``-`` for None."""
    if value is None:
        return "-"
    return never if math.isinf(value) else f"{value:.3f}"


CENSORED_METRICS: tuple[str, ...] = ("resume_s", "all_resumed_s", "election_s", "max_gap_s")
"""Metrics that are at least the whole load after the kill when writes did not resume in the run."""

SUMMARY_METRICS: tuple[str, ...] = (*CENSORED_METRICS, "steady_gap_s")
"""Metrics summarised per system (median, min, max over the runs)."""


def metric_value(result: RunResult, metric: str) -> float | None:
    """A run's value of ``metric`` for the summary: ``inf`` for "not within the run" (writes did not
    resume, so the outage lasted at least the rest of the run), None if the run never killed a leader."""
    if not result.killed_leader:
        return None
    value = getattr(result, metric)
    if metric in CENSORED_METRICS and (value is None or result.resume_s is None):
        return math.inf
    return value


def summarise(results: Sequence[RunResult], metric: str) -> dict[str, float | int | None]:
    """Median, min and max of ``metric`` over the runs that killed a leader.

    A run whose writes never resumed counts as an infinitely long outage (``inf``): it still
    moves the median, and a median or max that lands on one is ``inf``.
    """
    values = [value for result in results if (value := metric_value(result, metric)) is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "runs": 0, "not_resumed": 0}
    return {
        "median": round(statistics.median(values), 4) if not math.isinf(statistics.median(values)) else math.inf,
        "min": min(values),
        "max": max(values),
        "runs": len(values),
        "not_resumed": sum(math.isinf(value) for value in values),
    }


def _json_safe(summary: dict[str, float | int | None]) -> dict[str, float | int | None]:
    """``inf`` (not valid JSON) becomes None; ``not_resumed`` says how many runs that was."""
    return {key: None if isinstance(value, float) and math.isinf(value) else value for key, value in summary.items()}


def format_report(results: Sequence[RunResult], after: float) -> str:
    """Per-run table, then per system median / min / max of each metric, then coord / ZooKeeper medians.

    Args:
        results: Every run, in the order they ran.
        after: The ``--after`` bound (how long a run waited for writes to resume), for the legend.
    """
    header = (
        "system",
        "run",
        "killed",
        "new",
        "writers on",
        "steady ops/s",
        "resume s",
        "all resumed s",
        "election s",
        "max gap s",
        "steady gap s",
        "errors after kill",
        "sync timeouts",
        "lost",
    )
    rows = []
    for result in results:
        errors = ", ".join(f"{name} {count}" for name, count in sorted(result.errors_after_kill.items())) or "-"
        leader_side = sum("(leader)" in where for where in result.writers_on)
        rows.append(
            (
                result.system,
                str(result.run),
                str(result.killed or "-"),
                str(result.new_leader or "-"),
                f"{leader_side}/{len(result.writers_on)} on leader" if result.writers_on else "-",
                f"{result.steady_ops_per_s:,.0f}",
                *(_seconds(metric_value(result, metric)) for metric in CENSORED_METRICS[:3]),
                _seconds(metric_value(result, "max_gap_s"), never=f">{after:g}"),
                _seconds(result.steady_gap_s),
                errors,
                "-" if result.sync_timeouts is None else str(result.sync_timeouts),
                "-" if result.lost is None else str(result.lost),
            )
        )
    lines = _table(header, rows)
    lines.append("")
    summary_header = ("system", "metric", "median", "min", "max", "runs", "never")
    summary_rows = []
    systems = list(dict.fromkeys(result.system for result in results))
    for system in systems:
        mine = [result for result in results if result.system == system]
        for metric in SUMMARY_METRICS:
            stats = summarise(mine, metric)
            never = f">{after:g}" if metric == "max_gap_s" else "never"
            summary_rows.append(
                (
                    system,
                    metric,
                    _seconds(stats["median"], never),
                    _seconds(stats["min"], never),
                    _seconds(stats["max"], never),
                    f"{stats['runs']}/{len(mine)}",
                    str(stats["not_resumed"]),
                )
            )
    lines.extend(_table(summary_header, summary_rows))
    lines.append("")
    lines.append(
        f'"never" (a max gap of ">{after:g}"): writes had not resumed {after:g}s after the kill, when the run stopped '
        'waiting; it counts as an infinitely long outage in the median, min and max ("never" column: how many runs).'
    )
    lines.append(
        '"sync timeouts": coord log lines of a leader/follower handshake that ran out of init_limit_ticks '
        "(whole run, start-up included)."
    )
    if set(systems) == {COORD, ZOOKEEPER}:
        for metric in ("resume_s", "max_gap_s"):
            coord = summarise([r for r in results if r.system == COORD], metric)["median"]
            zk = summarise([r for r in results if r.system == ZOOKEEPER], metric)["median"]
            if coord is not None and zk:
                ratio = "inf" if math.isinf(coord) else f"{coord / zk:.2f}x"
                lines.append(f"median {metric}: coord / ZooKeeper = {ratio} (below 1: coord recovers faster)")
    return "\n".join(lines)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return " | ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(header), "-+-".join("-" * width for width in widths), *(line(row) for row in rows)]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per system, each on a fresh ensemble")
    parser.add_argument("--system", choices=("coord", "zk", "both"), default="coord", help="what to measure")
    parser.add_argument("--writers", type=int, default=defaults.writers, help="concurrent writers (sessions)")
    parser.add_argument("--before", type=float, default=defaults.before, help="seconds of steady load before the kill")
    parser.add_argument("--after", type=float, default=defaults.after, help="longest load after the kill, seconds")
    parser.add_argument("--settle", type=float, default=defaults.settle, help="load after every writer resumed")
    parser.add_argument("--op-timeout", type=float, default=defaults.op_timeout, help="bound on one create, seconds")
    parser.add_argument("--max-ops", type=int, default=defaults.max_ops, help="most creates per writer and run")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="directory for the JSON report")
    parser.add_argument("--logs", type=Path, default=None, help="copy every run's server logs into this directory")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the clients' own log warnings")
    args = parser.parse_args(argv)
    if args.runs <= 0 or args.writers <= 0 or args.max_ops <= 0:
        parser.error("--runs, --writers and --max-ops must be positive")
    if min(args.before, args.after, args.op_timeout) <= 0 or args.settle < 0:
        parser.error("--before, --after and --op-timeout must be positive, --settle not negative")
    return args


def _terminate_like_ctrl_c(signum: int, frame: object) -> None:
    """SIGTERM handler outside trio: clean up exactly as on Ctrl-C (stop servers, delete temp dirs)."""
    raise KeyboardInterrupt


def _command_output(command: list[str]) -> str | None:
    """First line of a command's output, or None if it cannot run."""
    try:
        done = subprocess.run(
            command, capture_output=True, timeout=10, check=False, cwd=REPO_ROOT, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stdout or done.stderr).decode(errors="replace").strip().splitlines()
    return lines[0] if done.returncode == 0 and lines else None


def _progress_line(result: RunResult) -> str:
    """One line per finished run, on stderr while the benchmark goes on."""
    errors = ", ".join(f"{name} {count}" for name, count in sorted(result.errors_after_kill.items())) or "none"
    reconnects = ", ".join(f"{name} {count}" for name, count in sorted(result.reconnect_failures.items()))
    extra = f", failed (re)connects: {reconnects}" if reconnects else ""
    if result.sync_timeouts:
        extra += f", {result.sync_timeouts} sync timeouts in the server logs"
    failure = f"  FAILED: {result.failure}" if result.failure else ""
    values = {}
    for metric in CENSORED_METRICS:
        text = _seconds(metric_value(result, metric))
        values[metric] = f"{text}s" if text[0].isdigit() else text
    return (
        f"  {result.system:<9} run {result.run}: killed {result.killed}, new leader {result.new_leader}, "
        f"resume {values['resume_s']}, all {values['all_resumed_s']}, election {values['election_s']}, "
        f"max gap {values['max_gap_s']}, errors after kill: {errors}{extra}, lost {result.lost}{failure}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the failover benchmark; return the process exit status."""
    args = _parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate_like_ctrl_c)
    if not args.verbose:  # the clients warn on every dropped connection; the table counts them instead
        for name in ("kazoo", "client"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    settings = Settings(
        writers=args.writers,
        before=args.before,
        after=args.after,
        settle=args.settle,
        op_timeout=args.op_timeout,
        max_ops=args.max_ops,
    )
    systems = {"coord": [COORD], "zk": [ZOOKEEPER], "both": [COORD, ZOOKEEPER]}[args.system]
    runners: dict[str, Callable[[int, Settings, Path | None], tuple[RunResult, list[Write]]]] = {
        COORD: run_coord_once,
        ZOOKEEPER: run_zookeeper_once,
    }
    started = datetime.datetime.now(datetime.UTC)
    report: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": asdict(settings),
        "versions": {"coord_git": _command_output(["git", "describe", "--always", "--dirty"])},
        "runs": [],
        "summary": {},
        "notes": {},
    }
    results: list[RunResult] = []
    try:
        if ZOOKEEPER in systems:
            report["versions"]["kazoo"] = importlib.metadata.version("kazoo")
            report["versions"]["java"] = _command_output(["java", "-version"])
        for run in range(1, args.runs + 1):
            for system in list(systems):  # interleaved, so machine noise spreads over both
                print(f"{system} run {run}/{args.runs}: fresh 3-server ensemble", file=sys.stderr, flush=True)
                try:
                    result, writes = runners[system](run, settings, args.logs)
                except (CoordNotAvailableError, ZooKeeperNotInstalledError, ImportError) as error:
                    report["notes"][system] = f"skipped: {error}"
                    print(f"{system}: skipped: {error}", file=sys.stderr)
                    systems.remove(system)
                    continue
                except (CoordStartError, ZooKeeperStartError) as error:
                    result, writes = RunResult(system=system, run=run, failure=f"start: {error}"), []
                results.append(result)
                print(_progress_line(result), file=sys.stderr, flush=True)
                for note in result.server_log_notes:
                    print(f"    {note}", file=sys.stderr)
                report["runs"].append({**result.as_dict(), "writes": len(writes)})
    except KeyboardInterrupt:
        print("interrupted; servers stopped, temp dirs removed", file=sys.stderr)
        return 130
    for system in dict.fromkeys(result.system for result in results):
        mine = [result for result in results if result.system == system]
        report["summary"][system] = {metric: _json_safe(summarise(mine, metric)) for metric in SUMMARY_METRICS}
    print()
    print(format_report(results, settings.after))
    for system, note in report["notes"].items():
        print(f"note: {system}: {note}")
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"failover-{started:%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {path}")
    return 0 if results and all(result.ok for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
