"""The request pipeline of one server: decode -> prepare -> order -> apply -> reply.

Theory of operation
    The :class:`Pipeline` is a pure state machine (no sockets, no disk, no clock).
    The trio shell (:mod:`coord.server`) feeds it *inputs* and carries out its
    *outputs*:

    inputs
        ``open_connection`` (a client's handshake), ``request`` (one decoded
        request frame), ``close_connection`` (the socket went away),
        ``committed`` (these txns are durable and ordered: apply them),
        ``abort_pending`` (the disk refused a write, or the leader was lost),
        ``tick`` (time passed); in an ensemble also ``from_follower`` /
        ``from_leader`` (forwarded requests, session reports, syncs),
        ``barrier_done`` and the role changes ``become_leader`` /
        ``become_follower`` / ``go_offline``.
    outputs (:class:`PipelineOutput`, taken with :meth:`Pipeline.take_output`)
        ``frames``: encoded frames per connection (replies, watch events, handshake
        answers), in the order they must be sent; ``proposals``: txns to make
        durable and order (standalone: append to the log; ensemble: hand to ZAB);
        ``close``: connections to close once their frames are flushed;
        ``to_leader`` / ``to_followers`` / ``barriers`` in an ensemble.

    Writes become txns here (via :class:`coord.prepare.Preparer`), are proposed,
    and are applied to the tree only when ``committed`` says they are durable
    (docs/correctness.md, rule 4: nothing is applied that is not durable). Reads are
    served from the applied tree.

Per-session order (FIFO)
    Each connection keeps a queue of requests not yet answered. A read that
    arrives while an earlier write of the same session is still in flight waits
    in that queue and is served right after that write is applied, so a session
    always reads its own writes. Answers leave in request order.

Watches
    Applying a txn yields watch triggers; events are queued on the watchers'
    connections *before* the reply to the txn's requester, so a client sees a
    watch event before the answer of any later request (docs/architecture.md, "Guarantees").

Sessions
    A new session is a ``CreateSessionTxn``; its id is the zxid of that txn, so
    every server agrees on it with no id scheme of its own. Until it commits, the
    handshake is matched to the connection by the random password the connection's
    server chose (unique per connection attempt). Only the server that orders
    writes expires sessions: it proposes a ``CloseSessionTxn``, whose application
    deletes the session's ephemerals everywhere.

Ensemble
    A follower forwards writes, session creations, session activity and syncs to
    the leader as application messages; the leader prepares and proposes them. A
    forwarded write is matched to its commit by the session's xid (a session's
    xids only grow). A sync is answered once the leader's quorum round confirmed
    its leadership and this server applied every commit before it.

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

Left out here (later issues): ACLs, quotas.
"""

from __future__ import annotations

import collections
import enum
import logging
import random
from dataclasses import dataclass, field
from typing import Any, assert_never

from coord import protocol
from coord.appmsg import ActiveSessions, ForwardedWrite, NewSession, SyncBarrier, decode_app, encode_app
from coord.errors import (
    BadArgumentsError,
    CoordError,
    MarshallingError,
    NoNodeError,
    NotLeaderError,
    NoWatcherError,
    ServerBehindError,
    SessionExpiredError,
    UnimplementedError,
)
from coord.prepare import PATH_BYTES_MAX_DEFAULT, PATH_DEPTH_MAX_DEFAULT, TXN_BYTES_MAX_DEFAULT, Preparer
from coord.protocol import (
    AddWatchMode,
    AddWatchRequest,
    CloseSessionRequest,
    ConnectRequest,
    ConnectResponse,
    CreateRequest,
    DeleteRequest,
    ExistsRequest,
    GetChildrenRequest,
    GetDataRequest,
    MultiRequest,
    PingRequest,
    RemoveWatchesRequest,
    Request,
    SetDataRequest,
    SetWatchesRequest,
    SyncRequest,
    WatchEvent,
)
from coord.sessions import SessionTracker
from coord.tree import DataTree
from coord.txn import CloseSessionTxn, CreateSessionTxn, Txn
from coord.watches import WatchKind, WatchManager, replay_missed
from coord.zxid import epoch_of, make_zxid

log = logging.getLogger(__name__)

_encode_frame = protocol.encode_frame


_ORDERED_REQUESTS = frozenset(
    {CreateRequest, DeleteRequest, SetDataRequest, MultiRequest, CloseSessionRequest, SyncRequest}
)
"""Requests that need the leader (everything else is served from the local tree)."""

SHED_BYTES = 64 * 1024
"""While all connections' unsent bytes are over ``outbox_bytes_total_max``, a connection
holding more than this gets no read served, is closed when it is sent a watch event or
write reply, and the largest such are closed at the next tick until the total is under
the bound again. Connections holding less (they drain) are served as usual."""


