"""Sans-IO core of a client session: requests out, replies and events in, watches.

Theory of operation
    :class:`SessionCore` holds everything about a session that is not I/O: the
    session credentials, ``last_zxid``, the xid counter, the FIFO of requests awaiting
    their reply (:class:`Pending`), the outgoing byte buffer, the frame splitter of
    the current connection, and the registry of armed watches. The trio shell
    (:mod:`client._connection`) moves bytes between it and a socket.

    inputs
        :meth:`~SessionCore.begin_connection` (a new socket: returns the handshake
        frame), :meth:`~SessionCore.receive_handshake` (bytes until the answer is
        complete), :meth:`~SessionCore.connection_made` (session bound: queues the
        ``SetWatches`` that restores armed watches, *first* in the buffer),
        :meth:`~SessionCore.send` (a request), :meth:`~SessionCore.receive` (bytes
        from the socket), :meth:`~SessionCore.connection_lost`,
        :meth:`~SessionCore.expire`.
    outputs
        ``outgoing`` (bytes to write, taken whole with :meth:`~SessionCore.take_outgoing`,
        so one ``send_all`` carries everything queued), completed :class:`Pending`
        slots (their ``waiter`` is handed to the injected ``wake`` function, which the
        shell sets to :func:`trio.lowlevel.reschedule`), fired watches, and
        ``expired`` once a reply said the session is gone.

Ordering
    Replies arrive in the order requests were sent (the server keeps per-connection
    FIFO), so the reply always belongs to the oldest pending request; a reply whose
    xid does not match it means the stream is broken (:class:`ProtocolError`, the
    shell drops the connection). A watch is armed when its request's *reply* is
    processed, before any later frame: the server sends a watch's event only after
    the reply that armed it, and events before the replies of later requests, so
    nothing can fire an unarmed watch. Every frame's zxid raises ``last_zxid``; the
    handshake answer's zxid does not (``last_zxid`` is what the *client* has seen, and
    ``SetWatches`` relies on it to let the server replay what changed since).

Watches
    They live in a :class:`~client._registry.WatchRegistry` (``watches``), which
    routes events to them and builds the SetWatches requests that restore them.

Left out: ACLs and auth, chroot, read-only mode.
"""

from __future__ import annotations

import collections
import logging
import struct
from collections.abc import Callable
from typing import Any, Final

import cbor2

from client._registry import WatchRegistry
from client._watch import WatchEvent, _fresh
from coord.errors import (
    BadArgumentsError,
    ConnectionLossError,
    CoordError,
    RolledBackError,
    RuntimeInconsistencyError,
    SessionExpiredError,
    error_for_code,
    make_error,
)
from coord.protocol import (
    DATA_BYTES_MAX_DEFAULT,
    WATCH_XID,
    ConnectRequest,
    ConnectResponse,
    FrameReader,
    Op,
    ProtocolError,
    Request,
    Stat,
    decode_body,
    decode_event,
    decode_handshake_reply,
    decode_reply,
    encode_frame,
    encode_request,
    frame_bytes_max,
)

log = logging.getLogger(__name__)

# Plain ints, as in Pending.op: cheaper to compare than the IntEnum members.
CREATE: Final = int(Op.CREATE)
DELETE: Final = int(Op.DELETE)
EXISTS: Final = int(Op.EXISTS)
GET_DATA: Final = int(Op.GET_DATA)
SET_DATA: Final = int(Op.SET_DATA)
GET_CHILDREN: Final = int(Op.GET_CHILDREN)
SYNC: Final = int(Op.SYNC)
PING: Final = int(Op.PING)
CHECK: Final = int(Op.CHECK)
MULTI: Final = int(Op.MULTI)
REMOVE_WATCHES: Final = int(Op.REMOVE_WATCHES)
SET_WATCHES: Final = int(Op.SET_WATCHES)
ADD_WATCH: Final = int(Op.ADD_WATCH)
CLOSE_SESSION: Final = int(Op.CLOSE_SESSION)

XID_MAX: Final = (1 << 31) - 1
RECEIVE_FRAME_BYTES_MIN: Final = 16 << 20
"""Replies may be larger than any request (a node with many children), so the
client accepts frames up to this size even when ``data_bytes_max`` is small."""

