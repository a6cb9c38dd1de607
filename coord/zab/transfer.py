"""A SNAP as a stream: the leader's sender and the follower's receiver of one snapshot.

Theory of operation
-------------------
A snapshot may be far larger than any message should be (the peer frame limit) or
than a server should hold twice in memory. So the leader never builds it whole: its
:class:`~coord.zab.types.DurableState` gives the state as a lazy iterator of byte
pieces (the tree is serialised a chunk of nodes at a time, from an image taken at one
zxid), and :class:`SnapSender` cuts those pieces into :class:`SnapChunk`\\ s of at most
``chunk_bytes``. It keeps at most ``window_chunks`` chunks beyond the follower's last
:class:`SnapAck`; the follower acknowledges a chunk once it is durable in its staging
area, so the stream moves at the pace of the slower of the network and the
follower's disk, and neither side queues more than the window. The last message is
:class:`SnapEnd` with the total size and the sha256 of the whole stream.

:class:`SnapReceiver` checks that chunks come in order and computes the digest as
they pass; the follower emits each as a
:class:`~coord.zab.types.SnapshotChunkRecord` (staged, it changes nothing), and on a
matching :class:`SnapEnd` one :class:`~coord.zab.types.SnapshotRecord` that installs
the staged snapshot atomically. A follower that crashes or gives up mid-transfer has
its old state intact (the staging is discarded); one that receives a damaged stream
gives up and syncs again.

Both are plain objects with no I/O; the leader and follower roles drive them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from coord.zab.messages import SnapChunk, SnapEnd
from coord.zab.types import Zxid


class SnapSender:
    """The leader's side of one snapshot sent to one follower."""

    __slots__ = (
        "_buffer",
        "_chunk_bytes",
        "_hasher",
        "_pieces",
        "_window_bytes",
        "acked",
        "is_finished",
        "sent",
        "zxid",
    )

    def __init__(self, zxid: Zxid, pieces: Iterator[bytes], *, chunk_bytes: int, window_chunks: int) -> None:
        if chunk_bytes < 1 or window_chunks < 1:
            raise ValueError(
                f"a SNAP needs chunk_bytes >= 1 and window_chunks >= 1, not {chunk_bytes}, {window_chunks}"
            )
        self.zxid = zxid
        self._pieces = pieces
        self._buffer = b""
        self._chunk_bytes = chunk_bytes
        self._window_bytes = chunk_bytes * window_chunks
        self._hasher = hashlib.sha256()
        self.sent = 0  # bytes sent
        self.acked = 0  # bytes the follower holds durably
        self.is_finished = False  # SnapEnd sent

    def next_messages(self, handshake: int) -> list[SnapChunk | SnapEnd]:
        """The chunks the window allows now, and the :class:`SnapEnd` after the last one."""
        messages: list[SnapChunk | SnapEnd] = []
        while not self.is_finished and self.sent - self.acked < self._window_bytes:
            chunk = self._take()
            if chunk:
                self._hasher.update(chunk)
                messages.append(SnapChunk(handshake=handshake, offset=self.sent, data=chunk))
                self.sent += len(chunk)
            else:
                messages.append(SnapEnd(handshake=handshake, size=self.sent, digest=self._hasher.digest()))
                self.is_finished = True
                self._pieces = iter(())  # let the image go
        return messages

    def on_ack(self, offset: int) -> bool:
        """The follower holds the bytes before ``offset``; whether that is progress."""
        if self.acked < offset <= self.sent:
            self.acked = offset
            return True
        return False

    def _take(self) -> bytes:
        """The next chunk: up to ``chunk_bytes`` bytes of the stream (b"" at its end)."""
        buffer = self._buffer
        while len(buffer) < self._chunk_bytes:
            piece = next(self._pieces, None)
            if piece is None:
                break
            buffer = buffer + piece if buffer else piece
        chunk, self._buffer = buffer[: self._chunk_bytes], buffer[self._chunk_bytes :]
        return chunk


class SnapReceiver:
    """The follower's side of one snapshot: order and integrity of the chunks."""

    __slots__ = ("_hasher", "received", "zxid")

    def __init__(self, zxid: Zxid) -> None:
        self.zxid = zxid
        self.received = 0
        self._hasher = hashlib.sha256()

    def accept(self, offset: int, data: bytes) -> str | None:
        """Take the chunk at ``offset``; a reason to give up, or None."""
        if offset != self.received:
            return f"snapshot chunk at offset {offset}, expected {self.received}"
        if not data:
            return f"an empty snapshot chunk at offset {offset}"
        self._hasher.update(data)
        self.received += len(data)
        return None

    def check_end(self, size: int, digest: bytes) -> str | None:
        """The stream ended: a reason to give up if it is not what the leader sent, or None."""
        if size != self.received:
            return f"snapshot of {size} bytes announced, {self.received} received"
        if digest != self._hasher.digest():
            return "snapshot digest mismatch: damaged in transfer"
        return None


__all__ = ["SnapReceiver", "SnapSender"]
