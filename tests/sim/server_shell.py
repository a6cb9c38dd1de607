"""What the trio shell does for each server, played by the simulator: :class:`ServerShell`.

:mod:`coord.server.shell` runs a :class:`~coord.server.core.ServerCore` by feeding it
input (peer messages, client frames, ticks, finished disk writes) and carrying out its
output (messages to peers, frames to clients, records to persist, snapshots to take).
This layer does the same over simulated links, disks and connections, and tells the
checker what it sees the core do: the trees it reaches, its roles, the txns it applies
(:class:`RecordingPipeline`) and the sessions it expires. Starting a server is here;
crashing and restarting one are faults (:mod:`tests.sim.server_faults`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from coord.pipeline import Mode, Pipeline, PipelineConfig
from coord.protocol import ConnectRequest, decode_body, decode_request
from coord.tree import DataTree
from coord.txn import CloseSessionTxn, Txn
from coord.zab.types import Envelope
from tests.sim.network import InFlight
from tests.sim.server_checks import Stint
from tests.sim.server_sim_base import (
    C2S,
    EOF,
    FLUSH,
    HANDSHAKE,
    LINK_UP,
    PEER,
    RESET,
    S2C,
    SESSION_TICK_MS,
    SNAP_START,
    SNAP_WRITE,
    SimulationBase,
)
from tests.sim.sim_state import Client, Conn, SimServer
from tests.sim.trace import zxid_str

WALL_OFFSET_MS = 1_700_000_000_000  # txn times are wall-clock-like


class RecordingPipeline(Pipeline):
    """The production pipeline, telling the checker what it applies and which sessions it expires."""

    def __init__(self, *args: Any, sim: ServerShell, sid: int, **kwargs: Any) -> None:
        self._sim = sim
        self._sid = sid
        super().__init__(*args, **kwargs)

    def committed(self, txns: list[Txn]) -> None:
        self._sim.checker.on_apply(self._sid, self.tree.last_zxid, txns)
        super().committed(txns)

    def _propose(self, txn: Txn) -> None:
        body = txn.body
        if type(body) is CloseSessionTxn and txn.session_id == 0:
            self._sim.on_expire_decision(self._sid, body.session_id)
        super()._propose(txn)


class ServerShell(SimulationBase):
    """Every server's shell: see the module docstring."""

    # --- server lifecycle -------------------------------------------------------------------

    def _start(self, server: SimServer) -> None:
        server.incarnation += 1
        disk = server.disk
        tree = disk.recover()
        now_ms = self.local(server)
        pipeline = RecordingPipeline(
            tree,
            PipelineConfig(
                server_id=server.id,
                tick_ms=SESSION_TICK_MS,
                min_session_timeout_ms=400,
                max_session_timeout_ms=20_000,
            ),
            rng=random.Random(self.rng.getrandbits(64)),
            now_ms=now_ms,
            epoch=0,
            wall_offset_ms=WALL_OFFSET_MS,
            mode=Mode.OFFLINE,
            sim=self,
            sid=server.id,
        )
        core = self.core_class(
            pipeline,
            self.peer_config(server.id),
            disk,
            delivered_zxid=disk.loaded_zxid,
            snapshot_every_txns=self.options.snapshot_every_txns,
            standalone=False,
            rng=random.Random(self.rng.getrandbits(64)),
        )
        server.core = core
        disk.current_tree = lambda: core.tree
        server.flush_scheduled = False
        server.snapshot_busy = False
        server.seen_tree = None
        server.seen_zxid = -1
        server.roles_seen = 0
        server.mode = Mode.OFFLINE
        for other in self.ids:
            if other != server.id and self.servers[other].is_up:
                self.network.restore_link(server.id, other)
                self.network.restore_link(other, server.id)
        self.note("note", f"s{server.id} start #{server.incarnation} at {zxid_str(tree.last_zxid)}: {disk.describe()}")
        core.start(now_ms)
        self._after(server)

    # --- carrying out a core's output ----------------------------------------------------------

    def _after(self, server: SimServer) -> None:
        """Carry out everything the core asked for (and what that leads to), then observe it."""
        core = server.core
        assert core is not None
        while True:
            deferred = self._carry_out(server, core.take_output())
            if not deferred:
                break
            for action in deferred:
                action()
        self._observe(server)

    def _carry_out(self, server: SimServer, out: Any) -> list[Callable[[], None]]:
        deferred: list[Callable[[], None]] = []
        conns = server.conns
        core = server.core
        assert core is not None
        for conn_id, frame in out.frames:
            conn = conns.get(conn_id)
            if conn is not None and not conn.s2c_cut:
                self._s2c(conn, frame)
        for conn_id in out.close:
            conn = conns.get(conn_id)
            if conn is not None and not conn.closing and not conn.s2c_cut:
                conn.closing = True
                self._s2c(conn, EOF)
        for conn_id in out.abort:
            conn = conns.pop(conn_id, None)
            if conn is not None:
                self.note("conn", conn.client.id, server.id, conn_id, "aborted by the server")
                conn.s2c_cut = conn.c2s_cut = True
                conn.server_open = False
                self._reset_client(conn)
                deferred.append(lambda conn_id=conn_id: self._server_closed(server, conn_id))
        for conn_id in out.resume:
            conn = conns.get(conn_id)
            if conn is not None and conn.inbound:
                deferred.append(lambda conn=conn: self._drain(server, conn))
        for target, reason in out.disconnect:
            self.note("note", f"s{server.id} drops its link to s{target}: {reason}")
            self._schedule(0, LINK_UP, ("break", server.id, target))
        sid = server.id
        options = self.options
        for target, data in out.send:
            delay = self.rng.randint(1, options.delay_max)
            if options.slow_prob and self.rng.random() < options.slow_prob:
                delay = self.rng.randint(options.delay_max, options.slow_max)
            envelope = _envelope(sid, target, data)
            message = self.network.send(envelope, self.now, delay, self.servers[target].incarnation)
            if message is None:
                self._lost(sid, target)
            else:
                self._push_delivery(message, self.network.arrival(message))
        if out.persist:
            server.disk.append(out.persist)
            self._schedule_flush(server)
        if out.snapshot_due and not server.snapshot_busy:
            server.snapshot_busy = True
            self._schedule(self.rng.randint(1, 20), SNAP_START, (sid, server.incarnation))
        return deferred

    def _server_closed(self, server: SimServer, conn_id: int) -> None:
        core = server.core
        if core is not None:
            core.client_closed(conn_id)

    def _observe(self, server: SimServer) -> None:
        core = server.core
        assert core is not None
        tree = core.tree
        zxid = tree.last_zxid
        if tree is not server.seen_tree or zxid != server.seen_zxid:
            if zxid < server.seen_zxid:
                self.note(
                    "note", f"s{server.id}'s tree goes back from {zxid_str(server.seen_zxid)} to {zxid_str(zxid)}"
                )
            server.seen_tree = tree
            server.seen_zxid = zxid
            self.note("tree", server.id, zxid)
            self.checker.on_tree(server.id, tree)
        serving = core.is_serving
        stint = server.stint
        changes = len(core.role_changes)
        if serving != (stint is not None) or changes != server.roles_seen:
            # (every change of role or of serving is one more entry in core.role_changes)
            server.roles_seen = changes
            if serving:
                zab = core.zab
                if stint is None or stint.leader != zab.leader_id or stint.epoch != zab.epoch:
                    if stint is not None:
                        stint.end = self.now
                    server.stint = Stint(server.id, zab.leader_id, zab.epoch, self.now)
                    self.note("role", server.id, core.role, zab.epoch)
            elif stint is not None:
                stint.end = self.now
                server.stint = None
                self.note("role", server.id, core.role, core.zab.epoch)
        mode = core.pipeline.mode
        if mode is not server.mode:
            if mode is Mode.LEADER:
                server.leader_since = (self.now, self.checker.next_order(), self.jumps)
            server.mode = mode
        if server.disk.problems:
            self._drain_disk_problems()

    def _drain_disk_problems(self) -> None:
        for server in self.servers.values():
            for problem in server.disk.problems:
                self.checker.fail(f"disk: {problem}")
            server.disk.problems.clear()

    def on_expire_decision(self, sid: int, session_id: int) -> None:
        server = self.servers[sid]
        self.note("note", f"s{sid} expires session {session_id:#x}")
        if server.stint is None:
            self.checker.fail(f"s{sid} expires session {session_id:#x} while not serving (invariant 5)")
            return
        self.checker.on_expire_decision(sid, session_id, server.stint, server.leader_since)

    # --- disk and snapshots ------------------------------------------------------------------

    def _schedule_flush(self, server: SimServer) -> None:
        if server.disk.pending and not server.flush_scheduled:
            server.flush_scheduled = True
            self._schedule(self.rng.randint(1, server.disk_max), FLUSH, (server.id, server.incarnation))

    def _flush(self, sid: int, incarnation: int) -> bool:
        server = self.servers[sid]
        core = server.core
        if core is None or server.incarnation != incarnation:
            return False
        if server.stalled_until > self.now:
            self._at(server.stalled_until, FLUSH, (sid, incarnation))
            return False
        server.flush_scheduled = False
        pending = len(server.disk.pending)
        if not pending:
            return False
        count = pending
        if pending > 1 and self.options.partial_flush_prob and self.rng.random() < self.options.partial_flush_prob:
            count = self.rng.randint(1, pending - 1)
        seq = server.disk.flush(count)
        self.note("durable", sid, seq, count)
        core.persisted(seq, self.local(server))
        self._after(server)
        self._schedule_flush(server)
        return True

    def _snapshot_start(self, sid: int, incarnation: int) -> bool:
        server = self.servers[sid]
        core = server.core
        if core is None or server.incarnation != incarnation:
            return False
        core.snapshot_taken()
        image = core.tree.image()
        payload = DataTree.serialize_image(image)
        self.note("note", f"s{sid} snapshot at {zxid_str(image.last_zxid)}")
        self._schedule(self.rng.randint(1, server.disk_max), SNAP_WRITE, (sid, incarnation, image.last_zxid, payload))
        return True

    def _snapshot_write(self, sid: int, incarnation: int, zxid: int, payload: bytes) -> bool:
        server = self.servers[sid]
        if server.core is None or server.incarnation != incarnation:
            return False
        server.disk.write_snapshot(zxid, payload)
        server.snapshot_busy = False
        self.note("note", f"s{sid} snapshot {zxid_str(zxid)} written: {server.disk.describe()}")
        return True

    # --- peers ---------------------------------------------------------------------------------

    def _push_delivery(self, message: InFlight, time: int) -> None:
        message.due = time
        self._at(time, PEER, message)

    def _deliver(self, message: InFlight) -> bool:
        envelope = message.envelope
        if not self.network.take(message):
            self._lost(envelope.source, envelope.target)
            return False
        target = self.servers[envelope.target]
        if target.core is None or message.incarnation != target.incarnation:
            self._lost(envelope.source, envelope.target)
            return False
        self.heard[(envelope.source, envelope.target)] = self.now
        self.note("recv", envelope.source, envelope.target, envelope.message)
        target.core.peer_message(envelope.source, envelope.message, self.local(target))
        self._after(target)
        return True

    # --- connections ----------------------------------------------------------------------------

    def _c2s(self, conn: Conn, item: Any) -> None:
        time = max(self.now + self.rng.randint(1, self.options.client_delay_max), conn.c2s_last)
        conn.c2s_last = time
        self._at(time, C2S, (conn, item))

    def _s2c(self, conn: Conn, item: Any) -> None:
        time = max(self.now + self.rng.randint(1, self.options.client_delay_max), conn.s2c_last)
        conn.s2c_last = time
        self._at(time, S2C, (conn, item))

    def _reset_client(self, conn: Conn) -> None:
        """The client will see its connection fail (not in order with the frames: they are lost)."""
        self._schedule(self.rng.randint(1, self.options.client_delay_max), RESET, conn)

    def _to_server(self, conn: Conn, item: Any) -> bool:
        server = self.servers[conn.sid]
        core = server.core
        if item == HANDSHAKE:
            if core is None or server.incarnation != conn.incarnation or conn.c2s_cut:
                self._reset_client(conn)  # connection refused
                return False
            server.conns[conn.id] = conn
            conn.server_open = True
            client = conn.client
            self.note("conn", client.id, server.id, conn.id, f"handshake session={client.session_id:#x}")
            core.open_client(conn.id, _handshake(client), self.local(server))
            if client.session_id and core.pipeline.session_of(conn.id) == client.session_id:
                self._activity(server, client.session_id)
            self._after(server)
            return True
        if conn.c2s_cut or not conn.server_open or core is None or server.incarnation != conn.incarnation:
            return False
        if item == EOF:
            conn.server_open = False
            server.conns.pop(conn.id, None)
            core.client_closed(conn.id)
            self._after(server)
            return True
        body = item[4:]
        xid, request = decode_request(decode_body(body))
        conn.inbound.append((xid, request, len(item)))
        self._drain(server, conn)
        self._after(server)
        return True

    def _drain(self, server: SimServer, conn: Conn) -> None:
        """Feed buffered requests to the core while it wants them (the shell's read loop)."""
        core = server.core
        if core is None or not conn.server_open:
            return
        inbound = conn.inbound
        fed = False
        while inbound and core.wants_input(conn.id):
            xid, request, size = inbound.popleft()
            session_id = core.pipeline.session_of(conn.id)
            if session_id:
                self._activity(server, session_id)
            core.client_request(conn.id, xid, request, self.local(server), size)
            fed = True
        if inbound and not core.has_connection(conn.id):
            inbound.clear()
        if fed:
            core.flush()

    def _activity(self, server: SimServer, session_id: int) -> None:
        if server.stint is not None:
            self.checker.on_activity(session_id, server.id, server.stint)


def _envelope(source: int, target: int, data: bytes) -> Envelope:
    return Envelope(source=source, target=target, message=data)


def _handshake(client: Client) -> ConnectRequest:
    return ConnectRequest(
        last_zxid=client.last_zxid,
        session_id=client.session_id,
        password=client.password,
        timeout_ms=client.requested_timeout,
    )
