"""The shell's client connections: per connection, a reader task and a writer task.

Kept apart from :mod:`coord.server.shell` because serving a client socket is its own
job, with its own rules (the handshake deadline, reading only while the core wants
input, fairness between connections), while the rest of the shell drives the disk,
the clock and the peers. :class:`ClientConnections` is a base class of
:class:`~coord.server.shell.Server`: the code here works on the server's core and
carries out what it asks with the server's ``_carry_out``, like every other task of
the shell.

- The reader (:meth:`ClientConnections._read_loop`) turns frames into the core's inputs,
  while the core wants input from that connection (backpressure: see coord.pipeline).
- The writer (:meth:`ClientConnections._write_loop`) flushes everything queued for the
  connection in one ``send_all`` (replies coalesce under load) and reports the bytes
  sent back to the core.

Two handshakes open no session and never reach the core's pipeline: a status request
is answered with one map, and a backup request (``coord backup``) with the tree's image
(:meth:`ClientConnections._send_backup`): taken at once, so it is of one zxid, and sent
in frames of at most :data:`BACKUP_FRAME_BYTES` as fast as the client takes them,
each encoded in a worker thread while the server goes on serving.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import trio

from coord import protocol
from coord.config import ServerConfig
from coord.errors import CoordError, NotLeaderError, ThrottledOpError, error_for_code
from coord.protocol import ConnectRequest, FrameReader, ProtocolError, StatusRequest
from coord.protocol.handshake import BackupEnd, BackupPiece, BackupRequest, BackupStart
from coord.server.core import ServerCore
from coord.tls import ClientTls
from coord.tree import DataTree, TreeImage
from coord.tree_image import CHUNK_NODES

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
RECEIVE_BYTES = 256 * 1024
READ_BATCH_FRAMES = 64
"""Requests handled from one connection before the others get their turn."""
BACKUP_FRAME_BYTES = 1 << 20
"""Image bytes in one backup frame: within every client's frame limit (1 MiB + 64 KiB at least)."""
BACKUP_STALL_S = 60.0
BACKUPS_AT_ONCE = 2
"""Backups a server sends at the same time; more are refused. Each holds an image of the
tree (a shallow copy: about 40 MB for a million znodes) for as long as it takes, and
the request needs no session, so without a bound anyone reaching the client port could
pile them up."""
"""A backup client that takes no frame for this long is given up on (and its image freed)."""


class ClientConnection:
    """The shell's side of one client connection: its socket and outgoing buffer."""

    __slots__ = ("closing", "conn_id", "outbox", "resume", "scope", "stream", "wakeup")

    def __init__(self, conn_id: int, stream: trio.abc.Stream) -> None:
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