class EntryKind(enum.Enum):
    WRITE = 1  # waits for its txn to be applied
    READ = 2  # served when it reaches the head of the queue
    SYNC = 3  # waits for the leader's quorum round (then served like a read)


class Mode(enum.Enum):
    """What this server does with writes."""

    LEADER = "leader"  # prepares and proposes them
    FOLLOWER = "follower"  # forwards them to the leader
    OFFLINE = "offline"  # no established leader: serves nobody


@dataclass(slots=True)
class _Entry:
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
class _Connection:
    conn_id: int
    session_id: int = 0  # 0 until the handshake completes
    password: bytes = b""
    timeout_ms: int = 0
    queue: collections.deque[_Entry] = field(default_factory=collections.deque)
    closed: bool = False
    inflight_bytes: int = 0  # request bytes of the entries in ``queue``
    unsent: int = 0  # reply bytes handed to the shell and not yet reported sent
    over_since_ms: int | None = None  # when ``unsent`` last went over the outbox bound
    paused: bool = False  # the shell was told to stop reading it


@dataclass(slots=True)
class PipelineOutput:
    """What the pipeline produced since the last :meth:`Pipeline.take_output`."""

    frames: list[tuple[int, bytes]] = field(default_factory=list)
    proposals: list[Txn] = field(default_factory=list)
    close: list[int] = field(default_factory=list)
    to_leader: list[bytes] = field(default_factory=list)  # follower: forwarded requests, touches, syncs
    to_followers: list[tuple[int, bytes]] = field(default_factory=list)  # leader: (server id, sync answer)
    barriers: list[tuple[int, int, int]] = field(default_factory=list)  # leader: (origin server, session, xid)
    abort: list[int] = field(default_factory=list)  # connections to close now, dropping what is unsent
    bad_peers: list[int] = field(default_factory=list)  # servers that sent a malformed message: drop their link
    resume: list[int] = field(default_factory=list)  # paused connections to read again


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineConfig:
    server_id: int = 1
    tick_ms: int = 1000
    min_session_timeout_ms: int = 2000
    max_session_timeout_ms: int = 20000
    data_bytes_max: int = protocol.DATA_BYTES_MAX_DEFAULT
    txn_bytes_max: int = TXN_BYTES_MAX_DEFAULT
    path_bytes_max: int = PATH_BYTES_MAX_DEFAULT
    path_depth_max: int = PATH_DEPTH_MAX_DEFAULT
    connection_outstanding_max: int = 1000
    connection_inflight_bytes_max: int = 4 << 20
    connection_outbox_bytes_max: int = 1 << 20
    outbox_bytes_total_max: int = 256 << 20
    connection_stall_ms: int = 30_000

    @property
    def outbox_abort_bytes(self) -> int:
        """Unsent bytes past which a connection is aborted: its bound plus one largest reply."""
        return self.connection_outbox_bytes_max + protocol.frame_bytes_max(self.data_bytes_max)


