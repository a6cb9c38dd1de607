"""The trio shell of one server: sockets, the disk thread, the clock.

The shell owns no protocol logic. It recovers the state from disk, then runs:

- a listener whose handler per client connection reads frames, decodes them
  and feeds them to the :class:`~coord.pipeline.Pipeline`;
- one writer task per connection that flushes everything queued for it in one
  ``send_all`` (replies coalesce under load);
- the log writer: drains every proposal waiting at that moment into ONE LMDB
  write transaction (group commit, one fsync) in a worker thread, then tells the
  pipeline they are committed — so nothing is applied or acknowledged before it
  is durable;
- the ticker (session expiry, container/TTL clean-up) and the snapshotter.

After every input the shell "pumps" the pipeline's output: frames go to their
connections' buffers, proposals to the log writer, closes to the connections.
Everything runs on the trio thread except LMDB commits, snapshot serialisation
and snapshot writes (``trio.to_thread``). A standalone server is an ensemble of
one: the log writer is its whole replication step.

A malformed or oversized frame closes that connection with a logged reason; a
well-formed request with bad fields gets a typed error; nothing else is affected.
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
from coord.errors import CoordError, StorageError, ThrottledOpError
from coord.pipeline import Pipeline, PipelineConfig
from coord.protocol import ConnectRequest, FrameReader, ProtocolError, StatusRequest
from coord.recovery import Recovered, recover
from coord.tree import DataTree
from coord.txn import Txn, encode_txn

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
RECEIVE_BYTES = 256 * 1024
OUTBOX_BYTES_MAX = 64 * 1024 * 1024
"""A client that lets more than this pile up unread is cut off (it is not reading)."""


class _ClientConnection:
    """The shell's side of one client connection: its socket and outgoing buffer."""

    __slots__ = ("buffered", "closing", "conn_id", "outbox", "scope", "stream", "wakeup")

    def __init__(self, conn_id: int, stream: trio.SocketStream) -> None:
        self.conn_id = conn_id
        self.stream = stream
        self.outbox: list[bytes] = []
        self.buffered = 0
        self.wakeup = trio.Event()
        self.closing = False
        self.scope = trio.CancelScope()

    def push(self, frame: bytes) -> None:
        self.outbox.append(frame)
        self.buffered += len(frame)
        self.wakeup.set()

    def close_soon(self) -> None:
        """Send what is queued, then close."""
        self.closing = True
        self.wakeup.set()


