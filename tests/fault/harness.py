"""Fault schedules: a real 3-server ensemble, a multi-client load, faults, and the history checked.

One schedule (:func:`run_schedule`):

1. start an ensemble (processes, or in-process for isolation) in ``tmp_path``;
2. run ``workers`` clients, each one session with one operation in flight, doing creates,
   compare-and-set sets, deletes, plain reads and ``sync`` + reads on a few keys, and a
   few ephemeral creates; one more session creates an ephemeral and is abandoned (its
   socket closed without a goodbye), so the leader must expire it;
3. meanwhile a *nemesis* injects the schedule's faults at random moments (seeded);
4. then undo every fault, wait until the servers agree, read every key once more, wait
   for every ephemeral of a dead session to go, and stop the servers;
5. read each server's log and snapshots back from LMDB and check: the history exactly
   against the merged log (:mod:`coord.testing.history`), then black-box
   (:mod:`coord.testing.linearizability`); every server's tree rebuilt from disk has the same
   digest, equals the reference replay, and holds no ephemeral of a dead session.

Reply zxids are exact: every client's stream goes through a :class:`ReplyTap` (given to
``client.connect`` as ``open_stream``) that reads the frames off the wire and keeps the
zxid of each reply by its request's xid. (The client only exposes ``last_zxid``, the
highest zxid seen, which a ping reply can move.) With one operation in flight per
client, the reply of an operation is the first reply to a request of its kind sent
after it was invoked.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

import client
from coord import protocol
from coord.errors import StorageError
from coord.protocol import Op
from coord.recovery import recover
from coord.storage import SnapshotStore, TxnLog
from coord.testing import Ensemble, open_ensemble
from coord.testing.history import (
    HistoryRecorder,
    MergedLog,
    Operation,
    OpKind,
    Replay,
    ServerLog,
    Violation,
    WatchRecord,
    check_history,
    linearizability_calls,
    merge_logs,
)
from coord.testing.linearizability import Report as LinearizabilityReport
from coord.testing.linearizability import check as check_linearizable
from coord.tree import DataTree

PREFIX = "/h"
SESSION_TIMEOUT_S = 4.0
"""Workers' sessions: long enough to ride out a failover, short enough to expire in a run."""
ABANDONED_TIMEOUT_S = 2.0
OP_TIMEOUT_S = 12.0
"""A last resort: the client fails calls itself well before this (read timeout 2/3 of the session's)."""
LOG_MAP_BYTES = 256 << 20
LINEARIZABILITY_LIMIT_S = 20.0
"""The time limit of the black-box check, per key; a timeout is a failure."""
DEFINITE_ERRORS = (client.NoNodeError, client.NodeExistsError, client.BadVersionError, client.NotEmptyError)
"""Error answers that come from the replicated state (a write's error txn, or a read)."""

NEMESES = ("kill-leader", "kill-follower", "kill-all", "pause", "isolate", "expire", "mixed", "snapshots")


@dataclass(frozen=True, slots=True)
class Schedule:
    """What one run does. ``nemesis`` is one of :data:`NEMESES`."""

    nemesis: str
    seed: int
    duration_s: float = 10.0
    workers: int = 5
    keys: int = 16

    @property
    def processes(self) -> bool:
        return self.nemesis != "isolate"  # a server process cannot be isolated (coord.testing)

    @property
    def name(self) -> str:
        return f"{self.nemesis}-{self.seed}"

    @property
    def overrides(self) -> dict[str, int]:
        """Arguments of open_ensemble. A follower that misses its first sync retries
        after init_limit_ticks (FINDINGS.md F2): keep that short, 20 ticks of 50 ms."""
        options = {"init_limit_ticks": 20}
        if self.nemesis == "snapshots":
            # Frequent snapshots: recovery from snapshot + log, catch-up by SNAP, purged logs.
            options |= {"snapshot_every_txns": 200, "snapshots_retained": 20}
        return options


# --- exact reply zxids ------------------------------------------------------------------


