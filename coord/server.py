"""The trio shell of one server: sockets, the disk thread, the clock.

The shell owns no protocol logic. It wires three pure state machines together
and carries out what they ask:

- the :class:`~coord.pipeline.Pipeline` (client requests -> txns -> replies),
- the ZAB core :class:`~coord.zab.peer.Peer` (ordering, durability, replication),
- the :class:`~coord.peer.PeerTransport` to the other servers (none when standalone).

A standalone server is an ensemble of one: the same ZAB core, with a quorum of
one, so there is one code path. Tasks:

- per client connection, a reader (frames -> pipeline) and a writer that flushes
  everything queued for it in one ``send_all`` (replies coalesce under load);
- the record writer: drains every record ZAB asked to persist at that moment into
  one LMDB write transaction (group commit, one fsync) in a worker thread, then
  reports ``persisted`` — ZAB acknowledges and delivers nothing before that;
- the ZAB ticker, the session ticker and the snapshotter.

After every input the shell *pumps*: it moves outputs between the pipeline and
ZAB until both are quiet, sends frames to connections, and messages to peers.
Only LMDB writes and snapshot serialisation leave the trio thread
(``trio.to_thread``).

A storage error makes this server drop its in-memory ZAB state and rejoin from its
durable state (CORRECTNESS rule 4); everything in flight is answered with the
error, reads keep working, and a standalone server re-elects itself at once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import trio

from coord import protocol
from coord.config import ServerConfig
from coord.durable import LogDurableState, write_records
from coord.errors import (
    ConnectionLossError,
    CoordError,
    StorageError,
    StorageFullError,
    ThrottledOpError,
    error_for_code,
)
from coord.peer import PeerTransport
from coord.pipeline import Mode, Pipeline, PipelineConfig
from coord.protocol import ConnectRequest, FrameReader, ProtocolError, StatusRequest
from coord.recovery import Recovered, recover
from coord.tree import DataTree
from coord.txn import Txn, decode_txn, encode_txn
from coord.zab import Peer, PeerConfig, Role, decode_message, encode_message
from coord.zab.types import Envelope, Record

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
RECEIVE_BYTES = 256 * 1024
STANDALONE_TICK_MS = 20
"""The ZAB tick of an ensemble of one (it only paces its own election)."""


class _ClientConnection:
    """The shell's side of one client connection: its socket and outgoing buffer."""

    __slots__ = ("closing", "conn_id", "outbox", "resume", "scope", "stream", "wakeup")

    def __init__(self, conn_id: int, stream: trio.SocketStream) -> None:
        self.conn_id = conn_id
        self.stream = stream
        self.outbox: list[bytes] = []
        self.wakeup = trio.Event()  # the writer has frames to send (or should close)
        self.resume = trio.Event()  # the reader may read again (the pipeline said so)
        self.closing = False
        self.scope = trio.CancelScope()

    def push(self, frame: bytes) -> None:
        self.outbox.append(frame)
        self.wakeup.set()

    def close_soon(self) -> None:
        """Send what is queued, then close."""
        self.closing = True
        self.wakeup.set()
        self.resume.set()