class Pipeline:
    """One server's request pipeline. No I/O: the shell feeds inputs, carries out outputs."""

    def __init__(
        self,
        tree: DataTree,
        config: PipelineConfig,
        *,
        rng: random.Random,
        now_ms: int,
        epoch: int,
        wall_offset_ms: int = 0,
        mode: Mode = Mode.LEADER,
    ) -> None:
        """Args:
        tree: the applied state (recovered from disk).
        config: limits and timeouts.
        rng: the source of session passwords.
        now_ms: the current time on the monotonic clock that all later inputs use.
        epoch: the epoch this server orders writes in (already durable).
        mode: how it starts; the ensemble shell starts OFFLINE and follows ZAB's
            role changes (:meth:`become_leader`, :meth:`become_follower`,
            :meth:`go_offline`).
        wall_offset_ms: added to monotonic times to get the wall-clock times that
            txns record as ctime/mtime (sessions expire on the monotonic clock, so a
            wall-clock jump cannot expire them).
        """
        self.tree = tree
        self.config = config
        self.preparer = self._new_preparer(tree)
        self.sessions = SessionTracker(
            tick_ms=config.tick_ms,
            min_timeout_ms=config.min_session_timeout_ms,
            max_timeout_ms=config.max_session_timeout_ms,
        )
        self.watches = WatchManager()
        self._rng = rng
        self._conns: dict[int, _Connection] = {}
        self._conn_of_session: dict[int, _Connection] = {}
        self._handshakes: dict[bytes, _Connection] = {}  # password -> connection awaiting CreateSession
        self._out = PipelineOutput()
        self._now_ms = now_ms
        self._wall_offset_ms = wall_offset_ms
        self.epoch = epoch
        self.mode = mode
        self._touched: set[int] = set()  # follower: sessions active since the last report
        self._reply_bytes_max = protocol.HEADER.size + protocol.frame_bytes_max(config.data_bytes_max)
        self._unsent_total = 0  # unsent reply bytes of all connections
        self._held: set[int] = set()  # connections with a read held for the total outbox bound
        self._offline_error: CoordError | None = None  # what writes get while OFFLINE (None: NotLeaderError)
        self.preparer.reset(self._zxid_floor())
        self._track_all_sessions(now_ms)

    def _new_preparer(self, tree: DataTree) -> Preparer:
        config = self.config
        return Preparer(
            tree,
            data_bytes_max=config.data_bytes_max,
            txn_bytes_max=config.txn_bytes_max,
            path_bytes_max=config.path_bytes_max,
            path_depth_max=config.path_depth_max,
        )

    def _track_all_sessions(self, now_ms: int) -> None:
        """Give every session of the tree a fresh full timeout (as ZooKeeper does after
        a restart or an election): their clients need time to reconnect."""
        self.sessions = SessionTracker(
            tick_ms=self.config.tick_ms,
            min_timeout_ms=self.config.min_session_timeout_ms,
            max_timeout_ms=self.config.max_session_timeout_ms,
        )
        for record in self.tree.sessions.values():
            self.sessions.add(record.session_id, record.timeout_ms, now_ms)

    # --- roles ----------------------------------------------------------------------

    def become_leader(self, next_zxid: int, now_ms: int) -> None:
        """ZAB established this server as leader: it orders writes from ``next_zxid``."""
        self._now_ms = now_ms
        self.mode = Mode.LEADER
        self.epoch = epoch_of(next_zxid)
        self.preparer.reset(next_zxid)
        self._track_all_sessions(now_ms)

    def become_follower(self, now_ms: int) -> None:
        """ZAB synced this server with a leader: writes are forwarded to it."""
        self._now_ms = now_ms
        self.mode = Mode.FOLLOWER
        self._touched = set(self._conn_of_session)

    def set_offline_error(self, error: CoordError | None) -> None:
        """What writes are answered while OFFLINE (the shell sets a StorageFullError
        while its disk is full; None: ``NotLeaderError``, no leader right now)."""
        self._offline_error = error

    def go_offline(self, error: CoordError, *, disconnect: bool = True) -> None:
        """No established leader any more: everything in flight is answered with
        ``error``. With ``disconnect`` every client is disconnected too, so clients
        find a server that serves (their sessions live on, and they reconnect with
        them); without it (a disk error being recovered from) they stay for reads."""
        self.mode = Mode.OFFLINE
        self.abort_pending(error)
        if not disconnect:
            return
        for conn in list(self._conns.values()):
            self._out.close.append(conn.conn_id)
            self._drop(conn)

    def install(self, tree: DataTree) -> None:
        """Replace the state with a snapshot received from the leader (SNAP)."""
        assert self.mode is Mode.OFFLINE
        self.tree = tree
        self.preparer = self._new_preparer(tree)
        self._track_all_sessions(self._now_ms)

    def _zxid_floor(self) -> int:
        """The next zxid to assign when nothing is pending: after the applied tree,
        and never below the first zxid of the current epoch."""
        return max(self.tree.last_zxid + 1, make_zxid(self.epoch, 1))

    def _wall(self, now_ms: int) -> int:
        return now_ms + self._wall_offset_ms

    # --- outputs ------------------------------------------------------------------

    def take_output(self) -> PipelineOutput:
        out = self._out
        self._out = PipelineOutput()
        return out

    def _send(self, conn: _Connection, frame: bytes, *, gated: bool = False) -> None:
        """Queue ``frame`` for the connection and count it. ``gated``: a read reply that
        :meth:`_may_serve` allowed (only frames that cannot wait are shed)."""
        if conn.closed:
            return
        self._out.frames.append((conn.conn_id, frame))
        size = len(frame)
        conn.unsent += size
        self._unsent_total += size
        config = self.config
        if conn.unsent > config.connection_outbox_bytes_max:
            if conn.over_since_ms is None:
                conn.over_since_ms = self._now_ms
            if conn.unsent > config.outbox_abort_bytes:
                self._abort(conn, f"{conn.unsent} reply bytes unsent (limit {config.outbox_abort_bytes})")
                return
        if not gated and self._unsent_total > config.outbox_bytes_total_max and conn.unsent > SHED_BYTES:
            # Every connection's replies together are over the server's bound, and this
            # one holds more than its share: shed it rather than grow (docs/limits.md).
            self._abort(conn, f"{conn.unsent} reply bytes unsent while the server holds {self._unsent_total}")

    def _abort(self, conn: _Connection, why: str) -> None:
        """Close a connection that does not read what it is sent. Its session lives on."""
        log.warning(
            "connection %d (session %#x) is not reading its replies: %s; closing it", conn.conn_id, conn.session_id, why
        )
        self._out.abort.append(conn.conn_id)
        self._drop(conn)

    def sent(self, conn_id: int, size: int, now_ms: int) -> None:
        """The shell finished sending ``size`` bytes of the frames given for ``conn_id``."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        self._now_ms = now_ms
        conn.unsent -= size
        self._unsent_total -= size
        conn.over_since_ms = None if conn.unsent <= self.config.connection_outbox_bytes_max else self._now_ms
        self._flush(conn)
        if self._unsent_total < self.config.outbox_bytes_total_max:
            self._release_held()
        self._maybe_resume(conn)

    def _release_held(self) -> None:
        """Serve the reads held for the server's total bound, as far as it now allows."""
        held, self._held = self._held, set()
        for held_id in held:
            other = self._conns.get(held_id)
            if other is not None:
                self._flush(other)

    def _may_serve(self, conn: _Connection) -> bool:
        """Whether a read may add to this connection's unsent bytes now."""
        if conn.unsent >= self.config.connection_outbox_bytes_max:
            return False
        total, total_max = self._unsent_total, self.config.outbox_bytes_total_max
        if total >= total_max and (conn.unsent >= SHED_BYTES or total >= 2 * total_max):
            # Over the server's bound, connections that drain (little unsent) are still
            # served, up to twice the bound; those that hold more wait, and the tick sheds
            # the largest until the total is under the bound again.
            self._held.add(conn.conn_id)
            return False
        return True

    def _accepts(self, conn: _Connection) -> bool:
        config = self.config
        return (
            conn.session_id != 0
            and len(conn.queue) < config.connection_outstanding_max
            and conn.inflight_bytes < config.connection_inflight_bytes_max
            and conn.unsent < config.connection_outbox_bytes_max
        )

    def wants_input(self, conn_id: int) -> bool:
        """Whether the shell should read more requests from this connection now.

        False while its handshake is being answered (a request pipelined behind it
        waits for the session), or while it is over one of its bounds; the conn id
        then appears in a later output's ``resume`` when it may be read again."""
        conn = self._conns.get(conn_id)
        if conn is None or conn.closed:
            return False
        if self._accepts(conn):
            return True
        conn.paused = True
        return False

    def _maybe_resume(self, conn: _Connection) -> None:
        if conn.paused and not conn.closed and self._accepts(conn):
            conn.paused = False
            self._out.resume.append(conn.conn_id)

    def _propose(self, txn: Txn) -> None:
        self._out.proposals.append(txn)

    # --- connections --------------------------------------------------------------

    def open_connection(self, conn_id: int, handshake: ConnectRequest, now_ms: int) -> None:
        """A client sent its connect handshake on a new connection ``conn_id``."""
        self._now_ms = now_ms
        conn = _Connection(conn_id=conn_id)
        self._conns[conn_id] = conn
        if self.mode is Mode.OFFLINE:
            self._refuse(conn, NotLeaderError("this server is not in a quorum right now; try another"))
            return
        if handshake.protocol != protocol.PROTOCOL_VERSION:
            self._refuse(conn, BadArgumentsError(f"protocol version {handshake.protocol} is not supported"))
            return
        if handshake.last_zxid > self.tree.last_zxid:
            # Reads must never go back in time: this server has not seen what the
            # client has. The client tries another server.
            self._refuse(
                conn,
                ServerBehindError(
                    f"server is at zxid {self.tree.last_zxid:#x}, client has seen {handshake.last_zxid:#x}"
                ),
            )
            return
        timeout_ms = self.sessions.negotiate(handshake.timeout_ms)
        if handshake.session_id == 0:
            password = self._rng.randbytes(16)
            conn.password = password
            conn.timeout_ms = timeout_ms
            self._handshakes[password] = conn
            if self.mode is Mode.LEADER:
                self._propose(
                    self.preparer.prepare_create_session(
                        timeout_ms=timeout_ms, password=password, time_ms=self._wall(now_ms)
                    )
                )
            else:
                self._out.to_leader.append(encode_app(NewSession(password, timeout_ms)))
            return
        record = self.tree.sessions.get(handshake.session_id)
        if record is not None and record.password != handshake.password:
            # ZooKeeper answers a wrong password as an expired session (the client gives
            # it up either way); the message must not claim it expired.
            message = f"session {handshake.session_id:#x} has expired or its password is wrong"
            self._refuse(conn, SessionExpiredError(message))
            return
        if record is None or not self._touch(handshake.session_id, now_ms):
            self._refuse(conn, SessionExpiredError(f"session {handshake.session_id:#x} has expired"))
            return
        previous = self._conn_of_session.get(handshake.session_id)
        if previous is not None:
            # The client moved to a new connection; the old one is stale.
            self._drop(previous)
            self._out.close.append(previous.conn_id)
        self._bind(conn, record.session_id, record.password, record.timeout_ms)

    def _bind(self, conn: _Connection, session_id: int, password: bytes, timeout_ms: int) -> None:
        conn.session_id = session_id
        conn.password = password
        conn.timeout_ms = timeout_ms
        self._conn_of_session[session_id] = conn
        reply = ConnectResponse(
            session_id=session_id,
            password=password,
            timeout_ms=timeout_ms,
            zxid=self.tree.last_zxid,
            server_id=self.config.server_id,
        )
        self._send(conn, _encode_frame(reply.to_wire()))
        self._maybe_resume(conn)

    def _refuse(self, conn: _Connection, error: CoordError) -> None:
        self._send(conn, _encode_frame(protocol.handshake_error(error.code, str(error))))
        self._out.close.append(conn.conn_id)
        conn.closed = True
        self._conns.pop(conn.conn_id, None)

    def close_connection(self, conn_id: int) -> None:
        """The connection went away (or the shell closed it). The session lives on
        until it expires or the client reconnects elsewhere; the connection's watches
        are dropped (the client re-registers them when it reconnects)."""
        conn = self._conns.get(conn_id)
        if conn is not None:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        conn.closed = True
        self._conns.pop(conn.conn_id, None)
        self._unsent_total -= conn.unsent
        conn.unsent = 0
        self._held.discard(conn.conn_id)
        if conn.session_id and self._conn_of_session.get(conn.session_id) is conn:
            del self._conn_of_session[conn.session_id]
            self.watches.remove_watcher(conn.session_id)
        if conn.password and self._handshakes.get(conn.password) is conn:
            del self._handshakes[conn.password]

    def has_connection(self, conn_id: int) -> bool:
        return conn_id in self._conns

    def refuse_request(self, conn_id: int, xid: int, error: CoordError) -> None:
        """A request frame that could not be decoded but whose xid could: answer it with
        ``error`` in its turn (after the answers to the requests before it)."""
        conn = self._conns.get(conn_id)
        if conn is None or conn.closed or not conn.session_id:
            return
        if conn.queue:
            conn.queue.append(_Entry(xid, EntryKind.READ, None, error=error))
        else:
            self._send(conn, self._error_frame(xid, error))

    def session_of(self, conn_id: int) -> int:
        conn = self._conns.get(conn_id)
        return conn.session_id if conn else 0

    # --- requests -----------------------------------------------------------------

    def request(self, conn_id: int, xid: int, request: Request, now_ms: int, size: int = 0) -> None:
        """A decoded request on a connection whose handshake completed.

        ``size`` is the request frame's bytes, counted against the connection's
        in-flight bound while the request waits for its answer."""
        conn = self._conns.get(conn_id)
        if conn is None or conn.closed:
            return
        session_id = conn.session_id
        if session_id == 0:
            # A request before the session exists: protocol violation.
            self._send(conn, self._error_frame(xid, BadArgumentsError("request before the session was established")))
            self._out.close.append(conn_id)
            self._drop(conn)
            return
        self._now_ms = now_ms
        if not self._touch(session_id, now_ms):
            # Answered in its turn, after the requests before it (tests/sim finding S1),
            # then the connection is closed.
            # (The frame is built when it is sent: its zxid must not go back in time.)
            expired = SessionExpiredError("session expired")
            conn.queue.append(_Entry(xid, EntryKind.READ, None, close_after=True, error=expired))
            self._flush(conn)
            return
        if self.mode is Mode.OFFLINE and type(request) in _ORDERED_REQUESTS:
            # No leader to order it (the connection stays for reads; a disk error or
            # an election is being recovered from). The client may retry.
            error = self._offline_error or NotLeaderError("no leader right now; retry")
            if conn.queue:
                conn.queue.append(_Entry(xid, EntryKind.READ, None, error=error))
            else:
                self._send(conn, self._error_frame(xid, error))
            return
        match request:
            case CreateRequest() | DeleteRequest() | SetDataRequest() | MultiRequest() | CloseSessionRequest():
                close_after = type(request) is CloseSessionRequest
                conn.inflight_bytes += size
                if self.mode is Mode.LEADER:
                    txn = self._prepare_write(session_id, xid, request, now_ms)
                    conn.queue.append(
                        _Entry(xid, EntryKind.WRITE, None, close_after=close_after, zxid=txn.zxid, size=size)
                    )
                    self._propose(txn)
                else:
                    conn.queue.append(_Entry(xid, EntryKind.WRITE, None, close_after=close_after, size=size))
                    self._out.to_leader.append(encode_app(ForwardedWrite(session_id, xid, request)))
            case SyncRequest():
                # Linearizable: answered only after the leader confirmed with a quorum
                # that it still leads (docs/correctness.md, rule 8), and after this server
                # applied everything committed before that.
                conn.inflight_bytes += size
                conn.queue.append(_Entry(xid, EntryKind.SYNC, request, size=size))
                if self.mode is Mode.LEADER:
                    self._out.barriers.append((self.config.server_id, session_id, xid))
                else:
                    self._out.to_leader.append(encode_app(SyncBarrier(session_id, xid)))
            case _:
                if conn.queue or not self._may_serve(conn):
                    conn.inflight_bytes += size
                    conn.queue.append(_Entry(xid, EntryKind.READ, request, size=size))
                else:
                    self._send(conn, self._read(conn, xid, request), gated=True)

    def _touch(self, session_id: int, now_ms: int) -> bool:
        """Note a session's activity. The leader's tracker decides expiry; a follower
        reports activity to the leader at every tick."""
        if self.mode is Mode.LEADER:
            return self.sessions.touch(session_id, now_ms)
        if session_id not in self.tree.sessions:
            return False
        self._touched.add(session_id)
        return True

    def _prepare_write(self, session_id: int, xid: int, request: Request, now_ms: int) -> Txn:
        time_ms = self._wall(now_ms)
        if type(request) is CloseSessionRequest:
            self.sessions.set_closing(session_id)
            return self.preparer.prepare_close_session(session_id, session_id=session_id, xid=xid, time_ms=time_ms)
        assert isinstance(request, CreateRequest | DeleteRequest | SetDataRequest | MultiRequest)
        return self.preparer.prepare(request, session_id=session_id, xid=xid, time_ms=time_ms)

    # --- messages between the leader and the followers -------------------------------

    def from_follower(self, source: int, payload: bytes, now_ms: int) -> None:
        """Leader: a follower forwarded a request, a session report or a sync.

        A malformed message is dropped with a logged reason and the sender is put in
        the output's ``bad_peers`` (the shell drops that link); it never raises."""
        if self.mode is not Mode.LEADER:
            return  # a stale message for an old leadership; the follower times out
        self._now_ms = now_ms
        try:
            message = decode_app(payload)
        except protocol.ProtocolError as error:
            log.warning("malformed message from server %d (%s); dropping its link", source, error)
            self._out.bad_peers.append(source)
            return
        match message:
            case ForwardedWrite(session_id=session_id, xid=xid, request=request):
                self.sessions.touch(session_id, now_ms)
                self._propose(self._prepare_write(session_id, xid, request, now_ms))
            case NewSession(password=password, timeout_ms=timeout_ms):
                self._propose(
                    self.preparer.prepare_create_session(
                        timeout_ms=self.sessions.negotiate(timeout_ms), password=password, time_ms=self._wall(now_ms)
                    )
                )
            case ActiveSessions(session_ids=session_ids):
                for session_id in session_ids:
                    self.sessions.touch(session_id, now_ms)
            case SyncBarrier(session_id=session_id, xid=xid):
                self._out.barriers.append((source, session_id, xid))
            case _:
                assert_never(message)

    def from_leader(self, source: int, payload: bytes) -> None:
        """Follower: the leader answered a forwarded sync (after the commits before it)."""
        try:
            message = decode_app(payload)
        except protocol.ProtocolError as error:
            log.warning("malformed message from server %d (%s); dropping its link", source, error)
            self._out.bad_peers.append(source)
            return
        if type(message) is SyncBarrier:
            self._sync_done(message.session_id, message.xid)
        else:
            log.warning("server %d sent a %s to a follower; dropping its link", source, type(message).__name__)
            self._out.bad_peers.append(source)

    def barrier_done(self, origin: int, session_id: int, xid: int) -> None:
        """Leader: the quorum round for a sync completed."""
        if origin == self.config.server_id:
            self._sync_done(session_id, xid)
        else:
            self._out.to_followers.append((origin, encode_app(SyncBarrier(session_id, xid))))

    def _sync_done(self, session_id: int, xid: int) -> None:
        conn = self._conn_of_session.get(session_id)
        if conn is None:
            return
        for entry in conn.queue:
            if entry.kind is EntryKind.SYNC and entry.frame is None and entry.xid == xid:
                assert entry.request is not None
                entry.kind = EntryKind.READ  # served from the tree when it reaches the head
                self._flush(conn)
                return

    def take_touches(self) -> list[int]:
        touched = sorted(self._touched)
        self._touched.clear()
        return touched

    def _error_frame(self, xid: int, error: CoordError) -> bytes:
        return _encode_frame(protocol.encode_reply(xid, self.tree.last_zxid, error.code, str(error)))

    def _read(self, conn: _Connection, xid: int, request: Request) -> bytes:
        """Serve a read (or a local op such as a watch change) from the applied tree."""
        tree = self.tree
        try:
            match request:
                case GetDataRequest(path=path, watch=watch):
                    protocol.validate_path(path)
                    node = tree.get_node(path)
                    if node is None:
                        raise NoNodeError(path)
                    if watch:
                        self.watches.add(conn.session_id, path, WatchKind.DATA)
                    result: Any = [node.data, node.stat().to_wire()]
                case ExistsRequest(path=path, watch=watch):
                    protocol.validate_path(path)
                    node = tree.get_node(path)
                    if watch:
                        self.watches.add(conn.session_id, path, WatchKind.DATA if node else WatchKind.EXIST)
                    result = node.stat().to_wire() if node else None
                case GetChildrenRequest(path=path, watch=watch):
                    protocol.validate_path(path)
                    names, stat = tree.get_children(path)
                    if watch:
                        self.watches.add(conn.session_id, path, WatchKind.CHILD)
                    result = [names, stat.to_wire()]
                case PingRequest():
                    result = None
                case SyncRequest(path=path):
                    # Standalone: everything this session wrote is applied once the
                    # sync reaches the head of its queue. (The ensemble confirms
                    # leadership with a quorum round first: docs/correctness.md, rule 8.)
                    protocol.validate_path(path)
                    result = path
                case AddWatchRequest(path=path, mode=mode):
                    protocol.validate_path(path)
                    kind = WatchKind.PERSISTENT if mode is AddWatchMode.PERSISTENT else WatchKind.PERSISTENT_RECURSIVE
                    self.watches.add(conn.session_id, path, kind)
                    result = None
                case RemoveWatchesRequest(path=path, watcher_type=watcher_type):
                    protocol.validate_path(path)
                    if not self.watches.remove(conn.session_id, path, watcher_type):
                        raise NoWatcherError(path)
                    result = None
                case SetWatchesRequest():
                    for paths in (
                        request.data,
                        request.exist,
                        request.child,
                        request.persistent,
                        request.persistent_recursive,
                    ):
                        for path in paths:
                            protocol.validate_path(path)
                    events, registrations = replay_missed(request, tree.exists)
                    for path, kind in registrations:
                        self.watches.add(conn.session_id, path, kind)
                    zxid = tree.last_zxid
                    for event_type, path in events:
                        self._send(
                            conn,
                            _encode_frame(protocol.encode_event(WatchEvent(type=event_type, path=path, zxid=zxid))),
                        )
                    result = None
                case _:
                    raise UnimplementedError(f"unsupported request {type(request).__name__}")
        except CoordError as error:
            return self._error_frame(xid, error)
        frame = _encode_frame(protocol.encode_reply(xid, tree.last_zxid, 0, result))
        if len(frame) > self._reply_bytes_max:
            # No client could read it (its frame limit is the server's); say so instead.
            return self._error_frame(
                xid,
                MarshallingError(
                    f"the reply would be {len(frame)} bytes, over the frame limit of {self._reply_bytes_max}"
                ),
            )
        return frame

    # --- ordering and applying ----------------------------------------------------

    def committed(self, txns: list[Txn]) -> None:
        """These txns are durable and committed, in zxid order: apply and answer."""
        tree = self.tree
        preparer = self.preparer
        for txn in txns:
            result = tree.apply(txn)
            preparer.applied(txn)
            if result.events:
                self._fire(result.events, txn.zxid)
            body = txn.body
            if type(body) is CreateSessionTxn:
                self._session_created(txn, body)
                continue
            if type(body) is CloseSessionTxn:
                self._session_closed(body.session_id)
            conn = self._conn_of_session.get(txn.session_id) if txn.session_id else None
            if conn is None:
                continue
            # Writes of a session are proposed and committed in order, so this is the
            # oldest unanswered write of the connection, unless the session moved here
            # from another connection after proposing it: then that answer is lost, as
            # any reply on a dropped connection is. Matching on the zxid makes sure.
            for entry in conn.queue:
                if entry.kind is EntryKind.WRITE and entry.frame is None:
                    # A forwarded write does not know its zxid: match it by its xid
                    # (a session's xids only grow, across reconnects too).
                    if entry.zxid == txn.zxid or (entry.zxid == 0 and entry.xid == txn.xid):
                        entry.frame = _encode_frame(
                            protocol.encode_reply(txn.xid, txn.zxid, result.error, result.result)
                        )
                        self._flush(conn)
                    break

    def _flush(self, conn: _Connection) -> None:
        """Send answers from the head of the queue while they are known (serving
        reads that were waiting behind a write as they come to the head)."""
        queue = conn.queue
        while queue and not conn.closed:
            head = queue[0]
            if head.frame is None:
                if head.error is not None:
                    head.frame = self._error_frame(head.xid, head.error)
                elif head.kind is not EntryKind.READ or not self._may_serve(conn):
                    break
                else:
                    assert head.request is not None
                    head.frame = self._read(conn, head.xid, head.request)
            queue.popleft()
            conn.inflight_bytes -= head.size
            self._send(conn, head.frame, gated=head.kind is EntryKind.READ)
            if head.close_after:
                self._out.close.append(conn.conn_id)
                self._drop(conn)
                return
        self._maybe_resume(conn)

    def _fire(self, events: list[tuple[protocol.EventType, str]], zxid: int) -> None:
        conn_of_session = self._conn_of_session
        for event_type, path in events:
            watchers = self.watches.trigger(event_type, path)
            if not watchers:
                continue
            frame = _encode_frame(protocol.encode_event(WatchEvent(type=event_type, path=path, zxid=zxid)))
            for watcher in watchers:
                conn = conn_of_session.get(watcher)
                if conn is not None:
                    self._send(conn, frame)

    def _session_created(self, txn: Txn, body: CreateSessionTxn) -> None:
        session_id = txn.zxid
        self.sessions.add(session_id, body.timeout_ms, self._now_ms)
        conn = self._handshakes.pop(body.password, None)
        if conn is not None and not conn.closed:
            self._bind(conn, session_id, body.password, body.timeout_ms)

    def _session_closed(self, session_id: int) -> None:
        self.sessions.remove(session_id)
        conn = self._conn_of_session.get(session_id)
        if conn is not None and not any(entry.close_after for entry in conn.queue):
            # Expired (not closed by its own request): hang up. The client's reconnect
            # is then refused with SessionExpiredError, as in ZooKeeper.
            self._out.close.append(conn.conn_id)
            self._drop(conn)

    def abort_pending(self, error: CoordError) -> None:
        """Answer every write and sync in flight with ``error`` and forget them.

        Used when the disk refused a write (everything not yet durable fails) or the
        server lost its leader. The preparer's pending view goes back to the applied
        tree, since later proposals were prepared against state that now will never
        exist. Nothing acknowledged is touched: the tree holds exactly what committed.
        """
        if self.mode is Mode.LEADER:
            self.preparer.reset(self._zxid_floor())
            self._track_all_sessions(self._now_ms)
        for conn in list(self._handshakes.values()):
            self._refuse(conn, error)
        self._handshakes.clear()
        for conn in list(self._conn_of_session.values()):
            changed = False
            for entry in conn.queue:
                if entry.kind is not EntryKind.READ and entry.frame is None:
                    entry.frame = self._error_frame(entry.xid, error)
                    entry.close_after = False
                    changed = True
            if changed:
                self._flush(conn)

    # --- time -----------------------------------------------------------------------

    def tick(self, now_ms: int) -> None:
        """Time passed: close stalled connections; expire sessions, remove empty
        containers and expired TTL nodes."""
        self._now_ms = now_ms
        stall_ms = self.config.connection_stall_ms
        for conn in list(self._conns.values()):
            if conn.over_since_ms is not None and now_ms - conn.over_since_ms >= stall_ms:
                self._abort(conn, f"{conn.unsent} reply bytes unsent for {now_ms - conn.over_since_ms} ms")
        total_max = self.config.outbox_bytes_total_max
        if self._unsent_total > total_max:
            # Shed the largest backlogs until the server is under its bound again.
            lagging = sorted(
                (conn for conn in self._conns.values() if conn.unsent > SHED_BYTES), key=lambda conn: -conn.unsent
            )
            for conn in lagging:
                if self._unsent_total <= total_max:
                    break
                self._abort(conn, f"{conn.unsent} reply bytes unsent while the server holds {self._unsent_total}")
            self._release_held()
        if self.mode is Mode.FOLLOWER:
            touched = self.take_touches()
            if touched:
                self._out.to_leader.append(encode_app(ActiveSessions(tuple(touched))))
            return
        if self.mode is not Mode.LEADER:
            return
        for session_id in self.sessions.expired(now_ms):
            if session_id in self.tree.sessions and self.preparer.session_exists(session_id):
                log.info("session %#x expired", session_id)
                self._propose(
                    self.preparer.prepare_close_session(session_id, session_id=0, xid=0, time_ms=self._wall(now_ms))
                )
        for path in self.tree.cleanup_candidates(self._wall(now_ms)):
            txn = self.preparer.prepare_cleanup(path, time_ms=self._wall(now_ms))
            if txn is not None:
                self._propose(txn)

    def expire_session(self, session_id: int, now_ms: int) -> bool:
        """Expire a session now, as if its timeout had passed (leader only; an operator/test action)."""
        if self.mode is not Mode.LEADER:
            return False
        if session_id not in self.tree.sessions or not self.preparer.session_exists(session_id):
            return False
        self.sessions.set_closing(session_id)
        self._propose(self.preparer.prepare_close_session(session_id, session_id=0, xid=0, time_ms=self._wall(now_ms)))
        return True

    # --- introspection --------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "server_id": self.config.server_id,
            "role": self.mode.value,
            "zxid": self.tree.last_zxid,
            "znodes": self.tree.node_count,
            "sessions": len(self.tree.sessions),
            "connections": len(self._conns),
            "watches": self.watches.count(),
            "pending_txns": self.preparer.pending_count,
            "unsent_bytes": self._unsent_total,
        }