_SESSION_EXPIRED: Final = SessionExpiredError.code
_pack = struct.Struct(">I").pack
_dumps = cbor2.dumps


def _no_wake(waiter: Any) -> None:
    """The default ``wake``: nothing waits (tests inspect the slots)."""


class Pending:
    """One request awaiting its reply.

    ``op`` is the wire op code; ``path`` names the node for error messages and watch
    registration; ``watch`` is the Watch or WatchStream the request arms; ``extra``
    is op-specific (a multi's ops, the mode of an add_watch, ...). The shell parks the
    calling task in ``waiter``; a cancelled caller sets it back to None and the reply
    is then simply dropped.
    """

    __slots__ = ("done", "error", "extra", "op", "path", "value", "waiter", "watch", "xid")

    def __init__(self, xid: int, op: int, path: str, watch: Any, extra: Any) -> None:
        self.xid = xid
        self.op = op
        self.path = path
        self.watch = watch
        self.extra = extra
        self.waiter: Any = None
        self.done = False
        self.value: Any = None
        self.error: CoordError | None = None

    def __repr__(self) -> str:
        return f"<Pending xid={self.xid} op={self.op} path={self.path!r} done={self.done}>"


def error_for(code: int, message: Any, path: str) -> CoordError:
    """The exception for an error reply, its message naming ``path``."""
    text = message if type(message) is str and message else ""
    if not text:
        doc = error_for_code(code).__doc__
        text = doc.splitlines()[0] if doc else f"error {code}"
    if path and path not in text:
        text = f"{text}: {path}"
    return make_error(code, text)