class Server:
    """A running server (standalone or a member of an ensemble). Made by :func:`open_server`."""

    def __init__(self, config: ServerConfig, recovered: Recovered) -> None:
        self.config = config
        self._log = recovered.log
        self._snapshots = recovered.snapshots
        now_ms = self._now_ms()
        self.pipeline = Pipeline(
            recovered.tree,
            PipelineConfig(
                server_id=config.server_id,
                tick_ms=config.tick_ms,
                min_session_timeout_ms=config.min_session_timeout_ms,
                max_session_timeout_ms=config.max_session_timeout_ms,
                data_bytes_max=config.data_bytes_max,
                txn_bytes_max=config.txn_bytes_max,
                path_bytes_max=config.path_bytes_max,
                path_depth_max=config.path_depth_max,
                connection_outstanding_max=config.connection_outstanding_max,
                connection_inflight_bytes_max=config.connection_inflight_bytes_max,
                connection_outbox_bytes_max=config.connection_outbox_bytes_max,
                outbox_bytes_total_max=config.outbox_bytes_total_max,
                connection_stall_ms=config.connection_stall_ms,
            ),
            rng=random.Random(),
            now_ms=now_ms,
            epoch=0,
            wall_offset_ms=int(time.time() * 1000) - now_ms,
            mode=Mode.OFFLINE,
        )
        ensemble = config.ensemble
        self.is_standalone = ensemble is None
        self._zab_tick_s = (STANDALONE_TICK_MS if ensemble is None else ensemble.tick_ms) / 1000
        self._durable = LogDurableState(recovered.log, recovered.snapshot_zxid, lambda: self.pipeline.tree)
        self._peer_config = PeerConfig(
            server_id=config.server_id,
            voters=ensemble.voters if ensemble else (config.server_id,),
            **(
                {"init_limit_ticks": ensemble.init_limit_ticks, "sync_limit_ticks": ensemble.sync_limit_ticks}
                if ensemble
                else {}
            ),
        )
        self.zab = Peer(self._peer_config, self._durable, random.Random(), delivered_zxid=recovered.snapshot_zxid)
        self.transport: PeerTransport | None = None
        if ensemble is not None:
            self.transport = PeerTransport(
                server_id=config.server_id,
                peers=ensemble.peers,
                ensemble_id=ensemble.ensemble_id,
                on_message=self._on_peer_message,
                on_link_down=self._on_peer_link_down,
            )
        self._conns: dict[int, _ClientConnection] = {}
        self._ids = itertools.count(1)
        self._records: list[Record] = []
        self._records_wakeup = trio.Event()
        self._log_lock = trio.Lock()  # one writer of the log at a time (records, purges)
        self._snapshot_wakeup = trio.Event()
        self._since_snapshot = 0
        self._own_txns: dict[int, Txn] = {}  # proposals of this leader, by zxid, until delivered
        self._barriers: dict[int, tuple[tuple[int, int, int], int]] = {}  # id -> (sync, commit zxid then)
        self._confirmed_syncs: list[tuple[tuple[int, int, int], int]] = []
        self._frame_bytes_max = protocol.frame_bytes_max(config.data_bytes_max)
        self.address: tuple[str, int] = ("", 0)
        self.snapshots_taken = 0
        self.last_storage_error: str | None = None
        self.role_changes: list[str] = []
        self._ready = trio.Event()
        self._isolated = False

    # --- public ---------------------------------------------------------------------

    @property
    def connect_string(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def tree(self) -> DataTree:
        return self.pipeline.tree

    @property
    def role(self) -> str:
        """``standalone``, ``leader``, ``follower`` or ``looking``."""
        if not self.zab.is_ready:
            return "looking"
        if self.is_standalone:
            return "standalone"
        return "leader" if self.zab.role is Role.LEADING else "follower"

    @property
    def is_serving(self) -> bool:
        return self.zab.is_ready

    @property
    def is_isolated(self) -> bool:
        return self._isolated

    async def wait_serving(self) -> None:
        """Wait until this server serves clients (it leads or follows an established leader)."""
        while not self.zab.is_ready:
            await self._ready.wait()

    def status(self) -> dict[str, Any]:
        """Role, zxid, counts: what ``coord status`` shows."""
        status = self.pipeline.status()
        status["role"] = self.role
        status["epoch"] = self.zab.epoch
        status["leader"] = self.zab.leader_id
        status["address"] = self.connect_string
        status["snapshots_taken"] = self.snapshots_taken
        status["log"] = self._log.stats()
        if self.last_storage_error:
            status["last_storage_error"] = self.last_storage_error
        return status

    def drop_connections(self) -> None:
        """Close every client connection now (a fault hook for tests). Sessions live on."""
        for conn in list(self._conns.values()):
            conn.scope.cancel()

    def isolate(self) -> None:
        """Cut this server off from its peers and its clients (a fault hook for tests)."""
        self._isolated = True
        if self.transport is not None:
            self.transport.isolate()
        self.drop_connections()

    def heal(self) -> None:
        self._isolated = False
        if self.transport is not None:
            self.transport.heal()

    async def expire_session(self, session_id: int) -> bool:
        """Expire ``session_id`` now, as if it had timed out (leader only); returns once it is gone here."""
        if not self.pipeline.expire_session(session_id, self._now_ms()):
            return False
        self._pump()
        with trio.fail_after(30):
            while session_id in self.tree.sessions:
                await trio.sleep(0.001)  # polling a condition, bounded by the deadline
        return True

    async def take_snapshot(self) -> int:
        """Snapshot the tree now; returns the zxid it covers."""
        return await self._snapshot()

    # --- the pump ---------------------------------------------------------------------

    @staticmethod
    def _now_ms() -> int:
        return int(trio.current_time() * 1000)

    def _on_peer_message(self, source: int, data: bytes) -> None:
        try:
            message = decode_message(data)
        except ValueError as error:
            # The transport closes this link (and only it) on a ProtocolError.
            raise ProtocolError(f"malformed ZAB message: {error}") from None
        self.zab.step(Envelope(source=source, target=self.config.server_id, message=message))
        self._pump()

    def _on_peer_link_down(self, source: int) -> None:
        self.zab.link_down(source)
        self._pump()

    def _pump(self) -> None:
        """Move outputs between the pipeline and ZAB until both are quiet."""
        pipeline = self.pipeline
        zab = self.zab
        for _ in range(1_000):
            out = pipeline.take_output()
            busy = False
            if out.frames:
                conns = self._conns
                for conn_id, frame in out.frames:
                    conn = conns.get(conn_id)
                    if conn is not None:
                        conn.push(frame)
            for conn_id in out.close:
                conn = self._conns.get(conn_id)
                if conn is not None:
                    conn.close_soon()
            for conn_id in out.abort:
                conn = self._conns.get(conn_id)
                if conn is not None:
                    conn.outbox.clear()
                    conn.scope.cancel()
            for conn_id in out.resume:
                conn = self._conns.get(conn_id)
                if conn is not None:
                    conn.resume.set()
            for source in out.bad_peers:
                if self.transport is not None:
                    self.transport.disconnect(source, "it sent a malformed application message")
            for txn in out.proposals:
                busy = True
                zxid = zab.propose(encode_txn(txn))
                assert zxid == txn.zxid, f"ZAB assigned {zxid:#x}, the preparer {txn.zxid:#x}"
                self._own_txns[zxid] = txn
            for payload in out.to_leader:
                busy = True
                zab.app_to_leader(payload)
            for target, payload in out.to_followers:
                busy = True
                zab.send_app(target, payload)
            for barrier in out.barriers:
                busy = True
                # Remember what was committed when the sync arrived: the answer must
                # reflect at least that (every write acknowledged before it).
                self._barriers[zab.barrier()] = (barrier, zab.last_committed_zxid)

            zout = zab.take_output()
            if zout.send and self.transport is not None:
                busy = self._send_to_peers(zout.send) or busy
            if zout.persist:
                self._records.extend(zout.persist)
                self._records_wakeup.set()
            if zout.install is not None:
                busy = True
                zxid, data = zout.install
                tree = DataTree.from_bytes(data)
                assert tree.last_zxid == zxid
                pipeline.install(tree)
            if zout.deliver:
                busy = True
                own = self._own_txns
                txns = [own.pop(zxid, None) or decode_txn(data) for zxid, data in zout.deliver]
                pipeline.committed(txns)
                self._since_snapshot += len(txns)
                if self._since_snapshot >= self.config.snapshot_every_txns:
                    self._snapshot_wakeup.set()
            for source, payload in zout.app:
                busy = True
                if zab.role is Role.LEADING:
                    pipeline.from_follower(source, payload, self._now_ms())
                else:
                    pipeline.from_leader(source, payload)
            for barrier_id in zout.barriers:
                busy = True
                pending = self._barriers.pop(barrier_id, None)
                if pending is not None:
                    self._confirmed_syncs.append(pending)
            if self._confirmed_syncs:
                busy = self._release_syncs() or busy
            if zout.ready is not None or zout.roles:
                busy = True
                self._role_changed(zout.ready)
            if not busy:
                return
        raise AssertionError("the pipeline and ZAB did not quiesce")  # pragma: no cover

    def _send_to_peers(self, envelopes: list[Envelope]) -> bool:
        """Hand ZAB's messages to the transport. One that cannot be encoded or sent
        (over the peer frame limit) drops that peer's link only: the ZAB core then
        treats it as lost and syncs it again when it is back. Returns whether a link
        was dropped (the core has new output)."""
        assert self.transport is not None
        send = self.transport.send
        dropped = False
        for envelope in envelopes:
            try:
                send(envelope.target, encode_message(envelope.message))
            except (ValueError, TypeError) as error:
                self.transport.disconnect(envelope.target, f"a {type(envelope.message).__name__} failed: {error}")
                self.zab.link_down(envelope.target)
                dropped = True
        return dropped

    def _release_syncs(self) -> bool:
        """Answer the syncs whose quorum round is done, once this server applied what
        was committed when each arrived.

        A follower's sync is answered through ZAB, which holds the answer on the
        follower until it delivered that far. A sync of the leader's own client must
        wait here: the leader can count a write committed (a quorum of followers
        acknowledged it, and a follower may already have answered its client) before
        its own disk write is done and the write applied to its tree.
        """
        applied = self.pipeline.tree.last_zxid
        released = False
        waiting: list[tuple[tuple[int, int, int], int]] = []
        for barrier, commit_zxid in self._confirmed_syncs:
            origin = barrier[0]
            if origin == self.config.server_id and applied < commit_zxid:
                waiting.append((barrier, commit_zxid))
            else:
                self.pipeline.barrier_done(*barrier)
                released = True
        self._confirmed_syncs = waiting
        return released

    def _role_changed(self, ready: bool | None) -> None:
        zab = self.zab
        now_ms = self._now_ms()
        if ready is False or (not zab.is_ready and self.pipeline.mode is not Mode.OFFLINE):
            self._own_txns.clear()
            self._barriers.clear()
            self._confirmed_syncs.clear()
            self.pipeline.go_offline(ConnectionLossError("this server lost its leader; reconnect"))
            self.role_changes.append("looking")
            log.info("server %d: not serving (looking for a leader)", self.config.server_id)
            self._ready = trio.Event()
        elif zab.is_ready:
            if zab.role is Role.LEADING and self.pipeline.mode is not Mode.LEADER:
                self.pipeline.become_leader(zab.next_zxid, now_ms)
            elif zab.role is Role.FOLLOWING and self.pipeline.mode is not Mode.FOLLOWER:
                self.pipeline.become_follower(now_ms)
            else:
                return
            self.role_changes.append(self.role)
            log.info("server %d: %s in epoch %d", self.config.server_id, self.role, zab.epoch)
            self._ready.set()

    # --- tasks ------------------------------------------------------------------------

    async def _serve_records(self) -> None:
        """Group commit: everything ZAB asked to persist while the last write ran goes into the next."""
        while True:
            await self._records_wakeup.wait()
            self._records_wakeup = trio.Event()
            records = self._records
            if not records:
                continue
            self._records = []
            try:
                async with self._log_lock:
                    await trio.to_thread.run_sync(write_records, self._log, self._snapshots, records)
            except (StorageError, CoordError) as error:
                await self._storage_failed(error)
                continue
            self.zab.persisted(records[-1].seq)
            self._pump()
            if self.zab.is_ready:
                self.pipeline.set_offline_error(None)  # serving again: writes get their own answers

    async def _storage_failed(self, error: CoordError) -> None:
        """The disk refused a write: nothing after the last durable record is written.

        The ZAB core's in-memory state assumed those records would be durable, so it is
        rebuilt from what really is (rule 4); everything in flight fails with the error.
        A standalone server re-elects itself at once (that writes its new epoch).

        A full disk (:class:`StorageFullError`) is remembered until this server serves
        again: writes arriving while it has no leader meanwhile get that error too, not
        "no leader; retry" (docs/storage.md).
        """
        self.last_storage_error = str(error)
        log.error("storage write failed: %s; rejoining from the durable state", error)
        self._records = []
        self._own_txns.clear()
        self._barriers.clear()
        self._confirmed_syncs.clear()
        self.pipeline.go_offline(error, disconnect=False)
        self.pipeline.set_offline_error(error if isinstance(error, StorageFullError) else None)
        if isinstance(error, StorageError) or self._log.refuses_writes:
            # After an I/O error (or a full disk) the log refuses writes until reopened.
            await trio.to_thread.run_sync(self._log.close)
            from coord.storage import TxnLog

            self._log = await trio.to_thread.run_sync(
                lambda: TxnLog.open(self.config.data_dir / "log", map_bytes=self.config.log_map_bytes)
            )
        self._durable = LogDurableState(self._log, self._durable.applied_zxid(), lambda: self.pipeline.tree)
        # The rebuilt core delivers only what the tree does not have yet.
        self.zab = Peer(self._peer_config, self._durable, random.Random(), delivered_zxid=self.pipeline.tree.last_zxid)
        self._pump()

    async def _serve_snapshots(self) -> None:
        while True:
            await self._snapshot_wakeup.wait()
            self._snapshot_wakeup = trio.Event()
            try:
                await self._snapshot()
            except (OSError, CoordError) as error:
                log.error("snapshot failed (the log still holds everything): %s", error)

    async def _snapshot(self) -> int:
        # The image is a shallow copy taken on the trio thread (nodes are immutable),
        # so serialising it in a worker thread sees one consistent zxid.
        self._since_snapshot = 0
        image = self.tree.image()
        payload = await trio.to_thread.run_sync(DataTree.serialize_image, image)
        await trio.to_thread.run_sync(self._snapshots.write, image.last_zxid, payload)
        await trio.to_thread.run_sync(self._snapshots.purge, self.config.snapshots_retained)
        retained = await trio.to_thread.run_sync(self._snapshots.list)
        if retained:
            # Keep the log after the OLDEST retained snapshot, so recovery can fall
            # back to it if a newer one turns out to be damaged. (A follower that
            # needs older entries gets a SNAP.) The purge is a write too: it takes
            # its turn with the record writer.
            oldest = retained[0][0]
            async with self._log_lock:
                await trio.to_thread.run_sync(self._log.purge_through, min(oldest, self._log.last_zxid))
        self.snapshots_taken += 1
        log.info("snapshot at zxid %#x (%d bytes)", image.last_zxid, len(payload))
        return image.last_zxid

    async def _serve_zab_ticks(self) -> None:
        while True:
            await trio.sleep(self._zab_tick_s)
            self.zab.tick()
            self._pump()

    async def _serve_session_ticks(self) -> None:
        interval = self.config.tick_ms / 1000
        while True:
            await trio.sleep(interval)
            self.pipeline.tick(self._now_ms())
            self._pump()

    # --- client connections -------------------------------------------------------------

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn_id = next(self._ids)
        conn = _ClientConnection(conn_id, stream)
        peer = _peer_name(stream)
        try:
            with conn.scope:
                if self._isolated:
                    return
                await self._converse(conn, peer)
        finally:
            self._conns.pop(conn_id, None)
            self.pipeline.close_connection(conn_id)
            self._pump()
            with trio.move_on_after(1, shield=True):
                await stream.aclose()

    async def _converse(self, conn: _ClientConnection, peer: str) -> None:
        reader = FrameReader(self._frame_bytes_max)
        stream = conn.stream
        with trio.move_on_after(HANDSHAKE_TIMEOUT_S) as handshake_scope:
            handshake = await self._read_handshake(stream, reader, peer)
        if handshake_scope.cancelled_caught:
            log.info("%s: no handshake within %ss; closing", peer, HANDSHAKE_TIMEOUT_S)
            return
        if handshake is None:
            return
        if isinstance(handshake, StatusRequest):
            await stream.send_all(protocol.encode_frame(self.status()))
            return
        if len(self._conns) >= self.config.max_connections:
            error: CoordError = ThrottledOpError(f"too many connections ({self.config.max_connections})")
            await stream.send_all(protocol.encode_frame(protocol.handshake_error(error.code, str(error))))
            return
        self._conns[conn.conn_id] = conn
        self.pipeline.open_connection(conn.conn_id, handshake, self._now_ms())
        self._pump()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_loop, conn, nursery.cancel_scope)
            await self._read_loop(conn, reader, peer)
            if conn.closing:
                # The pipeline hung up on this client (a refused handshake, a closed
                # or expired session): the writer sends what is queued, then cancels.
                with trio.move_on_after(2):
                    await trio.sleep_forever()
            # The client hung up or broke the protocol: stop writing too.
            nursery.cancel_scope.cancel()

    async def _read_handshake(
        self, stream: trio.SocketStream, reader: FrameReader, peer: str
    ) -> ConnectRequest | StatusRequest | None:
        while True:
            try:
                for body in reader:
                    return protocol.decode_handshake(protocol.decode_body(body))
            except ProtocolError as error:
                log.info("%s: bad handshake: %s; closing", peer, error)
                return None
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                return None
            reader.feed(data)

    async def _read_loop(self, conn: _ClientConnection, reader: FrameReader, peer: str) -> None:
        """Requests in, while the pipeline wants them (backpressure: see coord.pipeline).

        Frames that arrived together with the handshake are already in ``reader``; they
        wait, like everything after them, until the pipeline has answered the handshake."""
        stream = conn.stream
        conn_id = conn.conn_id
        decode_body = protocol.decode_body
        decode_request = protocol.decode_request
        while True:
            while not self.pipeline.wants_input(conn_id):
                if conn.closing or not self.pipeline.has_connection(conn_id):
                    return
                conn.resume = trio.Event()
                await conn.resume.wait()
            now_ms = self._now_ms()
            pipeline = self.pipeline
            try:
                if not reader.ready():
                    data = await stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        return
                    reader.feed(data)
                    continue
                for body in reader:
                    try:
                        xid, request = decode_request(decode_body(body))
                    except ProtocolError as error:
                        if error.xid is None:
                            raise
                        log.info("%s: bad request xid %d: %s", peer, error.xid, error)
                        pipeline.refuse_request(conn_id, error.xid, error_for_code(error.code)(str(error)))
                    else:
                        pipeline.request(conn_id, xid, request, now_ms, len(body) + 4)
                    if not pipeline.wants_input(conn_id):
                        break
            except ProtocolError as error:
                log.info("%s: %s; closing the connection", peer, error)
                self._pump()
                return
            self._pump()
            if conn.closing:
                return

    async def _write_loop(self, conn: _ClientConnection, scope: trio.CancelScope) -> None:
        stream = conn.stream
        try:
            while True:
                await conn.wakeup.wait()
                conn.wakeup = trio.Event()
                if conn.outbox:
                    data = b"".join(conn.outbox)
                    conn.outbox.clear()
                    await stream.send_all(data)
                    # Unsent bytes are the pipeline's to count (it holds reads and
                    # pauses or aborts the connection by them).
                    self.pipeline.sent(conn.conn_id, len(data), self._now_ms())
                    self._pump()
                if conn.closing and not conn.outbox:
                    scope.cancel()
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            scope.cancel()


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "client"
    return f"{host}:{port}"


