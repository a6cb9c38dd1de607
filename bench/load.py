"""Workload shapes for the side-by-side benchmark, the same for ZooKeeper and for coord.

Each system is measured from this one Python process, driven as fast as its Python client
can go:

- ZooKeeper through **kazoo** with its async API (``create_async`` / ``get_async``) and its
  default threading handler, keeping a bounded window of N requests outstanding: the main
  thread issues a request whenever a window slot is free; kazoo's completion thread records
  the latency and frees the slot.
- coord through our trio client (``client.connect``), with N trio tasks each awaiting one
  request at a time, so N requests are outstanding.

Phases (see :data:`PHASES`), after an unreported warm-up (JIT, connection, caches):

=============  ==========  ===========  ==================================================
name           operation   outstanding  what it shows
=============  ==========  ===========  ==================================================
create_x1      create      1            latency of one durable write (round trip + fsync)
create_x16     create      16           write throughput once group commit can batch
create_x64     create      64           write throughput under a deeper pipeline
get_x64        get         64           read throughput (served from memory)
=============  ==========  ===========  ==================================================

Every create writes a new persistent znode with a ``value_bytes`` value under
``<root>/<phase>/``; ``get_x64`` reads the znodes the create phases made, round-robin.
Each phase stops after ``ops_per_phase`` operations or ``seconds_per_phase`` seconds,
whichever comes first; requests still in flight then get ``drain_seconds`` to finish.
Latency is measured per operation from just before it is issued to its completion
(for kazoo: when its completion callback runs). Throughput is completed operations
divided by the time from the first issue to the last completion.

After the phases, each create phase is checked against the server: its parent must have
exactly as many children as creates were acknowledged, and the last one must hold the value
written. A mismatch counts as an error of that phase (the benchmark then exits non-zero).
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from kazoo.client import KazooClient
    from kazoo.interfaces import IAsyncResult

Operation = Literal["create", "get"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase:
    """One workload shape: an operation kept ``concurrency`` deep."""

    name: str
    operation: Operation
    concurrency: int
    description: str


PHASES: tuple[Phase, ...] = (
    Phase(name="create_x1", operation="create", concurrency=1, description="sequential creates, 1 client task"),
    Phase(name="create_x16", operation="create", concurrency=16, description="creates, 16 outstanding"),
    Phase(name="create_x64", operation="create", concurrency=64, description="creates, 64 outstanding"),
    Phase(name="get_x64", operation="get", concurrency=64, description="gets, 64 outstanding"),
)
"""The measured phases, in the order they run (the gets read what the creates wrote)."""

_WARMUP: tuple[Phase, ...] = (
    Phase(name="warmup", operation="create", concurrency=16, description="warm-up creates (not reported)"),
    Phase(name="warmup_get", operation="get", concurrency=16, description="warm-up gets (not reported)"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """Sizes and bounds shared by both systems.

    Attributes:
        ops_per_phase: Operations issued per measured phase (fewer if the time bound hits first).
        seconds_per_phase: Stop issuing after this many seconds.
        drain_seconds: Extra time for in-flight requests after issuing stopped.
        value_bytes: Size of every znode value written.
        warmup_ops: Creates (then as many gets) before measuring, not reported.
        root: Parent znode of everything the benchmark writes.
        session_timeout: Requested session timeout, seconds.
    """

    ops_per_phase: int = 5000
    seconds_per_phase: float = 30.0
    drain_seconds: float = 15.0
    value_bytes: int = 100
    warmup_ops: int = 2000
    root: str = "/coord-bench"
    session_timeout: float = 10.0

    @property
    def value(self) -> bytes:
        """The payload written by every create."""
        return (b"coord-bench-value-" * (self.value_bytes // 18 + 1))[: self.value_bytes]


@dataclass(slots=True, kw_only=True)
class PhaseResult:
    """What one phase measured on one system. Latencies in milliseconds."""

    phase: str
    description: str
    concurrency: int
    ops: int
    errors: int
    seconds: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    first_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for the JSON report."""
        return asdict(self)


