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
    always reads its own writes. Answers leave in request order. (The queues and
    their order: :mod:`coord.connections`; what a read answers: :mod:`coord.reads`.)

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
    Memory is bounded by configuration, not by clients: per connection the pipeline
    counts the requests not yet answered and the reply bytes not yet sent, pauses
    reading a connection over its bounds, holds reads while the bytes drain, and aborts
    a connection that does not read what cannot wait (watch events, write replies).
    The rules are in :mod:`coord.connections`, which keeps that bookkeeping.

Left out here (later issues): ACLs, quotas.
"""

from __future__ import annotations

import logging
import random
from typing import Any, assert_never

from coord import protocol
from coord.appmsg import ActiveSessions, ForwardedWrite, NewSession, SyncBarrier, decode_app, encode_app
from coord.connections import Connection, Connections, Entry, EntryKind
from coord.errors import BadArgumentsError, CoordError, NotLeaderError, ServerBehindError, SessionExpiredError
from coord.pipeline_types import Mode as Mode
from coord.pipeline_types import PipelineConfig as PipelineConfig
from coord.pipeline_types import PipelineOutput as PipelineOutput
from coord.prepare import Preparer
from coord.protocol import (
    CloseSessionRequest,
    ConnectRequest,
    CreateRequest,
    DeleteRequest,
    MultiRequest,
    Request,
    SetDataRequest,
    SyncRequest,
)
from coord.reads import error_frame, serve_read
from coord.sessions import SessionTracker
from coord.tree import DataTree
from coord.txn import CloseSessionTxn, CreateSessionTxn, Txn
from coord.watches import WatchManager
from coord.zxid import make_zxid

log = logging.getLogger(__name__)

_ORDERED_REQUESTS = frozenset(
    {CreateRequest, DeleteRequest, SetDataRequest, MultiRequest, CloseSessionRequest, SyncRequest}
)
"""Requests that need the leader (everything else is served from the local tree)."""


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
        self._out = PipelineOutput()
        self._now_ms = now_ms
        self._connections = Connections(
            config, self.watches, self._out, clock=lambda: self._now_ms, read=self._read, error_frame=self._error_frame
        )
        self._wall_offset_ms = wall_offset_ms
        self.epoch = epoch
        self.mode = mode
        self._touched: set[int] = set()  # follower: sessions active since the last report
        self._reply_bytes_max = protocol.HEADER.size + protocol.frame_bytes_max(config.data_bytes_max)
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

    def become_leader(self, epoch: int, now_ms: int) -> None:
        """ZAB established this server as leader of ``epoch``: from now on its preparer
        numbers every write (from the epoch's first zxid); ZAB takes those numbers."""
        self._now_ms = now_ms
        self.mode = Mode.LEADER
        self.epoch = epoch
        self.preparer.reset(self._zxid_floor())
        self._track_all_sessions(now_ms)

    def become_follower(self, now_ms: int) -> None:
        """ZAB synced this server with a leader: writes are forwarded to it."""
        self._now_ms = now_ms
        self.mode = Mode.FOLLOWER
        self._touched = set(self._connections.by_session)

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
        for conn in list(self._connections.by_id.values()):
            self._connections.close(conn)

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
        self._out = self._connections.out = PipelineOutput()  # the connections write to it too
        return out

    def sent(self, conn_id: int, size: int, now_ms: int) -> None:
        """The shell finished sending ``size`` bytes of the frames given for ``conn_id``."""
        conn = self._connections.by_id.get(conn_id)
        if conn is None:
            return
        self._now_ms = now_ms
        self._connections.sent(conn, size, now_ms)

    def wants_input(self, conn_id: int) -> bool:
        """Whether the shell should read more requests from this connection now.

        False while its handshake is being answered (a request pipelined behind it
        waits for the session), or while it is over one of its bounds; the conn id
        then appears in a later output's ``resume`` when it may be read again."""
        return self._connections.wants_input(conn_id)

    def _propose(self, txn: Txn) -> None:
        self._out.proposals.append(txn)

    # --- connections --------------------------------------------------------------

    def open_connection(self, conn_id: int, handshake: ConnectRequest, now_ms: int) -> None:
        """A client sent its connect handshake on a new connection ``conn_id``."""
        self._now_ms = now_ms
        conn = Connection(conn_id=conn_id)
        self._connections.by_id[conn_id] = conn
        if self.mode is Mode.OFFLINE:
            self._connections.refuse(conn, NotLeaderError("this server is not in a quorum right now; try another"))
            return
        if handshake.protocol != protocol.PROTOCOL_VERSION:
            self._connections.refuse(conn, BadArgumentsError(f"protocol version {handshake.protocol} is not supported"))
            return
        if handshake.last_zxid > self.tree.last_zxid:
            # Reads must never go back in time: this server has not seen what the
            # client has. The client tries another server.
            self._connections.refuse(
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
            self._connections.handshakes[password] = conn
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
            self._connections.refuse(conn, SessionExpiredError(message))
            return
        if record is None or not self._touch(handshake.session_id, now_ms):
            self._connections.refuse(conn, SessionExpiredError(f"session {handshake.session_id:#x} has expired"))
            return
        previous = self._connections.by_session.get(handshake.session_id)
        if previous is not None:
            # The client moved to a new connection; the old one is stale.
            self._connections.close(previous)
        self._connections.bind(conn, record.session_id, record.password, record.timeout_ms, self.tree.last_zxid)

    def close_connection(self, conn_id: int) -> None:
        """The connection went away (or the shell closed it). The session lives on
        until it expires or the client reconnects elsewhere; the connection's watches
        are dropped (the client re-registers them when it reconnects)."""
        conn = self._connections.by_id.get(conn_id)
        if conn is not None:
            self._connections.drop(conn)

    def has_connection(self, conn_id: int) -> bool:
        return conn_id in self._connections.by_id

    def refuse_request(self, conn_id: int, xid: int, error: CoordError) -> None:
        """A request frame that could not be decoded but whose xid could: answer it with
        ``error`` in its turn (after the answers to the requests before it)."""
        conn = self._connections.by_id.get(conn_id)
        if conn is None or conn.closed or not conn.session_id:
            return
        self._connections.answer_in_turn(conn, xid, error)

    def session_of(self, conn_id: int) -> int:
        conn = self._connections.by_id.get(conn_id)
        return conn.session_id if conn else 0

    # --- requests -----------------------------------------------------------------

    def request(self, conn_id: int, xid: int, request: Request, now_ms: int, size: int = 0) -> None:
        """A decoded request on a connection whose handshake completed.

        ``size`` is the request frame's bytes, counted against the connection's
        in-flight bound while the request waits for its answer."""
        conn = self._connections.by_id.get(conn_id)
        if conn is None or conn.closed:
            return
        session_id = conn.session_id
        if session_id == 0:
            # A request before the session exists: protocol violation.
            self._connections.send(
                conn, self._error_frame(xid, BadArgumentsError("request before the session was established"))
            )
            self._connections.close(conn)
            return
        self._now_ms = now_ms
        if not self._touch(session_id, now_ms):
            # Answered in its turn, after the requests before it (tests/sim finding S1),
            # then the connection is closed.
            # (The frame is built when it is sent: its zxid must not go back in time.)
            expired = SessionExpiredError("session expired")
            conn.queue.append(Entry(xid, EntryKind.READ, None, close_after=True, error=expired))
            self._connections.flush(conn)
            return
        if self.mode is Mode.OFFLINE and type(request) in _ORDERED_REQUESTS:
            # No leader to order it (the connection stays for reads; a disk error or
            # an election is being recovered from). The client may retry.
            error = self._offline_error or NotLeaderError("no leader right now; retry")
            self._connections.answer_in_turn(conn, xid, error)
            return
        match request:
            case CreateRequest() | DeleteRequest() | SetDataRequest() | MultiRequest() | CloseSessionRequest():
                close_after = type(request) is CloseSessionRequest
                conn.inflight_bytes += size
                if self.mode is Mode.LEADER:
                    txn = self._prepare_write(session_id, xid, request, now_ms)
                    conn.queue.append(
                        Entry(xid, EntryKind.WRITE, None, close_after=close_after, zxid=txn.zxid, size=size)
                    )
                    self._propose(txn)
                else:
                    conn.queue.append(Entry(xid, EntryKind.WRITE, None, close_after=close_after, size=size))
                    self._out.to_leader.append(encode_app(ForwardedWrite(session_id, xid, request)))
            case SyncRequest():
                # Linearizable: answered only after the leader confirmed with a quorum
                # that it still leads (docs/correctness.md, rule 8), and after this server
                # applied everything committed before that.
                conn.inflight_bytes += size
                conn.queue.append(Entry(xid, EntryKind.SYNC, request, size=size))
                if self.mode is Mode.LEADER:
                    self._out.barriers.append((self.config.server_id, session_id, xid))
                else:
                    self._out.to_leader.append(encode_app(SyncBarrier(session_id, xid)))
            case _:
                self._connections.read_in_turn(conn, xid, request, size)

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
            self._connections.sync_confirmed(message.session_id, message.xid)
        else:
            log.warning("server %d sent a %s to a follower; dropping its link", source, type(message).__name__)
            self._out.bad_peers.append(source)

    def barrier_done(self, origin: int, session_id: int, xid: int) -> None:
        """Leader: the quorum round for a sync completed."""
        if origin == self.config.server_id:
            self._connections.sync_confirmed(session_id, xid)
        else:
            self._out.to_followers.append((origin, encode_app(SyncBarrier(session_id, xid))))

    def take_touches(self) -> list[int]:
        touched = sorted(self._touched)
        self._touched.clear()
        return touched

    def _error_frame(self, xid: int, error: CoordError) -> bytes:
        return error_frame(self.tree.last_zxid, xid, error)

    def _read(self, conn: Connection, xid: int, request: Request) -> bytes:
        """Serve a read (or a local op such as a watch change) from the applied tree
        (:func:`coord.reads.serve_read`); the events it replays go to ``conn`` first."""
        return serve_read(
            self.tree,
            self.watches,
            conn.session_id,
            xid,
            request,
            reply_bytes_max=self._reply_bytes_max,
            send_event=lambda frame: self._connections.send(conn, frame),
        )

    # --- ordering and applying ----------------------------------------------------

    def committed(self, txns: list[Txn]) -> None:
        """These txns are durable and committed, in zxid order: apply and answer."""
        tree = self.tree
        preparer = self.preparer
        for txn in txns:
            result = tree.apply(txn)
            preparer.applied(txn)
            if result.events:
                self._connections.notify(result.events, txn.zxid)
            body = txn.body
            if type(body) is CreateSessionTxn:
                session_id = txn.zxid
                self.sessions.add(session_id, body.timeout_ms, self._now_ms)
                self._connections.session_created(session_id, body.password, body.timeout_ms, tree.last_zxid)
                continue
            if type(body) is CloseSessionTxn:
                self.sessions.remove(body.session_id)
                self._connections.session_closed(body.session_id)
            if txn.session_id:
                self._connections.write_applied(txn, result)

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
        self._connections.fail_unanswered(error)

    # --- time -----------------------------------------------------------------------

    def tick(self, now_ms: int) -> None:
        """Time passed: close stalled connections; expire sessions, remove empty
        containers and expired TTL nodes."""
        self._now_ms = now_ms
        self._connections.shed(now_ms)
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
            "connections": len(self._connections.by_id),
            "watches": self.watches.count(),
            "pending_txns": self.preparer.pending_count,
            "unsent_bytes": self._connections.unsent_total,
        }