class SessionCore:
    """The state of one client session, independent of any socket (see module doc).

    Args:
        timeout_ms: the session timeout to ask the server for.
        data_bytes_max: the largest value a request may carry; requests are refused
            (``BadArgumentsError``) when their frame would exceed the matching limit.
        wake: called with a :class:`Pending`'s ``waiter`` when its reply is in.
    """

    def __init__(
        self,
        *,
        timeout_ms: int,
        data_bytes_max: int = DATA_BYTES_MAX_DEFAULT,
        wake: Callable[[Any], None] = _no_wake,
    ) -> None:
        self.session_id = 0
        self.password = b""
        self.requested_timeout_ms = timeout_ms
        self.timeout_ms = timeout_ms
        """The negotiated timeout once a session exists, else the requested one."""
        self.last_zxid = 0
        self.server_id = 0
        self.outgoing = bytearray()
        self.pending: collections.deque[Pending] = collections.deque()
        self.expired: CoordError | None = None
        """Set when the session is known to be over (a reply or the handshake said so)."""
        self.data_bytes_max = data_bytes_max
        self.send_frame_bytes_max = frame_bytes_max(data_bytes_max)
        self._receive_frame_bytes_max = max(self.send_frame_bytes_max, RECEIVE_FRAME_BYTES_MIN)
        self._reader: FrameReader | None = None
        self._early_frames: list[bytes] = []
        self._xid = 0
        self._wake = wake
        self.watches = WatchRegistry()

    # --- connection lifecycle ---------------------------------------------------------

    def begin_connection(self) -> bytes:
        """A new connection: returns the handshake frame to send first."""
        assert not self.pending, "pending requests must fail before a new connection"
        self._reader = FrameReader(self._receive_frame_bytes_max)
        self._early_frames = []
        self.outgoing = bytearray()
        request = ConnectRequest(
            last_zxid=self.last_zxid,
            session_id=self.session_id,
            password=self.password,
            timeout_ms=self.timeout_ms if self.session_id else self.requested_timeout_ms,
        )
        return encode_frame(request.to_wire())

    def receive_handshake(self, data: bytes | bytearray) -> ConnectResponse | None:
        """Bytes that arrived before the handshake answer was complete.

        Returns:
            The server's answer once it is complete (frames after it stay buffered for
            :meth:`receive`), else None.

        Raises:
            CoordError: the server refused (``ServerBehindError``: try another server;
                ``SessionExpiredError``: the session is over, ``expired`` is set).
            ProtocolError: the answer is malformed.
        """
        reader = self._reader
        assert reader is not None
        reader.feed(data)  # trio gives bytes or bytearray
        # Take every complete frame: leaving a FrameReader's iteration early would
        # keep the current frame in its buffer. Frames after the answer wait in
        # _early_frames for receive().
        frames = list(reader)
        if frames:
            self._early_frames = frames[1:]
            answer = decode_handshake_reply(decode_body(frames[0]))
            if isinstance(answer, tuple):
                code, message = answer
                error = make_error(code, message)
                if isinstance(error, SessionExpiredError):
                    self.expired = error
                raise error
            if self.session_id and answer.session_id != self.session_id:
                # A server that hands out a new session instead of resuming ours means
                # ours is gone; never silently carry on with another session's id.
                error = SessionExpiredError(f"session {self.session_id:#x} was not resumed")
                self.expired = error
                raise error
            return answer
        return None

    def connection_made(self, answer: ConnectResponse) -> None:
        """The session is bound to the new connection: record it, restore watches.

        The SetWatches request(s) go into the buffer before anything else can, so the
        server re-arms every watch (and fires what was missed since ``last_zxid``)
        before it serves any new request.
        """
        self.session_id = answer.session_id
        self.password = answer.password
        self.timeout_ms = answer.timeout_ms
        self.server_id = answer.server_id
        for request in self.watches.set_watches_requests(self.last_zxid):
            self.send(request)

    def take_outgoing(self) -> bytearray:
        """Everything queued to send, in one buffer (the queue is then empty)."""
        out = self.outgoing
        self.outgoing = bytearray()
        return out

    def connection_lost(self, error: CoordError) -> None:
        """The connection is gone: every pending request fails with ``error``.

        Watches stay armed (they are restored on the next connection).
        """
        self._reader = None
        self.outgoing = bytearray()
        pending = self.pending
        self.pending = collections.deque()
        wake = self._wake
        for slot in pending:
            slot.error = _fresh(error)
            slot.done = True
            waiter = slot.waiter
            if waiter is not None:
                slot.waiter = None
                wake(waiter)

    def expire(self, error: CoordError) -> None:
        """The session is over: pending requests and every watch fail with ``error``."""
        if self.expired is None:
            self.expired = error
        self.connection_lost(error)
        self.watches.fail_all(error)

    # --- requests -----------------------------------------------------------------------

    def send(self, request: Request, path: str = "", watch: Any = None, extra: Any = None) -> Pending:
        """Queue one request, encoded by :func:`coord.protocol.encode_request` with the next xid.

        Returns:
            The slot its reply will complete.

        Raises:
            BadArgumentsError: the frame would be over the server's limit (nothing sent).
        """
        xid = self._xid + 1
        if xid > XID_MAX:
            xid = 1
        self._xid = xid
        item = encode_request(xid, request)
        body = _dumps(item)
        size = len(body)
        if size > self.send_frame_bytes_max:
            raise BadArgumentsError(
                f"request for {path!r} is {size} bytes, over the limit of {self.send_frame_bytes_max}"
            )
        out = self.outgoing
        out += _pack(size)
        out += body
        slot = Pending(xid, int(item[1]), path, watch, extra)
        self.pending.append(slot)
        return slot

    # --- replies and events -----------------------------------------------------------

    def receive(self, data: bytes | bytearray) -> None:
        """Bytes from the server: complete pending requests, fire watches.

        Raises:
            ProtocolError: a malformed frame, or a reply out of order. The connection
                must be dropped (replies processed before the bad frame stand).
        """
        reader = self._reader
        assert reader is not None
        if data:
            reader.feed(data)  # trio gives bytes or bytearray
        if self._early_frames:
            frames: Any = [*self._early_frames, *reader]
            self._early_frames = []
        else:
            frames = reader
        pending = self.pending
        for body in frames:
            xid, zxid, err, result = decode_reply(decode_body(body))
            if zxid > self.last_zxid:
                self.last_zxid = zxid
            if xid == WATCH_XID:
                pushed = decode_event(zxid, result)
                self.watches.dispatch(WatchEvent(pushed.type, pushed.path, zxid))
                continue
            if not pending:
                raise ProtocolError(f"a reply for xid {xid} with no request outstanding")
            slot = pending[0]
            if slot.xid != xid:
                raise ProtocolError(f"a reply for xid {xid} while xid {slot.xid} is the oldest outstanding")
            pending.popleft()
            try:
                if err:
                    self._failed(slot, err, result)
                else:
                    self._succeeded(slot, result)
            except (TypeError, ValueError, AttributeError, ProtocolError) as error:
                slot.error = ConnectionLossError(f"malformed reply for {slot.path or 'a request'}: {error}")
                slot.done = True
                if slot.waiter is not None:
                    self._wake(slot.waiter)
                    slot.waiter = None
                raise ProtocolError(f"malformed result for op {slot.op} on {slot.path!r}: {error}") from None
            slot.done = True
            waiter = slot.waiter
            if waiter is not None:
                slot.waiter = None
                self._wake(waiter)

    def _failed(self, slot: Pending, err: int, result: Any) -> None:
        if err == _SESSION_EXPIRED:
            slot.error = error_for(err, result, "")
            if self.expired is None:
                self.expired = slot.error
            return
        if slot.op == MULTI and type(result) is list and len(result) == 2 and result[0] is False:
            slot.value = self._multi_failed(slot, result[1])
            return
        slot.error = error_for(err, result, slot.path)
        if slot.op == SET_WATCHES:
            # nobody awaits it; the watches it carried stay armed here but will not fire
            log.warning("session %#x: restoring watches failed: %s", self.session_id, slot.error)

    def _succeeded(self, slot: Pending, result: Any) -> None:
        op = slot.op
        if op == CREATE:
            path, stat = result
            if type(path) is not str:
                raise TypeError("the created path must be a string")
            slot.value = (path, Stat.from_wire(stat))
        elif op == GET_DATA:
            data, stat = result
            if type(data) is not bytes:
                raise TypeError("data must be a byte string")
            slot.value = (data, Stat.from_wire(stat))
            if slot.watch is not None:
                self.watches.arm(self.watches.data, slot.path, slot.watch)
        elif op == SET_DATA:
            slot.value = Stat.from_wire(result)
        elif op == EXISTS:
            if result is None:
                slot.value = None
                if slot.watch is not None:
                    self.watches.arm(self.watches.exist, slot.path, slot.watch)
            else:
                slot.value = Stat.from_wire(result)
                if slot.watch is not None:
                    self.watches.arm(self.watches.data, slot.path, slot.watch)
        elif op == GET_CHILDREN:
            names, stat = result
            if type(names) is not list or not all(type(name) is str for name in names):
                raise TypeError("children must be an array of strings")
            slot.value = (names, None if stat is None else Stat.from_wire(stat))
            if slot.watch is not None:
                self.watches.arm(self.watches.child, slot.path, slot.watch)
        elif op == MULTI:
            slot.value = self._multi_succeeded(slot, result)
        elif op == SYNC:
            if type(result) is not str:
                raise TypeError("sync answers a path")
            slot.value = result
        elif op == ADD_WATCH:
            self.watches.add_stream(slot.watch)
        elif op == REMOVE_WATCHES:
            self.watches.removed(slot.path, slot.extra, self.last_zxid)
        # DELETE, PING, SET_WATCHES, CLOSE_SESSION: nothing to decode

    def _multi_succeeded(self, slot: Pending, result: Any) -> list[Any]:
        ok, items = result
        if ok is False:
            return self._multi_failed(slot, items)
        if ok is not True or type(items) is not list:
            raise TypeError("a multi answers [True, results] or [False, codes]")
        values: list[Any] = []
        for (op, _path), item in zip(slot.extra, items, strict=True):
            if op == CREATE:
                path, _stat = item
                if type(path) is not str:
                    raise TypeError("the created path must be a string")
                values.append(path)
            elif op == SET_DATA:
                values.append(Stat.from_wire(item))
            else:  # delete, check
                values.append(True)
        return values

    def _multi_failed(self, slot: Pending, codes: Any) -> list[Any]:
        if type(codes) is not list:
            raise TypeError("a failed multi answers an array of codes")
        values: list[Any] = []
        for (_op, path), code in zip(slot.extra, codes, strict=True):
            if type(code) is not int:
                raise TypeError("multi codes must be integers")
            if code == RolledBackError.code:
                values.append(RolledBackError(f"rolled back: {path}"))
            elif code == RuntimeInconsistencyError.code:
                values.append(RuntimeInconsistencyError(f"not run after an earlier op failed: {path}"))
            else:
                values.append(error_for(code, None, path))
        return values


__all__ = ["Pending", "SessionCore", "error_for"]