class ClientConnections:
    """The part of :class:`~coord.server.shell.Server` that serves client connections.

    Its state is set by ``Server.__init__``; what it uses of the rest of the server is
    declared below.
    """

    config: ServerConfig
    core: ServerCore
    _conns: dict[int, ClientConnection]
    _ids: itertools.count[int]
    _frame_bytes_max: int
    _backups_running: int
    client_tls: ClientTls | None  # TLS on this port ([tls]); None: plain TCP

    if TYPE_CHECKING:

        def status(self) -> dict[str, Any]: ...

        def admits_clients(self) -> bool: ...

        def _carry_out(self) -> None: ...

        @staticmethod
        def _now_ms() -> int: ...

    async def _handle(self, socket_stream: trio.SocketStream) -> None:
        conn_id = next(self._ids)
        peer = _peer_name(socket_stream)
        stream: trio.abc.Stream = socket_stream
        if self.client_tls is not None:
            # Only TLS on this port: the TLS handshake runs on the first read, inside the
            # handshake timeout; a client that does not speak it fails there and is closed.
            stream = trio.SSLStream(socket_stream, self.client_tls.context, server_side=True)
        conn = ClientConnection(conn_id, stream)
        try:
            with conn.scope:
                if not self.admits_clients():
                    return
                await self._converse(conn, peer)
        except* (trio.BrokenResourceError, trio.ClosedResourceError) as lost:
            # A reset (the client died with replies unread), or a failed TLS handshake,
            # ends this connection only.
            first = lost.exceptions[0]
            if isinstance(first.__cause__, ssl.SSLError):
                log.info("%s: TLS refused (%s); closing", peer, first.__cause__)
            else:
                log.info("%s: connection lost (%s)", peer, first)
        finally:
            self._conns.pop(conn_id, None)
            self.core.client_closed(conn_id)
            self._carry_out()
            with trio.move_on_after(1, shield=True):
                await stream.aclose()

    async def _converse(self, conn: ClientConnection, peer: str) -> None:
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
        if isinstance(handshake, BackupRequest):
            await self._send_backup(stream, peer)
            return
        if len(self._conns) >= self.config.max_connections:
            error: CoordError = ThrottledOpError(f"too many connections ({self.config.max_connections})")
            await stream.send_all(protocol.encode_frame(protocol.handshake_error(error.code, str(error))))
            return
        self._conns[conn.conn_id] = conn
        self.core.open_client(conn.conn_id, handshake, self._now_ms())
        self._carry_out()
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
        self, stream: trio.abc.Stream, reader: FrameReader, peer: str
    ) -> ConnectRequest | StatusRequest | BackupRequest | None:
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

    async def _read_loop(self, conn: ClientConnection, reader: FrameReader, peer: str) -> None:
        """Requests in, while the pipeline wants them (backpressure: see coord.pipeline).

        Frames that arrived together with the handshake are already in ``reader``; they
        wait, like everything after them, until the pipeline has answered the handshake."""
        stream = conn.stream
        conn_id = conn.conn_id
        decode_body = protocol.decode_body
        decode_request = protocol.decode_request
        while True:
            core = self.core
            while not core.wants_input(conn_id):
                if conn.closing or not core.has_connection(conn_id):
                    return
                conn.resume = trio.Event()
                await conn.resume.wait()
            now_ms = self._now_ms()
            try:
                if not reader.ready():
                    data = await stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        return
                    reader.feed(data)
                    continue
                for batch, body in enumerate(reader, 1):
                    try:
                        xid, request = decode_request(decode_body(body))
                    except ProtocolError as error:
                        if error.xid is None:
                            raise
                        log.info("%s: bad request xid %d: %s", peer, error.xid, error)
                        core.client_bad_request(conn_id, error.xid, error_for_code(error.code)(str(error)))
                    else:
                        core.client_request(conn_id, xid, request, now_ms, len(body) + 4)
                    if batch >= READ_BATCH_FRAMES or not core.wants_input(conn_id):
                        break
            except ProtocolError as error:
                log.info("%s: %s; closing the connection", peer, error)
                core.flush()
                self._carry_out()
                return
            core.flush()
            self._carry_out()
            if conn.closing:
                return
            # Let the other connections' tasks run: one client's pipelined burst must
            # not hold the loop (fairness; the rest of its frames stay in ``reader``).
            await trio.lowlevel.checkpoint()

    async def _write_loop(self, conn: ClientConnection, scope: trio.CancelScope) -> None:
        stream = conn.stream
        try:
            while True:
                await conn.wakeup.wait()
                conn.wakeup = trio.Event()
                if conn.outbox:
                    data = b"".join(conn.outbox)
                    conn.outbox.clear()
                    await stream.send_all(data)
                    # Unsent bytes are the core's to count (it holds reads and
                    # pauses or aborts the connection by them).
                    self.core.client_sent(conn.conn_id, len(data), self._now_ms())
                    self._carry_out()
                if conn.closing and not conn.outbox:
                    scope.cancel()
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            scope.cancel()

    async def _send_backup(self, stream: trio.abc.Stream, peer: str) -> None:
        """Answer a backup request: the image of the tree as of now, then close.

        Only a serving server answers (it leads, or follows an established leader): the
        tree of one that is looking may be behind, or hold txns that never committed.
        """
        if not self.core.is_serving:
            error = NotLeaderError("this server is not serving (it has no established leader): back up another one")
            await stream.send_all(protocol.encode_frame(protocol.handshake_error(error.code, str(error))))
            return
        if self._backups_running >= BACKUPS_AT_ONCE:
            busy = ThrottledOpError(f"{BACKUPS_AT_ONCE} backups are being sent already; try again later")
            await stream.send_all(protocol.encode_frame(protocol.handshake_error(busy.code, str(busy))))
            return
        self._backups_running += 1
        try:
            await self._send_backup_image(stream, peer)
        finally:
            self._backups_running -= 1

    async def _send_backup_image(self, stream: trio.abc.Stream, peer: str) -> None:
        image = self.core.tree.image()  # shallow: one zxid, however long the sending takes
        log.info("%s: backup of zxid %#x (%d znodes) begins", peer, image.last_zxid, len(image.nodes))
        frames = _backup_frames(image, self.config.server_id)
        sent = 0
        while (frame := await trio.to_thread.run_sync(next, frames, None)) is not None:
            with trio.move_on_after(BACKUP_STALL_S) as stall:
                await stream.send_all(frame)  # waits while the client is slow: the flow control
            if stall.cancelled_caught:
                log.info("%s: backup client took nothing for %ss; closing", peer, BACKUP_STALL_S)
                return
            sent += len(frame)
        log.info("%s: backup of zxid %#x sent (%d bytes)", peer, image.last_zxid, sent)


def _backup_frames(image: TreeImage, server_id: int) -> Iterator[bytes]:
    """The frames answering a backup request: start, the image in pieces, end.

    A generator, so that the caller encodes one frame at a time (in a worker thread).
    The image is the snapshot payload (:meth:`DataTree.image_pieces`): its first piece
    holds the head, then each piece is one chunk of up to CHUNK_NODES nodes (fewer only
    where large data splits one), which gives the progress reported in each frame.
    """
    encode = protocol.encode_frame
    nodes = len(image.nodes)
    yield encode(BackupStart(zxid=image.last_zxid, nodes=nodes, server_id=server_id).to_wire())
    hasher = hashlib.sha256()
    size = 0
    done = 0
    buffer = bytearray()
    for index, piece in enumerate(DataTree.image_pieces(image)):
        hasher.update(piece)
        size += len(piece)
        buffer += piece
        if index:
            done = min(nodes, done + CHUNK_NODES)
        while len(buffer) >= BACKUP_FRAME_BYTES:
            data = bytes(buffer[:BACKUP_FRAME_BYTES])
            del buffer[:BACKUP_FRAME_BYTES]
            yield encode(BackupPiece(data=data, nodes=done).to_wire())
    if buffer:
        yield encode(BackupPiece(data=bytes(buffer), nodes=nodes).to_wire())
    yield encode(BackupEnd(size=size, sha256=hasher.digest()).to_wire())


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "client"
    return f"{host}:{port}"


__all__ = [
    "BACKUP_FRAME_BYTES",
    "BACKUP_STALL_S",
    "HANDSHAKE_TIMEOUT_S",
    "READ_BATCH_FRAMES",
    "RECEIVE_BYTES",
    "ClientConnections",
]