class ReplyTap:
    """Reads one client's frames off the wire: the zxid of every reply, by request xid.

    Also checks that the zxids the session sees (replies, pings, events) never go down,
    across reconnects too.
    """

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []  # (xid, op) of every request, in order
        self.replies: dict[int, int] = {}  # xid -> the zxid its reply carried
        self.highest = 0
        self.regressions: list[str] = []
        self.frames = 0  # frames received so far: their order, for watch events vs replies
        self.connections = 0
        self.reply_frames: dict[int, tuple[int, int]] = {}  # xid -> (frame number, connection)
        self.events: list[tuple[int, int, int, str, int]] = []  # (frame, connection, type, path, zxid)

    async def open(self, host: str, port: int) -> trio.abc.Stream:
        stream = await trio.open_tcp_stream(host, port)
        self.connections += 1
        return _TappedStream(stream, self)

    def mark(self) -> int:
        return len(self.sent)

    def reply_zxid(self, mark: int, op: int) -> int | None:
        """The zxid of the reply to the first request of kind ``op`` sent after ``mark``."""
        for xid, sent_op in self.sent[mark:]:
            if sent_op == op:
                return self.replies.get(xid)
        return None

    def reply_frame(self, mark: int, op: int) -> tuple[int, int] | None:
        """``(frame number, connection)`` of the reply :meth:`reply_zxid` reads."""
        for xid, sent_op in self.sent[mark:]:
            if sent_op == op:
                return self.reply_frames.get(xid)
        return None

    def event_frame(self, after: int, event: client.WatchEvent) -> tuple[int | None, int]:
        """``(frame number, connection)`` of the first frame after ``after`` that carried ``event``."""
        for frame, connection, kind, path, zxid in self.events:
            if frame > after and (kind, path, zxid) == (int(event.type), event.path, event.zxid):
                return frame, connection
        return None, self.connections

    def _request(self, item: Any) -> None:
        if type(item) is list and len(item) >= 2:
            self.sent.append((item[0], item[1]))

    def _reply(self, item: Any) -> None:
        if type(item) is not list or len(item) != 4:
            return
        xid, zxid = item[0], item[1]
        self.frames += 1
        if xid == protocol.WATCH_XID:
            body = item[3]
            if type(body) is list and len(body) == 2:
                self.events.append((self.frames, self.connections, body[0], body[1], zxid))
        else:
            self.reply_frames[xid] = (self.frames, self.connections)
        if zxid < self.highest:
            self.regressions.append(f"xid {xid}: zxid {zxid:#x} after {self.highest:#x}")
        self.highest = max(self.highest, zxid)
        if xid != protocol.WATCH_XID:
            self.replies[xid] = zxid


class _TappedStream(trio.abc.Stream):
    """A stream that shows every frame to a :class:`ReplyTap` on its way."""

    def __init__(self, inner: trio.abc.Stream, tap: ReplyTap) -> None:
        self._inner = inner
        self._tap = tap
        self._out = protocol.FrameReader(protocol.frame_bytes_max() * 16)
        self._in = protocol.FrameReader(protocol.frame_bytes_max() * 16)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._out.feed(bytes(data))
        for body in self._out:
            item = protocol.decode_body(body)
            if not isinstance(item, dict):  # the handshake is a map
                self._tap._request(item)
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._inner.receive_some(max_bytes)
        if data:
            self._in.feed(bytes(data))
            for body in self._in:
                item = protocol.decode_body(body)
                if not isinstance(item, dict):
                    self._tap._reply(item)
        return data

    async def aclose(self) -> None:
        await self._inner.aclose()


# --- the load ---------------------------------------------------------------------------


@dataclass(slots=True)
class RunState:
    """What the workers, the nemesis and the checks share."""

    schedule: Schedule
    ensemble: Ensemble
    recorder: HistoryRecorder = field(default_factory=HistoryRecorder)
    watches: list[WatchRecord] = field(default_factory=list)
    clients: dict[int, client.Client] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    wire_regressions: list[str] = field(default_factory=list)
    started: float = 0.0

    def event(self, text: str) -> None:
        self.events.append(f"{trio.current_time() - self.started:7.3f} {text}")

    @property
    def keys(self) -> list[str]:
        return [f"{PREFIX}/k{index}" for index in range(self.schedule.keys)]


