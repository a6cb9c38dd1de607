"""The pipeline's client connections: who is connected, what each is owed, and how much it may hold.

The request pipeline (:mod:`coord.pipeline`) decides what each request is answered (a
txn to propose, a read of the tree); this module keeps the per-connection side of it:
which connection holds which session or awaits which handshake, each connection's queue
of requests not yet answered (:class:`Entry`), the order its answers leave in, and the
memory every connection holds. The bookkeeping is in one place so that every frame a
connection is sent is counted, and every connection that goes away gives its bytes back.

Answers in request order
    A write's answer is known when its txn is applied (:meth:`Connections.write_applied`),
    a sync's once the leader confirmed it (:meth:`Connections.sync_confirmed`), a read's
    when it reaches the head of its queue; :meth:`Connections.flush` sends from the head
    while the answers are known, so a read that arrives behind a write of its session
    waits for that write and sees it. Watch events (:meth:`Connections.notify`) cannot
    wait: the pipeline queues them before the reply of the txn that fired them.

Backpressure (docs/limits.md)
    Memory is bounded by configuration, not by clients. Per connection the pipeline
    counts the requests not yet answered and their bytes, and the reply bytes handed
    to the shell but not yet reported sent (:meth:`Pipeline.sent`). A connection over
    ``connection_outstanding_max`` requests or ``connection_inflight_bytes_max`` request
    bytes, or over ``connection_outbox_bytes_max`` unsent bytes, is *paused*:
    :meth:`Pipeline.wants_input` says False and the shell stops reading its socket, so
    TCP pushes back on the client; ``resume`` in the output says when to read again.
    A read is served only while its connection is under its outbox bound and all
    connections together are under ``outbox_bytes_total_max``; otherwise it waits in
    the connection's queue (in order) until the bytes drain. Watch events and write
    replies cannot wait (their order is part of the contract), so a connection whose
    unsent bytes pass ``connection_outbox_bytes_max + frame_bytes_max`` (only a client
    that does not read gets there), or that stays over its bound for
    ``connection_stall_ms`` without a completed send, or that holds over
    :data:`SHED_BYTES` while all connections together are over
    ``outbox_bytes_total_max``, is *aborted*: closed at once, its queued bytes
    dropped, with a logged reason. Its session lives on.
"""

from __future__ import annotations

import collections
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from coord import protocol
from coord.errors import CoordError
from coord.pipeline_types import PipelineConfig, PipelineOutput
from coord.protocol import ConnectResponse, Request, WatchEvent
from coord.tree import ApplyResult
from coord.txn import Txn
from coord.watches import WatchManager

log = logging.getLogger(__name__)

_encode_frame = protocol.encode_frame


SHED_BYTES = 64 * 1024
"""While all connections' unsent bytes are over ``outbox_bytes_total_max``, a connection
holding more than this gets no read served, is closed when it is sent a watch event or
write reply, and the largest such are closed at the next tick until the total is under
the bound again. Connections holding less (they drain) are served as usual."""


class EntryKind(enum.Enum):
    WRITE = 1  # waits for its txn to be applied
    READ = 2  # served when it reaches the head of the queue
    SYNC = 3  # waits for the leader's quorum round (then served like a read)


@dataclass(slots=True)
class Entry:
    """One request of a connection that has not been answered yet."""

    xid: int
    kind: EntryKind
    request: Request | None
    frame: bytes | None = None  # the answer, once known
    close_after: bool = False
    zxid: int = 0  # a write's txn
    size: int = 0  # the request's frame bytes (counted in the connection's in-flight bytes)
    error: CoordError | None = None  # answered with this error in its turn (the frame built then)


@dataclass(slots=True)
class Connection:
    conn_id: int
    session_id: int = 0  # 0 until the handshake completes
    password: bytes = b""
    timeout_ms: int = 0
    queue: collections.deque[Entry] = field(default_factory=collections.deque)
    closed: bool = False
    inflight_bytes: int = 0  # request bytes of the entries in ``queue``
    unsent: int = 0  # reply bytes handed to the shell and not yet reported sent
    over_since_ms: int | None = None  # when ``unsent`` last went over the outbox bound
    paused: bool = False  # the shell was told to stop reading it


