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

Watch routing (the server's table, see :mod:`coord.watches`)
    NODE_CREATED, NODE_DATA_CHANGED fire data and exist watches on the path;
    NODE_DELETED also child watches; NODE_CHILDREN_CHANGED child watches only. Every
    event goes to persistent watchers on the path, and (except NODE_CHILDREN_CHANGED)
    to recursive watchers on the path and its ancestors. The server notifies a session
    once per change however many of its watches match, so the client fans one event
    out to all local watchers, as ZooKeeper's client does.

Left out: ACLs and auth, chroot, read-only mode.
"""

from __future__ import annotations

import collections
import logging
import struct
from collections.abc import Callable
from typing import Any, Final

import cbor2

from client._watch import Watch, WatchEvent, WatchStream, _fresh
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
    EventType,
    FrameReader,
    Op,
    ProtocolError,
    SetWatchesRequest,
    Stat,
    WatcherType,
    decode_body,
    decode_event,
    decode_handshake_reply,
    decode_reply,
    encode_frame,
    encode_request,
    frame_bytes_max,
)

log = logging.getLogger(__name__)

# Plain ints: cheaper to compare and to encode than the IntEnum members.
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

SET_WATCHES_BYTES_MAX: Final = 256 * 1024
"""Watched paths beyond this many bytes go into further SetWatches requests, so a
client with a huge number of watches never sends a frame over the server's limit."""

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
        # armed watches: path -> watchers, in arming order
        self.data_watches: dict[str, list[Watch]] = {}
        self.exist_watches: dict[str, list[Watch]] = {}
        self.child_watches: dict[str, list[Watch]] = {}
        self.persistent_watches: dict[str, list[WatchStream]] = {}
        self.recursive_watches: dict[str, list[WatchStream]] = {}

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

    def receive_handshake(self, data: bytes) -> ConnectResponse | None:
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
        reader.feed(data)
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
        self._prune_fired()
        for request in self._set_watches_requests():
            self.send(encode_request(0, request))

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
        for registry in (self.data_watches, self.exist_watches, self.child_watches):
            for watches in registry.values():
                for watch in watches:
                    watch._fail(error)
            registry.clear()
        for streams_by_path in (self.persistent_watches, self.recursive_watches):
            for streams in streams_by_path.values():
                for stream in streams:
                    stream._fail(error)
            streams_by_path.clear()

    # --- requests -----------------------------------------------------------------------

    def send(self, item: list[Any], path: str = "", watch: Any = None, extra: Any = None) -> Pending:
        """Queue one request: ``item`` is its wire array with a placeholder xid first.

        Returns:
            The slot its reply will complete.

        Raises:
            BadArgumentsError: the frame would be over the server's limit (nothing sent).
        """
        xid = self._xid + 1
        if xid > XID_MAX:
            xid = 1
        self._xid = xid
        item[0] = xid
        body = _dumps(item)
        size = len(body)
        if size > self.send_frame_bytes_max:
            raise BadArgumentsError(
                f"request for {path!r} is {size} bytes, over the limit of {self.send_frame_bytes_max}"
            )
        out = self.outgoing
        out += _pack(size)
        out += body
        slot = Pending(xid, item[1], path, watch, extra)
        self.pending.append(slot)
        return slot

    # --- replies and events -----------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Bytes from the server: complete pending requests, fire watches.

        Raises:
            ProtocolError: a malformed frame, or a reply out of order. The connection
                must be dropped (replies processed before the bad frame stand).
        """
        reader = self._reader
        assert reader is not None
        if data:
            reader.feed(data)
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
                self._dispatch(decode_event(zxid, result))
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
                _arm(self.data_watches, slot.path, slot.watch)
        elif op == SET_DATA:
            slot.value = Stat.from_wire(result)
        elif op == EXISTS:
            if result is None:
                slot.value = None
                if slot.watch is not None:
                    _arm(self.exist_watches, slot.path, slot.watch)
            else:
                slot.value = Stat.from_wire(result)
                if slot.watch is not None:
                    _arm(self.data_watches, slot.path, slot.watch)
        elif op == GET_CHILDREN:
            names, stat = result
            if type(names) is not list or not all(type(name) is str for name in names):
                raise TypeError("children must be an array of strings")
            slot.value = (names, None if stat is None else Stat.from_wire(stat))
            if slot.watch is not None:
                _arm(self.child_watches, slot.path, slot.watch)
        elif op == MULTI:
            slot.value = self._multi_succeeded(slot, result)
        elif op == SYNC:
            if type(result) is not str:
                raise TypeError("sync answers a path")
            slot.value = result
        elif op == ADD_WATCH:
            if not slot.watch.is_ended:  # else its caller was cancelled: nobody would read it
                registry = self.recursive_watches if slot.extra else self.persistent_watches
                registry.setdefault(slot.path, []).append(slot.watch)
        elif op == REMOVE_WATCHES:
            self._removed(slot.path, slot.extra)
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

    def _dispatch(self, event: Any) -> None:
        """Route one pushed event to the local watchers it concerns."""
        kind = event.type
        path = event.path
        fired = WatchEvent(kind, path, event.zxid)
        one_shot: list[Watch] = []
        if kind is EventType.NODE_CREATED or kind is EventType.NODE_DATA_CHANGED:
            one_shot += self.data_watches.pop(path, ())
            one_shot += self.exist_watches.pop(path, ())
        elif kind is EventType.NODE_DELETED:
            one_shot += self.data_watches.pop(path, ())
            one_shot += self.exist_watches.pop(path, ())
            one_shot += self.child_watches.pop(path, ())
        elif kind is EventType.NODE_CHILDREN_CHANGED:
            one_shot += self.child_watches.pop(path, ())
        elif kind is EventType.DATA_WATCH_REMOVED or kind is EventType.CHILD_WATCH_REMOVED:
            # our server does not push these (the client makes them when remove_watches
            # succeeds), but a server that does is routed the same way
            self._removed(path, WatcherType.DATA if kind is EventType.DATA_WATCH_REMOVED else WatcherType.CHILDREN)
            return
        elif kind is EventType.PERSISTENT_WATCH_REMOVED:
            self._removed(path, WatcherType.PERSISTENT)
            self._removed(path, WatcherType.PERSISTENT_RECURSIVE)
            return
        for watch in one_shot:
            watch._fire(fired)
        for stream in self.persistent_watches.get(path, ()):
            stream._put(fired)
        if self.recursive_watches and kind is not EventType.NODE_CHILDREN_CHANGED:
            recursive = self.recursive_watches
            ancestor = path
            while True:
                for stream in recursive.get(ancestor, ()):
                    stream._put(fired)
                if ancestor == "/":
                    break
                index = ancestor.rfind("/")
                ancestor = ancestor[:index] if index > 0 else "/"

    def _removed(self, path: str, watcher_type: WatcherType) -> None:
        """``remove_watches`` succeeded: tell the local watchers, as ZooKeeper does."""
        if watcher_type in (WatcherType.DATA, WatcherType.ANY):
            removed = WatchEvent(EventType.DATA_WATCH_REMOVED, path, self.last_zxid)
            for watch in [*self.data_watches.pop(path, ()), *self.exist_watches.pop(path, ())]:
                watch._fire(removed)
        if watcher_type in (WatcherType.CHILDREN, WatcherType.ANY):
            removed = WatchEvent(EventType.CHILD_WATCH_REMOVED, path, self.last_zxid)
            for watch in self.child_watches.pop(path, ()):
                watch._fire(removed)
        registries = []
        if watcher_type in (WatcherType.PERSISTENT, WatcherType.ANY):
            registries.append(self.persistent_watches)
        if watcher_type in (WatcherType.PERSISTENT_RECURSIVE, WatcherType.ANY):
            registries.append(self.recursive_watches)
        removed = WatchEvent(EventType.PERSISTENT_WATCH_REMOVED, path, self.last_zxid)
        for registry in registries:
            for stream in registry.pop(path, ()):
                stream._put(removed)
                stream._end()

    # --- watch registry -----------------------------------------------------------------

    def forget_stream(self, stream: WatchStream) -> bool:
        """Drop a persistent watch stream locally (its ``add_watch`` block was left).

        Returns:
            Whether it was the last local watcher of its kind on its path (then the
            server-side watch should be removed too).
        """
        registry = self.recursive_watches if stream.recursive else self.persistent_watches
        streams = registry.get(stream.path)
        if streams is None or stream not in streams:
            return False
        streams.remove(stream)
        if streams:
            return False
        del registry[stream.path]
        return True

    def has_watches(self) -> bool:
        """Whether any watch is armed (so a reconnect must send SetWatches)."""
        return bool(
            self.data_watches
            or self.exist_watches
            or self.child_watches
            or self.persistent_watches
            or self.recursive_watches
        )

    def _prune_fired(self) -> None:
        """Forget watches that already fired through another registration."""
        for registry in (self.data_watches, self.exist_watches, self.child_watches):
            for path in [path for path, watches in registry.items() if all(w.is_fired for w in watches)]:
                del registry[path]

    def _set_watches_requests(self) -> list[SetWatchesRequest]:
        """The SetWatches request(s) that re-arm every watch (none if nothing is armed)."""
        kinds = ("data", "exist", "child", "persistent", "persistent_recursive")
        registries = (
            self.data_watches,
            self.exist_watches,
            self.child_watches,
            self.persistent_watches,
            self.recursive_watches,
        )
        requests: list[SetWatchesRequest] = []
        batch: dict[str, list[str]] = {kind: [] for kind in kinds}
        size = 0
        for kind, registry in zip(kinds, registries, strict=True):
            for path in registry:
                path_bytes = len(path.encode()) + 8
                if size and size + path_bytes > SET_WATCHES_BYTES_MAX:
                    requests.append(self._set_watches(batch))
                    batch = {kind: [] for kind in kinds}
                    size = 0
                batch[kind].append(path)
                size += path_bytes
        if size:
            requests.append(self._set_watches(batch))
        return requests

    def _set_watches(self, batch: dict[str, list[str]]) -> SetWatchesRequest:
        return SetWatchesRequest(relative_zxid=self.last_zxid, **{kind: tuple(paths) for kind, paths in batch.items()})


def _arm(registry: dict[str, list[Watch]], path: str, watch: Watch) -> None:
    watches = registry.get(path)
    if watches is None:
        registry[path] = [watch]
    elif watch not in watches:
        watches.append(watch)


__all__ = ["Pending", "SessionCore", "error_for"]