class Worker:
    """One client at a time (a new one when its session is lost), one operation in flight."""

    def __init__(self, index: int, state: RunState) -> None:
        self.watchers: trio.Nursery | None = None  # the tasks awaiting this worker's watches
        self.index = index
        self.state = state
        self.rng = random.Random(state.schedule.seed * 1000 + index)
        self.counter = 0
        self.versions: dict[str, int] = {}  # the last version this worker saw, per key

    async def run(self, stop: trio.Event) -> None:
        async with trio.open_nursery() as watchers:
            self.watchers = watchers
            await self._sessions(stop)

    async def _sessions(self, stop: trio.Event) -> None:
        while not stop.is_set():
            tap = ReplyTap()
            try:
                async with client.connect(
                    self.state.ensemble.connect_string,
                    session_timeout=SESSION_TIMEOUT_S,
                    connect_timeout=30.0,
                    open_stream=tap.open,
                    max_reconnect_delay=0.5,
                ) as zk:
                    self.state.clients[self.index] = zk
                    try:
                        await self._loop(zk, tap, stop)
                    finally:
                        self.state.clients.pop(self.index, None)
            except (client.SessionExpiredError, client.ConnectionLossError, client.ConnectionClosedError):
                pass  # a new session
            finally:
                self.state.wire_regressions.extend(f"worker {self.index}: {text}" for text in tap.regressions)

    async def _loop(self, zk: client.Client, tap: ReplyTap, stop: trio.Event) -> None:
        rng = self.rng
        keys = self.state.keys
        while not stop.is_set():
            self.counter += 1
            value = b"w%d-%d" % (self.index, self.counter)
            key = rng.choice(keys)
            known = self.versions.get(key, -1) if rng.random() < 0.8 else -1
            choice = rng.random()
            if choice < 0.03:
                path = f"{PREFIX}/e{self.index}-{self.counter}"
                await self.operation(zk, tap, OpKind.CREATE, path, value=value, ephemeral=True)
            elif choice < 0.18:
                await self.operation(zk, tap, OpKind.CREATE, key, value=value)
            elif choice < 0.45:
                await self.operation(zk, tap, OpKind.SET, key, value=value, version=known)
            elif choice < 0.55:
                await self.operation(zk, tap, OpKind.DELETE, key, version=known)
            elif choice < 0.80:
                await self.operation(zk, tap, OpKind.SYNC_GET, key)
            elif choice < 0.86:
                await self.operation(zk, tap, OpKind.GET, key, watch=client.Watch())
            elif choice < 0.90:
                await self.watched_exists(zk, tap, key)
            else:
                await self.operation(zk, tap, OpKind.GET, key)

    def _watching(
        self, zk: client.Client, tap: ReplyTap, watch: client.Watch, kind: str, path: str, mark: int, op: int
    ) -> None:
        """Record a watch armed by the reply to the request of kind ``op`` sent after ``mark``,
        and await it in a side task."""
        zxid = tap.reply_zxid(mark, op)
        frame = tap.reply_frame(mark, op)
        if zxid is None or frame is None or self.watchers is None:  # pragma: no cover
            return
        record = WatchRecord(
            watch_id=len(self.state.watches),
            process=self.index,
            session_id=zk.session_id,
            kind=kind,
            path=path,
            zxid=zxid,
            seq=frame[0],
        )
        self.state.watches.append(record)
        self.watchers.start_soon(self._await_watch, watch, record, tap, frame[1])

    async def _await_watch(self, watch: client.Watch, record: WatchRecord, tap: ReplyTap, connection: int) -> None:
        try:
            with trio.fail_after(self.state.schedule.duration_s + 60):
                event = await watch.wait()
        except (client.CoordError, trio.TooSlowError):
            record.ended = True  # the session was lost or closed first
            record.reconnected = tap.connections > connection
            return
        assert record.seq is not None
        frame, at = tap.event_frame(record.seq, event)
        record.events.append((int(event.type), event.path, event.zxid, frame))
        record.reconnected = at > connection

    async def watched_exists(self, zk: client.Client, tap: ReplyTap, path: str) -> None:
        """``exists`` with a one-shot watch: a data watch if the node is there, else an exists watch.

        Raises:
            SessionExpiredError: the session is over.
        """
        watch = client.Watch()
        mark = tap.mark()
        try:
            with trio.fail_after(OP_TIMEOUT_S):
                stat = await zk.exists(path, watch=watch)
        except (client.CoordError, trio.TooSlowError) as error:
            if isinstance(error, client.SessionExpiredError | client.ConnectionClosedError):
                raise
            return
        self._watching(zk, tap, watch, "exist" if stat is None else "data", path, mark, Op.EXISTS)

    async def operation(
        self,
        zk: client.Client,
        tap: ReplyTap,
        kind: OpKind,
        path: str,
        *,
        value: bytes | None = None,
        version: int = -1,
        ephemeral: bool = False,
        watch: client.Watch | None = None,
    ) -> None:
        """Run one operation and record it (invocation, then ok / failed / unknown).
        A read may arm a one-shot ``watch`` (recorded in the run's watches).

        Raises:
            SessionExpiredError: the session is over (recorded as unknown first).
        """
        recorder = self.state.recorder
        mark = tap.mark()
        op = recorder.invoke(
            process=self.index,
            session_id=zk.session_id,
            kind=kind,
            path=path,
            time=trio.current_time(),
            zxid_before=zk.last_zxid,
            value=value,
            version=version,
            ephemeral=ephemeral,
        )
        reply_op = {
            OpKind.CREATE: Op.CREATE,
            OpKind.SET: Op.SET_DATA,
            OpKind.DELETE: Op.DELETE,
            OpKind.GET: Op.GET_DATA,
            OpKind.SYNC_GET: Op.GET_DATA,
        }[kind]
        try:
            with trio.fail_after(OP_TIMEOUT_S):
                read: tuple[bytes, int, int] | None = None
                stat: tuple[int, int, int] | None = None
                if kind is OpKind.CREATE:
                    assert value is not None
                    _path, created = await zk.create(path, value, ephemeral=ephemeral, include_data=True)
                    stat = (created.version, created.czxid, created.mzxid)
                elif kind is OpKind.SET:
                    assert value is not None
                    changed = await zk.set(path, value, version=version)
                    stat = (changed.version, changed.czxid, changed.mzxid)
                elif kind is OpKind.DELETE:
                    await zk.delete(path, version=version)
                else:
                    if kind is OpKind.SYNC_GET:
                        await zk.sync(path)
                    data, got = await zk.get(path, watch=watch)
                    read = (data, got.version, got.mzxid)
        except DEFINITE_ERRORS as error:
            op.server = _server_name(self.state.ensemble, zk)
            zxid = tap.reply_zxid(mark, reply_op)
            if zxid is None:  # pragma: no cover - an answer always comes with a reply frame
                recorder.unknown(op, error=error.code)
            else:
                recorder.failed(op, time=trio.current_time(), zxid=zxid, error=error.code)
                op.seq = _frame(tap.reply_frame(mark, reply_op))
            self.versions.pop(path, None)
            return
        except (client.CoordError, trio.TooSlowError) as error:
            recorder.unknown(op, error=getattr(error, "code", 0))
            self.versions.pop(path, None)
            if isinstance(error, client.SessionExpiredError | client.ConnectionClosedError):
                raise
            return
        op.server = _server_name(self.state.ensemble, zk)
        zxid = tap.reply_zxid(mark, reply_op)
        if zxid is None:  # pragma: no cover
            recorder.unknown(op)
            return
        recorder.ok(op, time=trio.current_time(), zxid=zxid, read=read, stat=stat)
        op.seq = _frame(tap.reply_frame(mark, reply_op))
        if watch is not None:
            self._watching(zk, tap, watch, "data", path, mark, reply_op)
        if kind is OpKind.DELETE:
            self.versions.pop(path, None)
        elif read is not None:
            self.versions[path] = read[1]
        elif stat is not None and not ephemeral:
            self.versions[path] = stat[0]