@dataclass(slots=True)
class _Recorder:
    """Latencies and errors of one phase. Appended from one thread at a time (kazoo's completion
    thread, or the trio thread), so plain lists suffice."""

    latencies: list[float] = field(default_factory=list)
    succeeded: list[int] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    started: float = 0.0
    last_done: float = 0.0

    def record(self, index: int, began: float, error: BaseException | None) -> None:
        now = time.perf_counter()
        self.last_done = max(self.last_done, now)
        if error is None:
            self.latencies.append(now - began)
            self.succeeded.append(index)
        else:
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"{type(error).__name__}: {error}"

    def result(self, phase: Phase) -> PhaseResult:
        ordered = sorted(self.latencies)
        elapsed = max(self.last_done - self.started, 1e-9)
        return PhaseResult(
            phase=phase.name,
            description=phase.description,
            concurrency=phase.concurrency,
            ops=len(ordered),
            errors=self.errors,
            seconds=round(elapsed, 4),
            ops_per_s=round(len(ordered) / elapsed, 1),
            p50_ms=_percentile_ms(ordered, 0.50),
            p99_ms=_percentile_ms(ordered, 0.99),
            max_ms=_percentile_ms(ordered, 1.0),
            first_error=self.first_error,
        )


def _percentile_ms(ordered: Sequence[float], quantile: float) -> float:
    """Nearest-rank percentile of sorted seconds, in milliseconds (0.0 for no samples)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(quantile * len(ordered)))
    return round(ordered[min(rank, len(ordered)) - 1] * 1000.0, 3)


def _parent_path(workload: Workload, phase: Phase) -> str:
    return f"{workload.root}/{phase.name}"


def _node_path(workload: Workload, phase: Phase, index: int) -> str:
    return f"{_parent_path(workload, phase)}/n{index:07d}"


def _verify(acknowledged: int, found: int, sample: bytes | None, value: bytes) -> str | None:
    """Compare a create phase's acknowledged creates with what the server holds afterwards.

    Returns:
        None if the counts agree and the sampled znode holds the value written, else the problem.
    """
    if found != acknowledged:
        return f"verify: {acknowledged} creates acknowledged but {found} znodes found"
    if sample is not None and sample != value:
        return "verify: a created znode does not hold the value written"
    return None


def _check(results: list[PhaseResult], phase: Phase, problem: str | None) -> None:
    """Count a failed verification as an error of the phase it concerns (warm-up: reported only)."""
    if problem is None:
        return
    print(f"  {phase.name}: {problem}", file=sys.stderr, flush=True)
    for result in results:
        if result.phase == phase.name:
            result.errors += 1
            result.first_error = result.first_error or problem


def _progress(system: str, result: PhaseResult) -> None:
    errors = f", {result.errors} errors (first: {result.first_error})" if result.errors else ""
    print(
        f"  {system:<9} {result.phase:<11} {result.ops:>6} ops in {result.seconds:7.2f}s "
        f"{result.ops_per_s:>9.1f} ops/s  p50 {result.p50_ms:7.3f} ms  p99 {result.p99_ms:7.3f} ms{errors}",
        file=sys.stderr,
        flush=True,
    )


def _phase_plan(workload: Workload) -> list[tuple[Phase, int]]:
    """Warm-up creates and gets, then the measured phases, with their op counts."""
    warmup = [(phase, workload.warmup_ops) for phase in _WARMUP if workload.warmup_ops > 0]
    return warmup + [(phase, workload.ops_per_phase) for phase in PHASES]


# --------------------------------------------------------------------------- ZooKeeper / kazoo


def _kazoo_window(submit: Callable[[int], IAsyncResult], count: int, concurrency: int, workload: Workload) -> _Recorder:
    """Issue ``submit(i)`` for i in 0..count-1 with at most ``concurrency`` outstanding.

    The calling thread issues; kazoo's completion thread runs ``on_done``, which records and
    frees a window slot. Bounded: issuing stops at the phase deadline, then in-flight requests
    get ``drain_seconds``.
    """
    recorder = _Recorder()
    slots = threading.Semaphore(concurrency)

    def on_done(index: int, began: float, result: IAsyncResult) -> None:
        try:
            recorder.record(index, began, result.exception)
        finally:
            slots.release()

    recorder.started = time.perf_counter()
    deadline = recorder.started + workload.seconds_per_phase
    for index in range(count):
        remaining = deadline - time.perf_counter()
        if remaining <= 0 or not slots.acquire(timeout=remaining):
            break
        began = time.perf_counter()
        submit(index).rawlink(functools.partial(on_done, index, began))
    # Drain: holding every slot means nothing is outstanding any more.
    drain_deadline = time.perf_counter() + workload.drain_seconds
    for _ in range(concurrency):
        if not slots.acquire(timeout=max(0.0, drain_deadline - time.perf_counter())):
            recorder.errors += 1
            recorder.first_error = recorder.first_error or "requests still outstanding after the drain timeout"
            break
    return recorder


def kazoo_server_address(zk: KazooClient) -> str | None:
    """``host:port`` of the server a connected kazoo client talks to (None if unknown).

    kazoo has no public accessor for it; this reads its connection's socket, and gives up quietly
    should that private attribute change.
    """
    with contextlib.suppress(Exception):
        host, port = zk._connection._socket.getpeername()[:2]
        return f"{host}:{port}"
    return None


def run_kazoo_phases(
    connect_string: str, workload: Workload, *, on_connect: Callable[[str | None], None] | None = None
) -> list[PhaseResult]:
    """Run every phase against ZooKeeper with kazoo and return the measured results.

    Args:
        connect_string: ``host:port[,host:port...]`` of the server(s).
        workload: Sizes and bounds.
        on_connect: Called once connected with the ``host:port`` of the server kazoo picked.

    Returns:
        One result per entry of :data:`PHASES`, in order.
    """
    from kazoo.client import KazooClient  # imported here so the coord half runs without kazoo

    zk: KazooClient = KazooClient(hosts=connect_string, timeout=workload.session_timeout)
    zk.start(timeout=30)
    results: list[PhaseResult] = []
    try:
        if on_connect is not None:
            on_connect(kazoo_server_address(zk))
        created: list[str] = []
        to_check: list[tuple[Phase, list[str]]] = []
        for phase, count in _phase_plan(workload):
            if phase.operation == "create":
                zk.ensure_path(_parent_path(workload, phase))
                paths = [_node_path(workload, phase, index) for index in range(count)]
                value = workload.value
                recorder = _kazoo_window(
                    lambda index, paths=paths, value=value: zk.create_async(paths[index], value),
                    count,
                    phase.concurrency,
                    workload,
                )
                done = [paths[index] for index in sorted(recorder.succeeded)]
                created.extend(done)
                to_check.append((phase, done))
            else:
                targets = created or [workload.root]
                recorder = _kazoo_window(
                    lambda index, targets=targets: zk.get_async(targets[index % len(targets)]),
                    count,
                    phase.concurrency,
                    workload,
                )
            result = recorder.result(phase)
            if phase in PHASES:
                results.append(result)
                _progress("ZooKeeper", result)
        for phase, done in to_check:
            children = zk.get_children(_parent_path(workload, phase))
            sample = zk.get(done[-1])[0] if done else None
            _check(results, phase, _verify(len(done), len(children), sample, workload.value))
    finally:
        zk.stop()
        zk.close()
    return results


# --------------------------------------------------------------------------- coord / trio client


async def _trio_window(
    call: Callable[[int], Awaitable[object]], count: int, concurrency: int, workload: Workload
) -> _Recorder:
    """Await ``call(i)`` for i in 0..count-1 from ``concurrency`` trio tasks (one request each).

    Bounded: tasks stop taking new indices at the phase deadline; everything is cancelled
    ``drain_seconds`` after it.
    """
    import trio

    recorder = _Recorder()
    next_index = 0
    recorder.started = time.perf_counter()
    deadline = recorder.started + workload.seconds_per_phase

    async def worker() -> None:
        nonlocal next_index
        while next_index < count and time.perf_counter() < deadline:
            index = next_index  # no await between read and increment: tasks cannot interleave here
            next_index += 1
            began = time.perf_counter()
            try:
                await call(index)
            except Exception as error:  # count and go on; the summary reports the first one
                recorder.record(index, began, error)
            else:
                recorder.record(index, began, None)

    with trio.move_on_after(workload.seconds_per_phase + workload.drain_seconds) as scope:
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    if scope.cancelled_caught:
        recorder.errors += 1
        recorder.first_error = recorder.first_error or "requests still outstanding after the drain timeout"
    return recorder


async def _ensure_coord_path(zk: Any, path: str) -> None:
    """Create ``path`` and its missing ancestors as empty persistent znodes."""
    from coord.errors import NodeExistsError

    parts = path.strip("/").split("/")
    for depth in range(1, len(parts) + 1):
        with contextlib.suppress(NodeExistsError):
            await zk.create("/" + "/".join(parts[:depth]), b"")


async def run_coord_phases(
    connect_string: str, workload: Workload, *, on_connect: Callable[[str | None], None] | None = None
) -> list[PhaseResult]:
    """Run every phase against coord with the trio client and return the measured results.

    Args:
        connect_string: ``host:port[,host:port...]`` of the server(s).
        workload: Sizes and bounds.
        on_connect: Called once connected with the ``host:port`` of the server the client picked.

    Returns:
        One result per entry of :data:`PHASES`, in order.
    """
    import trio

    import client  # our trio client; imported here so the ZooKeeper half runs without it

    results: list[PhaseResult] = []
    plan = _phase_plan(workload)
    # One bound for everything, connect included (each phase bounds itself; this catches a hang
    # in connecting or closing). A cancel scope may not end inside the client's nursery, so it
    # wraps the whole `async with`.
    budget = 60.0 + len(plan) * (workload.seconds_per_phase + workload.drain_seconds)
    with trio.fail_after(budget):
        async with client.connect(connect_string, session_timeout=workload.session_timeout) as zk:
            if on_connect is not None:
                address = zk.server_address
                on_connect(f"{address[0]}:{address[1]}" if address else None)
            await _run_coord_plan(zk, plan, workload, results)
    return results


async def _run_coord_plan(
    zk: Any, plan: list[tuple[Phase, int]], workload: Workload, results: list[PhaseResult]
) -> None:
    """The phases of :func:`run_coord_phases` on a connected client; appends to ``results``."""
    created: list[str] = []
    to_check: list[tuple[Phase, list[str]]] = []
    for phase, count in plan:
        if phase.operation == "create":
            await _ensure_coord_path(zk, _parent_path(workload, phase))
            paths = [_node_path(workload, phase, index) for index in range(count)]
            value = workload.value

            async def create(index: int, paths: list[str] = paths, value: bytes = value) -> object:
                return await zk.create(paths[index], value)

            recorder = await _trio_window(create, count, phase.concurrency, workload)
            done = [paths[index] for index in sorted(recorder.succeeded)]
            created.extend(done)
            to_check.append((phase, done))
        else:
            targets = created or [workload.root]

            async def get(index: int, targets: list[str] = targets) -> object:
                return await zk.get(targets[index % len(targets)])

            recorder = await _trio_window(get, count, phase.concurrency, workload)
        result = recorder.result(phase)
        if phase in PHASES:
            results.append(result)
            _progress("coord", result)
    for phase, done in to_check:
        children = await zk.get_children(_parent_path(workload, phase))
        sample = (await zk.get(done[-1]))[0] if done else None
        _check(results, phase, _verify(len(done), len(children), sample, workload.value))