class Server:
    """A running standalone server. Made by :func:`open_server`."""

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
            ),
            rng=random.Random(),
            now_ms=now_ms,
            epoch=recovered.epoch,
            wall_offset_ms=int(time.time() * 1000) - now_ms,
        )
        self._conns: dict[int, _ClientConnection] = {}
        self._ids = itertools.count(1)
        self._proposals: list[Txn] = []
        self._log_wakeup = trio.Event()
        self._snapshot_wakeup = trio.Event()
        self._since_snapshot = recovered.replayed
        self._frame_bytes_max = protocol.frame_bytes_max(config.data_bytes_max)
        self.address: tuple[str, int] = ("", 0)
        self.snapshots_taken = 0
        self.last_storage_error: str | None = None

    # --- public ---------------------------------------------------------------------

    @property
    def connect_string(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def tree(self) -> DataTree:
        return self.pipeline.tree

    def status(self) -> dict[str, Any]:
        """Role, zxid, counts: what ``coord status`` shows."""
        status = self.pipeline.status()
        status["role"] = "standalone"
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

    async def expire_session(self, session_id: int) -> bool:
        """Expire ``session_id`` now, as if it had timed out; returns once it is closed."""
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

    def _pump(self) -> None:
        out = self.pipeline.take_output()
        while out.barriers:
            # Standalone: this server is the whole quorum, so its leadership is
            # confirmed at once.
            for origin, session_id, xid in out.barriers:
                self.pipeline.barrier_done(origin, session_id, xid)
            more = self.pipeline.take_output()
            out.frames += more.frames
            out.proposals += more.proposals
            out.close += more.close
            out.barriers = more.barriers
        if out.frames:
            conns = self._conns
            for conn_id, frame in out.frames:
                conn = conns.get(conn_id)
                if conn is not None:
                    conn.push(frame)
        if out.proposals:
            self._proposals.extend(out.proposals)
            self._log_wakeup.set()
        for conn_id in out.close:
            conn = self._conns.get(conn_id)
            if conn is not None:
                conn.close_soon()

    # --- tasks ------------------------------------------------------------------------

    async def _serve_log(self) -> None:
        """Group commit: everything proposed while the last commit ran goes into the next."""
        while True:
            await self._log_wakeup.wait()
            self._log_wakeup = trio.Event()
            batch = self._proposals
            if not batch:
                continue
            self._proposals = []
            entries = [(txn.zxid, encode_txn(txn)) for txn in batch]
            try:
                await trio.to_thread.run_sync(self._log.append, entries)
            except (StorageError, CoordError) as error:
                # Nothing of this batch is durable; whatever was proposed meanwhile
                # was prepared on top of it, so it fails too.
                failed = batch + self._proposals
                self._proposals = []
                self.last_storage_error = str(error)
                log.error("log write of %d txns failed: %s", len(failed), error)
                self.pipeline.abort_pending(error)
                self._pump()
                continue
            self.pipeline.committed(batch)
            self._pump()
            self._since_snapshot += len(batch)
            if self._since_snapshot >= self.config.snapshot_every_txns:
                self._snapshot_wakeup.set()

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
            # back to it if a newer one turns out to be damaged.
            await trio.to_thread.run_sync(self._log.purge_through, retained[0][0])
        self.snapshots_taken += 1
        log.info("snapshot at zxid %#x (%d bytes)", image.last_zxid, len(payload))
        return image.last_zxid

    async def _serve_ticks(self) -> None:
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
            error = ThrottledOpError(f"too many connections ({self.config.max_connections})")
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
        stream = conn.stream
        pipeline = self.pipeline
        decode_body = protocol.decode_body
        decode_request = protocol.decode_request
        # Frames that arrived together with the handshake are already buffered.
        data = b""
        while True:
            if data:
                reader.feed(data)
            now_ms = self._now_ms()
            try:
                for body in reader:
                    try:
                        xid, request = decode_request(decode_body(body))
                    except ProtocolError as error:
                        if error.xid is None:
                            raise
                        log.info("%s: bad request xid %d: %s", peer, error.xid, error)
                        conn.push(protocol.encode_frame([error.xid, pipeline.tree.last_zxid, error.code, str(error)]))
                        continue
                    pipeline.request(conn.conn_id, xid, request, now_ms)
            except ProtocolError as error:
                log.info("%s: %s; closing the connection", peer, error)
                self._pump()
                return
            self._pump()
            if conn.closing:
                return
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                return

    async def _write_loop(self, conn: _ClientConnection, scope: trio.CancelScope) -> None:
        stream = conn.stream
        try:
            while True:
                await conn.wakeup.wait()
                conn.wakeup = trio.Event()
                if conn.outbox:
                    if conn.buffered > OUTBOX_BYTES_MAX:
                        log.warning("connection %d is not reading its replies; closing it", conn.conn_id)
                        scope.cancel()
                        return
                    data = b"".join(conn.outbox)
                    conn.outbox.clear()
                    conn.buffered = 0
                    await stream.send_all(data)
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
async def open_server(config: ServerConfig) -> AsyncIterator[Server]:
    """Recover the state under ``config.data_dir`` and serve clients until the block ends.

    Yields the running :class:`Server`, already listening (``server.address``).

    Raises:
        coord.recovery.RecoveryError: the data directory is damaged beyond what can
            be recovered without losing acknowledged writes.
    """
    recovered = await trio.to_thread.run_sync(
        lambda: recover(config.data_dir, log_map_bytes=config.log_map_bytes, new_epoch=True)
    )
    server = Server(config, recovered)
    try:
        listeners = await trio.open_tcp_listeners(config.listen_port, host=config.listen_host)
        async with trio.open_nursery() as nursery:
            server.address = listeners[0].socket.getsockname()[:2]
            nursery.start_soon(server._serve_log)
            nursery.start_soon(server._serve_ticks)
            nursery.start_soon(server._serve_snapshots)
            nursery.start_soon(trio.serve_listeners, server._handle, listeners)
            log.info("serving clients on %s", server.connect_string)
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(recovered.log.close)


async def serve(config: ServerConfig, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a server until cancelled; ``task_status.started(server)`` once listening."""
    async with open_server(config) as server:
        task_status.started(server)
        await trio.sleep_forever()