def _frame(frame: tuple[int, int] | None) -> int | None:
    return None if frame is None else frame[0]


def _server_name(ensemble: Ensemble, zk: client.Client) -> str:
    address = zk.server_address
    if address is None:
        return ""
    try:
        server_id = ensemble.server_id_at(address)
    except KeyError:
        return str(address)
    # the role as last polled (processes: up to 0.1 s old), for reading reports
    return f"server {server_id}" + (" (leader)" if ensemble.leader_id() == server_id else "")


async def abandon_session(state: RunState, path: str) -> tuple[int, Operation]:
    """Open a session by hand, create an ephemeral, and drop the socket without closing.

    The leader must expire the session after :data:`ABANDONED_TIMEOUT_S` and delete the node.
    """
    recorder = state.recorder
    for server_id in state.ensemble.server_ids:
        address = state.ensemble.address(server_id)
        try:
            with trio.fail_after(10):
                stream = await trio.open_tcp_stream(*address)
                async with stream:
                    request = protocol.ConnectRequest(timeout_ms=int(ABANDONED_TIMEOUT_S * 1000))
                    await stream.send_all(protocol.encode_frame(request.to_wire()))
                    reader = protocol.FrameReader(protocol.frame_bytes_max())
                    answer = protocol.decode_handshake_reply(await _read(stream, reader))
                    if isinstance(answer, tuple):
                        continue
                    op = recorder.invoke(
                        process=-2,
                        session_id=answer.session_id,
                        kind=OpKind.CREATE,
                        path=path,
                        time=trio.current_time(),
                        zxid_before=answer.zxid,
                        value=b"abandoned",
                        ephemeral=True,
                    )
                    create = protocol.CreateRequest(path=path, data=b"abandoned", mode=protocol.CreateMode.EPHEMERAL)
                    await stream.send_all(protocol.encode_frame(protocol.encode_request(1, create)))
                    _xid, zxid, err, result = protocol.decode_reply(await _read(stream, reader))
                    if err:
                        recorder.failed(op, time=trio.current_time(), zxid=zxid, error=err)
                    else:
                        stat = protocol.Stat.from_wire(result[1])
                        recorder.ok(op, time=trio.current_time(), zxid=zxid, stat=(stat.version, stat.czxid, zxid))
                    return answer.session_id, op
        except (OSError, trio.TooSlowError, protocol.ProtocolError):
            continue
    raise RuntimeError("no server would open the abandoned session")