@contextlib.asynccontextmanager
async def open_server(
    config: ServerConfig,
    *,
    client_listener: trio.SocketListener | None = None,
    peer_listener: trio.SocketListener | None = None,
) -> AsyncIterator[Server]:
    """Recover the state under ``config.data_dir`` and serve until the block ends.

    Yields the running :class:`Server`, already listening (``server.address``). A
    standalone server is serving by then; a member of an ensemble serves once ZAB
    has an established leader (``await server.wait_serving()``).

    Args:
        config: the server's configuration.
        client_listener, peer_listener: pre-bound listeners to use instead of binding
            the configured addresses (the embedded test ensemble binds port 0 for every
            server first, then writes the real ports into each server's configuration).

    Raises:
        coord.recovery.RecoveryError: the data directory is damaged beyond what can
            be recovered without losing acknowledged writes.
    """
    recovered = await trio.to_thread.run_sync(
        lambda: recover(config.data_dir, log_map_bytes=config.log_map_bytes, replay=False)
    )
    server = Server(config, recovered)
    try:
        if client_listener is not None:
            listeners = [client_listener]
        else:
            listeners = await trio.open_tcp_listeners(config.listen_port, host=config.listen_host)
        async with trio.open_nursery() as nursery:
            server.address = listeners[0].socket.getsockname()[:2]
            nursery.start_soon(server._serve_records)
            nursery.start_soon(server._serve_zab_ticks)
            nursery.start_soon(server._serve_session_ticks)
            nursery.start_soon(server._serve_snapshots)
            transport = server.transport
            if transport is not None:
                await nursery.start(
                    lambda task_status: transport.serve(listener=peer_listener, task_status=task_status)
                )
            nursery.start_soon(trio.serve_listeners, server._handle, listeners)
            server.zab.tick()  # start the election at once
            server._pump()
            log.info("server %d: clients on %s", config.server_id, server.connect_string)
            if server.is_standalone:
                # A quorum of one: it elects itself as soon as its epoch is on disk.
                with trio.fail_after(60):
                    await server.wait_serving()
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
    finally:
        # Shielded: a cancelled (killed) server must still let go of its LMDB files,
        # so that it can be started again in this process.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server._log.close)


async def serve(config: ServerConfig, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a server until cancelled; ``task_status.started(server)`` once listening."""
    async with open_server(config) as server:
        task_status.started(server)
        await trio.sleep_forever()