class Connections:
    """Every open connection of one pipeline (by id, by session, by handshake password),
    with its queue of unanswered requests and the unsent bytes all of them hold.

    Frames, closes, aborts and resumes go to :attr:`out`, the pipeline's current
    output (the pipeline replaces it when the shell takes it). ``clock`` gives the
    pipeline's current time (when a connection went over its outbox bound). The
    pipeline builds the answers: ``read`` serves a read whose turn came (as
    :func:`coord.reads.serve_read`), ``error_frame`` answers a request with an error."""

    def __init__(
        self,
        config: PipelineConfig,
        watches: WatchManager,
        out: PipelineOutput,
        *,
        clock: Callable[[], int],
        read: Callable[[Connection, int, Request], bytes],
        error_frame: Callable[[int, CoordError], bytes],
    ) -> None:
        self.config = config
        self.out = out
        self._watches = watches
        self._clock = clock
        self._read = read
        self._error_frame = error_frame
        self.by_id: dict[int, Connection] = {}
        self.by_session: dict[int, Connection] = {}
        self.handshakes: dict[bytes, Connection] = {}  # password -> connection awaiting CreateSession
        self.unsent_total = 0  # unsent reply bytes of all connections
        self._held: set[int] = set()  # connections with a read held for the total outbox bound

    # --- handshakes and going away ----------------------------------------------------

    def bind(self, conn: Connection, session_id: int, password: bytes, timeout_ms: int, zxid: int) -> None:
        """The connection's session exists: answer its handshake (``zxid``: the applied one)."""
        conn.session_id = session_id
        conn.password = password
        conn.timeout_ms = timeout_ms
        self.by_session[session_id] = conn
        reply = ConnectResponse(
            session_id=session_id,
            password=password,
            timeout_ms=timeout_ms,
            zxid=zxid,
            server_id=self.config.server_id,
        )
        self.send(conn, _encode_frame(reply.to_wire()))
        self.maybe_resume(conn)

    def session_created(self, session_id: int, password: bytes, timeout_ms: int, zxid: int) -> None:
        """A new session committed: answer the handshake that asked for it, if it is here."""
        conn = self.handshakes.pop(password, None)
        if conn is not None and not conn.closed:
            self.bind(conn, session_id, password, timeout_ms, zxid)

    def session_closed(self, session_id: int) -> None:
        """A session's close was applied."""
        conn = self.by_session.get(session_id)
        if conn is not None and not any(entry.close_after for entry in conn.queue):
            # Expired (not closed by its own request): hang up. The client's reconnect
            # is then refused with SessionExpiredError, as in ZooKeeper.
            self.close(conn)

    def refuse(self, conn: Connection, error: CoordError) -> None:
        """Answer the connection's handshake with ``error`` and close it."""
        self.send(conn, _encode_frame(protocol.handshake_error(error.code, str(error))))
        self.out.close.append(conn.conn_id)
        conn.closed = True
        self.by_id.pop(conn.conn_id, None)

    def close(self, conn: Connection) -> None:
        """Close the connection once the frames it was given are sent."""
        self.out.close.append(conn.conn_id)
        self.drop(conn)

    def drop(self, conn: Connection) -> None:
        """Forget a connection that is closed or gone: its unsent bytes stop counting,
        and its session's watches go (the client re-registers them when it reconnects)."""
        conn.closed = True
        self.by_id.pop(conn.conn_id, None)
        self.unsent_total -= conn.unsent
        conn.unsent = 0
        self._held.discard(conn.conn_id)
        if conn.session_id and self.by_session.get(conn.session_id) is conn:
            del self.by_session[conn.session_id]
            self._watches.remove_watcher(conn.session_id)
        if conn.password and self.handshakes.get(conn.password) is conn:
            del self.handshakes[conn.password]

    # --- answers, in request order ---------------------------------------------------

    def flush(self, conn: Connection) -> None:
        """Send answers from the head of the queue while they are known (serving
        reads that were waiting behind a write as they come to the head)."""
        queue = conn.queue
        while queue and not conn.closed:
            head = queue[0]
            if head.frame is None:
                if head.error is not None:
                    head.frame = self._error_frame(head.xid, head.error)
                elif head.kind is not EntryKind.READ or not self.may_serve(conn):
                    break
                else:
                    assert head.request is not None
                    head.frame = self._read(conn, head.xid, head.request)
            queue.popleft()
            conn.inflight_bytes -= head.size
            self.send(conn, head.frame, gated=head.kind is EntryKind.READ)
            if head.close_after:
                self.close(conn)
                return
        self.maybe_resume(conn)

    def notify(self, events: list[tuple[protocol.EventType, str]], zxid: int) -> None:
        """Queue the watch events a txn triggered on their watchers' connections."""
        for event_type, path in events:
            watchers = self._watches.trigger(event_type, path)
            if not watchers:
                continue
            frame = _encode_frame(protocol.encode_event(WatchEvent(type=event_type, path=path, zxid=zxid)))
            for watcher in watchers:
                conn = self.by_session.get(watcher)
                if conn is not None:
                    self.send(conn, frame)

    def read_in_turn(self, conn: Connection, xid: int, request: Request, size: int) -> None:
        """Serve a read now if nothing is ahead of it and its bounds allow; else queue it."""
        if conn.queue or not self.may_serve(conn):
            conn.inflight_bytes += size
            conn.queue.append(Entry(xid, EntryKind.READ, request, size=size))
        else:
            self.send(conn, self._read(conn, xid, request), gated=True)

    def write_applied(self, txn: Txn, result: ApplyResult) -> None:
        """A write of a session was applied: answer it, if its connection is here."""
        conn = self.by_session.get(txn.session_id)
        if conn is None:
            return
        # Writes of a session are proposed and committed in order, so this is the
        # oldest unanswered write of the connection, unless the session moved here
        # from another connection after proposing it: then that answer is lost, as
        # any reply on a dropped connection is. Matching on the zxid makes sure.
        for entry in conn.queue:
            if entry.kind is EntryKind.WRITE and entry.frame is None:
                # A forwarded write does not know its zxid: match it by its xid
                # (a session's xids only grow, across reconnects too).
                if entry.zxid == txn.zxid or (entry.zxid == 0 and entry.xid == txn.xid):
                    entry.frame = _encode_frame(protocol.encode_reply(txn.xid, txn.zxid, result.error, result.result))
                    self.flush(conn)
                break

    def answer_in_turn(self, conn: Connection, xid: int, error: CoordError) -> None:
        """Answer request ``xid`` with ``error`` after the answers to the requests before it."""
        if conn.queue:
            conn.queue.append(Entry(xid, EntryKind.READ, None, error=error))
        else:
            self.send(conn, self._error_frame(xid, error))

    def fail_unanswered(self, error: CoordError) -> None:
        """Answer every handshake, write and sync in flight with ``error`` (in its turn)."""
        for conn in list(self.handshakes.values()):
            self.refuse(conn, error)
        self.handshakes.clear()
        for conn in list(self.by_session.values()):
            changed = False
            for entry in conn.queue:
                if entry.kind is not EntryKind.READ and entry.frame is None:
                    entry.frame = self._error_frame(entry.xid, error)
                    entry.close_after = False
                    changed = True
            if changed:
                self.flush(conn)

    def sync_confirmed(self, session_id: int, xid: int) -> None:
        """The leader confirmed its leadership for the session's sync ``xid`` (and this
        server applied every commit before that): serve it like a read, in its turn."""
        conn = self.by_session.get(session_id)
        if conn is None:
            return
        for entry in conn.queue:
            if entry.kind is EntryKind.SYNC and entry.frame is None and entry.xid == xid:
                assert entry.request is not None
                entry.kind = EntryKind.READ  # served from the tree when it reaches the head
                self.flush(conn)
                return

    # --- the outbox -------------------------------------------------------------------

    def send(self, conn: Connection, frame: bytes, *, gated: bool = False) -> None:
        """Queue ``frame`` for the connection and count it. ``gated``: a read reply that
        :meth:`may_serve` allowed (only frames that cannot wait are shed)."""
        if conn.closed:
            return
        self.out.frames.append((conn.conn_id, frame))
        size = len(frame)
        conn.unsent += size
        self.unsent_total += size
        config = self.config
        if conn.unsent > config.connection_outbox_bytes_max:
            if conn.over_since_ms is None:
                conn.over_since_ms = self._clock()
            if conn.unsent > config.outbox_abort_bytes:
                self.abort(conn, f"{conn.unsent} reply bytes unsent (limit {config.outbox_abort_bytes})")
                return
        if not gated and self.unsent_total > config.outbox_bytes_total_max and conn.unsent > SHED_BYTES:
            # Every connection's replies together are over the server's bound, and this
            # one holds more than its share: shed it rather than grow (docs/limits.md).
            self.abort(conn, f"{conn.unsent} reply bytes unsent while the server holds {self.unsent_total}")

    def abort(self, conn: Connection, why: str) -> None:
        """Close a connection that does not read what it is sent. Its session lives on."""
        log.warning(
            "connection %d (session %#x) is not reading its replies: %s; closing it", conn.conn_id, conn.session_id, why
        )
        self.out.abort.append(conn.conn_id)
        self.drop(conn)

    def sent(self, conn: Connection, size: int, now_ms: int) -> None:
        """The shell finished sending ``size`` bytes of the frames given for ``conn``."""
        conn.unsent -= size
        self.unsent_total -= size
        conn.over_since_ms = None if conn.unsent <= self.config.connection_outbox_bytes_max else now_ms
        self.flush(conn)
        if self.unsent_total < self.config.outbox_bytes_total_max:
            self.release_held()
        self.maybe_resume(conn)

    def shed(self, now_ms: int) -> None:
        """Close the connections stalled for ``connection_stall_ms`` and, while all
        together hold over ``outbox_bytes_total_max``, the largest backlogs."""
        stall_ms = self.config.connection_stall_ms
        for conn in list(self.by_id.values()):
            if conn.over_since_ms is not None and now_ms - conn.over_since_ms >= stall_ms:
                self.abort(conn, f"{conn.unsent} reply bytes unsent for {now_ms - conn.over_since_ms} ms")
        total_max = self.config.outbox_bytes_total_max
        if self.unsent_total <= total_max:
            return
        # Shed the largest backlogs until the server is under its bound again.
        lagging = sorted(
            (conn for conn in self.by_id.values() if conn.unsent > SHED_BYTES), key=lambda conn: -conn.unsent
        )
        for conn in lagging:
            if self.unsent_total <= total_max:
                break
            self.abort(conn, f"{conn.unsent} reply bytes unsent while the server holds {self.unsent_total}")
        self.release_held()

    # --- reads held back, and pausing input -------------------------------------------

    def release_held(self) -> None:
        """Serve the reads held for the server's total bound, as far as it now allows."""
        held, self._held = self._held, set()
        for held_id in held:
            other = self.by_id.get(held_id)
            if other is not None:
                self.flush(other)

    def may_serve(self, conn: Connection) -> bool:
        """Whether a read may add to this connection's unsent bytes now."""
        if conn.unsent >= self.config.connection_outbox_bytes_max:
            return False
        total, total_max = self.unsent_total, self.config.outbox_bytes_total_max
        if total >= total_max and (conn.unsent >= SHED_BYTES or total >= 2 * total_max):
            # Over the server's bound, connections that drain (little unsent) are still
            # served, up to twice the bound; those that hold more wait, and the tick sheds
            # the largest until the total is under the bound again.
            self._held.add(conn.conn_id)
            return False
        return True

    def accepts(self, conn: Connection) -> bool:
        config = self.config
        return (
            conn.session_id != 0
            and len(conn.queue) < config.connection_outstanding_max
            and conn.inflight_bytes < config.connection_inflight_bytes_max
            and conn.unsent < config.connection_outbox_bytes_max
        )

    def wants_input(self, conn_id: int) -> bool:
        """Whether the shell should read more requests from this connection now
        (see :meth:`Pipeline.wants_input`)."""
        conn = self.by_id.get(conn_id)
        if conn is None or conn.closed:
            return False
        if self.accepts(conn):
            return True
        conn.paused = True
        return False

    def maybe_resume(self, conn: Connection) -> None:
        if conn.paused and not conn.closed and self.accepts(conn):
            conn.paused = False
            self.out.resume.append(conn.conn_id)