async def _read(stream: trio.SocketStream, reader: protocol.FrameReader) -> Any:
    while True:
        for body in reader:
            return protocol.decode_body(body)
        data = await stream.receive_some(65536)
        if not data:
            raise protocol.ProtocolError("closed")
        reader.feed(data)


# --- the nemesis ------------------------------------------------------------------------


async def nemesis(state: RunState, rng: random.Random, until: float) -> None:
    """Inject the schedule's faults at random moments until ``until`` (trio time)."""
    ensemble = state.ensemble
    kind = state.schedule.nemesis
    ids = ensemble.server_ids

    async def pause_for(low: float, high: float) -> None:
        await trio.sleep(min(rng.uniform(low, high), max(0.0, until - trio.current_time())))

    async def _leader() -> int | None:
        with contextlib.suppress(trio.TooSlowError):
            return await ensemble.wait_for_leader(timeout=max(0.5, min(8.0, until - trio.current_time())))
        return ensemble.leader_id()

    async def kill_leader() -> None:
        leader = await _leader()
        if leader is not None:
            state.event(f"kill -9 leader {leader}")
            await ensemble.kill(leader)
            await pause_for(0.2, 2.0)
            state.event(f"restart {leader}")
            await ensemble.restart(leader)

    async def kill_follower() -> None:
        leader = await _leader()
        victim = rng.choice([i for i in ids if i != leader])
        state.event(f"kill -9 follower {victim}")
        await ensemble.kill(victim)
        await pause_for(0.2, 2.5)
        state.event(f"restart {victim}")
        await ensemble.restart(victim)

    async def kill_all() -> None:
        order = rng.sample(ids, len(ids))
        for victim in order:
            state.event(f"kill -9 {victim}")
            await ensemble.kill(victim)
            await trio.sleep(rng.uniform(0.0, 0.3))
        await pause_for(0.1, 1.0)
        for victim in rng.sample(ids, len(ids)):
            state.event(f"restart {victim}")
            await ensemble.restart(victim)

    async def pause() -> None:
        leader = ensemble.leader_id()
        victim = leader if leader is not None and rng.random() < 0.5 else rng.choice(ids)
        state.event(f"SIGSTOP {victim}{' (leader)' if victim == leader else ''}")
        ensemble.pause(victim)
        await pause_for(0.3, 4.0)
        state.event(f"SIGCONT {victim}")
        ensemble.resume(victim)

    async def isolate() -> None:
        leader = ensemble.leader_id()
        victim = leader if leader is not None and rng.random() < 0.6 else rng.choice(ids)
        state.event(f"isolate {victim}{' (leader)' if victim == leader else ''}")
        ensemble.isolate(victim)
        await pause_for(0.3, 3.0)
        state.event("heal")
        ensemble.heal()

    async def expire() -> None:
        if state.clients:
            index = rng.choice(sorted(state.clients))
            zk = state.clients.get(index)
            if zk is not None and zk.session_id:
                state.event(f"expire the session of worker {index} ({zk.session_id:#x})")
                with contextlib.suppress(RuntimeError, ValueError):
                    await ensemble.expire_session(zk)
        if rng.random() < 0.4:
            await kill_follower()

    actions: dict[str, list[Callable[[], Awaitable[None]]]] = {
        "kill-leader": [kill_leader],
        "snapshots": [kill_leader, kill_follower],
        "kill-follower": [kill_follower],
        "kill-all": [kill_all],
        "pause": [pause],
        "isolate": [isolate],
        "expire": [expire],
        "mixed": [kill_leader, kill_follower, kill_all, pause, expire],
    }
    choices = actions[kind]
    while trio.current_time() < until:
        await pause_for(0.3, 2.0)
        if trio.current_time() >= until - 0.5:
            break
        await rng.choice(choices)()


# --- reading the disks back -------------------------------------------------------------


@dataclass(slots=True)
class DiskState:
    server_id: int
    log: ServerLog
    tree: DataTree  # snapshot + replay of the whole log (what recovery would serve)


def read_disk(server_id: int, data_dir: Path) -> DiskState:
    """One stopped server's log, snapshots and recovered tree."""
    txn_log = TxnLog.open(data_dir / "log", map_bytes=LOG_MAP_BYTES)
    try:
        entries = [(zxid, bytes(data)) for zxid, data in txn_log.read(0)]
        base_zxid = txn_log.base_zxid
    finally:
        txn_log.close()
    store = SnapshotStore(data_dir / "snapshots")
    snapshots: dict[int, DataTree] = {}
    for zxid, _ in store.list():
        # every snapshot, not only the newest: the oldest may be the base
        with contextlib.suppress(StorageError):  # one that does not verify is skipped, as recovery skips it
            snapshots[zxid] = DataTree.from_pieces(store.read_pieces(zxid))
    recovered = recover(data_dir, log_map_bytes=LOG_MAP_BYTES, replay=True)
    recovered.log.close()
    log = ServerLog(server_id=server_id, entries=entries, base_zxid=base_zxid, snapshots=snapshots)
    return DiskState(server_id=server_id, log=log, tree=recovered.tree)


def check_disks(disks: list[DiskState], merged: MergedLog) -> list[Violation]:
    """Every tree rebuilt from disk is the same, equals the reference replay, and keeps
    no ephemeral (every session has ended by the time the servers stop)."""
    violations: list[Violation] = []
    digests = {disk.server_id: disk.tree.digest() for disk in disks}
    if len(set(digests.values())) != 1:
        detail = ", ".join(
            f"server {disk.server_id}: zxid {disk.tree.last_zxid:#x} digest {digests[disk.server_id][:12]}"
            for disk in disks
        )
        violations.append(Violation("divergent-trees", f"the trees rebuilt from disk differ ({detail})"))
    replay = Replay(merged.base, merged.base_zxid, merged.txns)
    for disk in disks:
        tree = disk.tree
        if tree.last_zxid != replay.last_zxid:
            violations.append(
                Violation(
                    "disk-vs-replay",
                    f"server {disk.server_id} recovers to {tree.last_zxid:#x}, the merged log ends at "
                    f"{replay.last_zxid:#x}",
                )
            )
            continue
        paths = set(tree.nodes) | set(replay.current)
        for path in sorted(paths):
            node = tree.nodes.get(path)
            expected = replay.current.get(path)
            got = None if node is None else (node.data, node.version, node.mzxid, node.ephemeral_owner)
            want = (
                None
                if expected is None
                else (expected.data, expected.version, expected.mzxid, expected.ephemeral_owner)
            )
            if got != want:
                violations.append(
                    Violation(
                        "disk-vs-replay", f"server {disk.server_id}: {path} is {got!r:.100}, replay {want!r:.100}"
                    )
                )
                break
        for path, node in tree.nodes.items():
            if node.ephemeral_owner:
                violations.append(
                    Violation(
                        "ephemeral-survived",
                        f"server {disk.server_id}: {path} of session {node.ephemeral_owner:#x} outlived it",
                    )
                )
    return violations


# --- one schedule -----------------------------------------------------------------------


@dataclass(slots=True)
class Outcomes:
    """What one schedule produced (for the test and the summary)."""

    schedule: Schedule
    operations: list[Operation]
    history: Any = None  # coord.testing.history.HistoryReport
    linearizability: LinearizabilityReport | None = None
    violations: list[Violation] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    log_tails: dict[int, str] = field(default_factory=dict)
    wall_s: float = 0.0
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return (
            not self.violations
            and self.history is not None
            and self.history.ok
            and self.linearizability is not None
            and self.linearizability.ok
        )

    def summary(self) -> str:
        counts = ", ".join(f"{key} {value}" for key, value in sorted(self.counts.items()))
        lin = "-" if self.linearizability is None else ("ok" if self.linearizability.ok else "FAILED")
        history = "-" if self.history is None else ("ok" if self.history.ok else "FAILED")
        return (
            f"{self.schedule.name:18} {self.wall_s:6.1f}s  ops {len(self.operations):5}  ({counts})  "
            f"history {history}  linearizable {lin}  other violations {len(self.violations)}"
        )

    def report(self) -> str:
        lines = [self.summary(), "", "faults:", *(f"  {event}" for event in self.events)]
        for violation in self.violations:
            lines.append(f"- {violation}")
        if self.history is not None and not self.history.ok:
            lines += ["", self.history.describe(self.operations)]
        if self.linearizability is not None and not self.linearizability.ok:
            lines += ["", self.linearizability.describe(linearizability_calls(self.operations))]
        for server_id, tail in sorted(self.log_tails.items()):
            lines += ["", f"server {server_id} log tail:", tail]
        return "\n".join(lines)

    def dump(self, path: Path) -> None:
        """The history and the verdicts as JSON, for a closer look after a failure."""
        operations = [
            {
                "op_id": op.op_id,
                "process": op.process,
                "session": op.session_id,
                "kind": op.kind.value,
                "path": op.path,
                "value": None if op.value is None else op.value.decode(errors="replace"),
                "version": op.version,
                "ephemeral": op.ephemeral,
                "invoke": op.invoke_time,
                "complete": op.complete_time,
                "outcome": op.outcome.value,
                "error": op.error,
                "zxid": op.zxid,
                "zxid_before": op.zxid_before,
                "read": None if op.read is None else [op.read[0].decode(errors="replace"), *op.read[1:]],
                "stat": op.stat,
                "server": op.server,
            }
            for op in self.operations
        ]
        path.write_text(json.dumps({"schedule": self.schedule.name, "events": self.events, "ops": operations}))


async def run_schedule(schedule: Schedule, directory: Path) -> Outcomes:
    """Run one schedule in ``directory`` and check everything (see the module doc)."""
    started = time.monotonic()
    rng = random.Random(schedule.seed)
    outcomes = Outcomes(schedule=schedule, operations=[])
    data_dir = directory / "ensemble"
    final_state: dict[str, tuple[bytes, int] | None] = {}
    async with open_ensemble(3, processes=schedule.processes, data_dir=data_dir, **schedule.overrides) as ensemble:
        state = RunState(schedule=schedule, ensemble=ensemble)
        try:
            with trio.fail_after(schedule.duration_s + 150):
                state.started = trio.current_time()
                await ensemble.wait_for_leader(60)
                state.event("leader elected")
                tap = ReplyTap()
                async with client.connect(ensemble.connect_string, open_stream=tap.open) as zk:
                    await Worker(-1, state).operation(zk, tap, OpKind.CREATE, PREFIX, value=b"root")
                await abandon_session(state, f"{PREFIX}/abandoned")
                stop = trio.Event()
                until = trio.current_time() + schedule.duration_s
                async with trio.open_nursery() as nursery:
                    for index in range(schedule.workers):
                        nursery.start_soon(Worker(index, state).run, stop)
                    await nemesis(state, rng, until)
                    await trio.sleep_until(until)
                    stop.set()
                state.event("load stopped; restoring every server")
                try:
                    await ensemble.restore(timeout=60)
                    await ensemble.wait_converged(timeout=30)
                except trio.TooSlowError:
                    outcomes.violations.append(Violation("no-recovery", "the ensemble did not recover within 90 s"))
                    raise
                state.event("restored and converged")
                final_state, survivors = await _final_reads(state)
                state.event("final reads done, ephemerals of dead sessions gone")
                outcomes.violations.extend(
                    Violation("ephemeral-survived", f"{path} outlived its session (still there after the timeout)")
                    for path in survivors
                )
                outcomes.violations.extend(await _wait_quiet(ensemble))
                state.event("no session left, every server at the same zxid; stopping them")
        finally:
            outcomes.events = state.events
            outcomes.operations = state.recorder.operations
            outcomes.log_tails = _log_tails(ensemble)
            outcomes.violations.extend(
                Violation("session-order", f"on the wire: {text}") for text in state.wire_regressions
            )
    disks = [read_disk(server_id, data_dir / f"server-{server_id}") for server_id in (1, 2, 3)]
    merged = merge_logs([disk.log for disk in disks])
    operations = outcomes.operations
    outcomes.history = check_history(operations, merged, final_state=final_state, watches=state.watches)
    outcomes.violations.extend(check_disks(disks, merged))
    outcomes.linearizability = check_linearizable(
        linearizability_calls(operations), time_limit_s=LINEARIZABILITY_LIMIT_S
    )
    outcomes.counts = Counter(op.outcome.value for op in operations)
    outcomes.counts["txns"] = len(merged.txns)
    outcomes.counts["keys"] = len(outcomes.linearizability.results)
    outcomes.counts["lin-calls"] = outcomes.linearizability.calls
    outcomes.counts["watches"] = len(state.watches)
    outcomes.counts["watches-fired"] = outcomes.history.stats["watches fired as due"]
    outcomes.counts["lin-ms"] = int(1000 * sum(result.elapsed_s for result in outcomes.linearizability.results))
    outcomes.wall_s = time.monotonic() - started
    return outcomes


def _log_tails(ensemble: Ensemble) -> dict[int, str]:
    if not ensemble.processes:
        return {}
    return {server_id: ensemble.process(server_id).log_tail(25) for server_id in ensemble.server_ids}


async def _final_reads(state: RunState) -> tuple[dict[str, tuple[bytes, int] | None], list[str]]:
    """Read every key once more (``sync`` first); wait for the ephemerals of every dead
    session (the abandoned one, the workers' closed or expired ones) to go.

    Returns:
        What each key holds, and the ephemerals still there after the deadline.
    """
    final: dict[str, tuple[bytes, int] | None] = {}
    async with client.connect(state.ensemble.connect_string, session_timeout=10.0) as zk:
        for key in state.keys:
            await zk.sync(key)
            try:
                data, stat = await zk.get(key)
                final[key] = (data, stat.version)
            except client.NoNodeError:
                final[key] = None
        # Every other session is over by now: their ephemerals must go within a
        # session timeout (plus an election, which restarts the leader's session clocks).
        deadline = trio.current_time() + 2 * max(SESSION_TIMEOUT_S, ABANDONED_TIMEOUT_S) + 10
        while True:
            await zk.sync(PREFIX)
            left = [name for name in await zk.get_children(PREFIX) if name.startswith(("e", "abandoned"))]
            if not left or trio.current_time() > deadline:
                break
            await trio.sleep(0.2)
    return final, [f"{PREFIX}/{name}" for name in left]


async def _wait_quiet(ensemble: Ensemble) -> list[Violation]:
    """Wait until no session is left (every client closed its own or had it expired, so
    no txn can follow) and every server has applied and logged the same zxid."""
    deadline = trio.current_time() + 2 * SESSION_TIMEOUT_S + 20
    while True:
        statuses = [await ensemble.status(server_id) for server_id in ensemble.server_ids]
        marks = {(status["zxid"], status["log"]["last_zxid"], status["sessions"]) for status in statuses}
        if len(marks) == 1 and all(zxid == logged and sessions == 0 for zxid, logged, sessions in marks):
            return []
        if trio.current_time() > deadline:
            return [Violation("session-survived", f"the servers never settled with no session left: {marks}")]
        await trio.sleep(0.05)


__all__ = ["NEMESES", "Outcomes", "Schedule", "run_schedule"]
