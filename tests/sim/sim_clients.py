"""What the simulated clients do: :class:`ClientActions`.

A client holds a session through one connection at a time and behaves as the project's
client library does: it sends real encoded requests (the mix is in
:meth:`ClientActions._client_op`), reads every frame the server sends, pings when idle,
reconnects elsewhere with its session when its connection closes or its server goes
quiet, and re-registers its watches with ``SetWatches``. Reading a reply is also where
the client-side invariants are checked (replies in order, zxids that never go back,
watches that fire before a reply past their change, reads against the history), since
only the client sees what it was told, and in which order.
"""

from __future__ import annotations

from typing import Any

from coord.errors import NoNodeError, SessionExpiredError
from coord.protocol import (
    WATCH_XID,
    CheckRequest,
    CloseSessionRequest,
    ConnectResponse,
    CreateMode,
    CreateRequest,
    DeleteRequest,
    ExistsRequest,
    GetChildrenRequest,
    GetDataRequest,
    MultiRequest,
    PingRequest,
    Request,
    SetDataRequest,
    SetWatchesRequest,
    SyncRequest,
    decode_body,
    decode_event,
    decode_handshake_reply,
    decode_reply,
    encode_frame,
    encode_request,
)
from tests.sim.server_checks import FIRED_BY, FIRES
from tests.sim.server_shell import ServerShell
from tests.sim.server_sim_base import EOF, HANDSHAKE, WAKE
from tests.sim.sim_state import Client, Conn, Pending
from tests.sim.trace import zxid_str

KEYS = 8  # shared znodes /k0 .. /k7


class ClientActions(ServerShell):
    """The clients' side of the simulation: see the module docstring."""

    # --- the client end of a connection --------------------------------------------------------

    def _to_client(self, conn: Conn, item: Any) -> bool:
        if conn.s2c_cut:
            return False
        client = conn.client
        if item == EOF:
            server = self.servers[conn.sid]
            if conn.server_open and server.core is not None and server.incarnation == conn.incarnation:
                conn.server_open = False
                server.conns.pop(conn.id, None)
                server.core.client_closed(conn.id)
                self._after(server)
            if client.conn is conn:
                self._client_lost(client, "closed by the server")
            return True
        if client.conn is not conn:
            return False  # the client hung up; the bytes go nowhere
        self._client_frame(client, conn, item)
        server = self.servers[conn.sid]
        if conn.server_open and server.core is not None and server.incarnation == conn.incarnation:
            server.core.client_sent(conn.id, len(item), self.local(server))
            self._after(server)
        return True

    # --- clients -----------------------------------------------------------------------------------

    def _wake_client(self, client: Client, delay: int) -> None:
        time = self.now + max(1, delay)
        if client.wake_at > self.now and client.wake_at <= time:
            return
        client.wake_at = time
        client.wake_token += 1
        self._at(time, WAKE, (client, client.wake_token))

    def _client_next_wake(self, client: Client) -> None:
        now = self.now
        if client.silent_until > now:
            self._wake_client(client, client.silent_until - now)
            return
        conn = client.conn
        if conn is None:
            self._wake_client(client, 1)
            return
        timeout = client.timeout or client.requested_timeout
        if not conn.answered:
            self._wake_client(client, conn.opened_at + timeout * 2 // 3 + 1 - now)
            return
        times = [client.last_sent + timeout // 3, client.last_heard + timeout * 2 // 3 + 1]
        if not client.pending and (self.clients_working or client.script):
            times.append(client.next_op_at)
        self._wake_client(client, min(times) - now)

    def _client_wake(self, client: Client, token: int) -> bool:
        if token != client.wake_token:
            return False
        client.wake_at = -1
        now = self.now
        did = False
        conn = client.conn
        timeout = client.timeout or client.requested_timeout
        if client.silent_until > now:
            pass
        elif conn is None:
            self._connect(client)
            did = True
        elif not conn.answered:
            if now - conn.opened_at > timeout * 2 // 3:
                self._client_hang_up(client, "no handshake answer")
                did = True
        elif now - client.last_heard > timeout * 2 // 3:
            self._client_hang_up(client, "the server went quiet")
            did = True
        elif client.pending and client.pending[-1].what == "close":
            pass  # nothing more on a session being closed
        elif client.hint is not None and self.clients_working:
            self._client_op(client)  # told of a write elsewhere: sync and read now, behind what is pending
            did = True
        elif not client.pending and now >= client.next_op_at and (self.clients_working or client.script):
            self._client_op(client)
            did = True
        elif now - client.last_sent >= timeout // 3:
            self._send(client, PingRequest(), "ping")
            did = True
        self._client_next_wake(client)
        return did

    def _connect(self, client: Client) -> None:
        sid = client.prefer if client.prefer is not None else self.rng.choice(self.ids)
        server = self.servers[sid]
        self.conn_ids += 1
        conn = Conn(id=self.conn_ids, client=client, sid=sid, incarnation=server.incarnation, opened_at=self.now)
        client.conn = conn
        client.pending.clear()
        client.replaying = False
        client.last_sent = client.last_heard = self.now
        self.note("conn", client.id, sid, conn.id, f"connect session={client.session_id:#x}")
        self._c2s(conn, HANDSHAKE)

    def _client_hang_up(self, client: Client, why: str) -> None:
        """The client closes its connection (and will reconnect, to another server)."""
        conn = client.conn
        assert conn is not None
        self.note("conn", client.id, conn.sid, conn.id, f"client hangs up: {why}")
        self._c2s(conn, EOF)
        self._client_lost(client, why, hung_up=True)

    def _client_lost(self, client: Client, why: str, *, hung_up: bool = False) -> None:
        conn = client.conn
        assert conn is not None
        if not hung_up:
            self.note("conn", client.id, conn.sid, conn.id, f"lost: {why}")
        client.conn = None
        client.pending.clear()  # unknown outcomes
        client.replaying = False
        for kinds in client.watches.values():
            kinds.pop("exist", None)  # not re-registered (see _send_set_watches)
        client.watches = {path: kinds for path, kinds in client.watches.items() if kinds}
        if client.prefer == conn.sid and self.rng.random() < 0.8:
            client.prefer = None
        others = [sid for sid in self.ids if sid != conn.sid]
        if client.prefer is None:
            client.prefer = self.rng.choice(others)
        self._wake_client(client, self.rng.randint(1, 50))

    def _reset(self, conn: Conn) -> bool:
        client = conn.client
        if client.conn is not conn:
            return False
        self._client_lost(client, "connection failed")
        return True

    def _session_gone(self, client: Client, why: str) -> None:
        self.note("note", f"c{client.id}: session {client.session_id:#x} gone ({why})")
        client.session_id = 0
        client.password = b""
        client.timeout = 0
        client.watches = {}
        client.ephemerals = []

    def _send(self, client: Client, request: Request, what: str, **extra: Any) -> Pending:
        conn = client.conn
        assert conn is not None and conn.answered
        client.xid += 1
        pending = Pending(client.xid, request, what, **extra)
        client.pending.append(pending)
        client.last_sent = self.now
        self.note("send", client.id, conn.sid, client.xid, request)
        self._c2s(conn, encode_frame(encode_request(client.xid, request)))
        return pending

    def _data(self, client: Client) -> bytes:
        client.counter += 1
        return f"c{client.id}-{client.counter}".encode()

    def _client_op(self, client: Client) -> None:
        rng = self.rng
        if client.script:
            self._send(client, client.script[0], "scripted")
            return
        key = f"/k{rng.randrange(KEYS)}"
        # Writes take [0, 47) and [90, 100) of the range, reads [47, 90).
        if rng.random() < client.write_share:
            choice = rng.random() * 57
            if choice >= 47:
                choice += 43
        else:
            choice = 47 + rng.random() * 43
        if client.hint is not None:
            key, client.hint = client.hint, None
            choice = 80  # sync, then get what the other client wrote
        if choice < 14:
            self._send(client, CreateRequest(path=key, data=self._data(client)), "create")
        elif choice < 19:
            self._send(
                client,
                CreateRequest(
                    path=f"/e/c{client.id}-",
                    data=self._data(client),
                    mode=CreateMode.EPHEMERAL_SEQUENTIAL,
                    makepath=True,
                ),
                "create",
            )
        elif choice < 23:
            self._send(
                client,
                CreateRequest(
                    path="/q/s-", data=self._data(client), mode=CreateMode.PERSISTENT_SEQUENTIAL, makepath=True
                ),
                "create",
            )
        elif choice < 38:
            version = client.versions.get(key, -1) if rng.random() < 0.7 else -1
            self._send(client, SetDataRequest(path=key, data=self._data(client), version=version), "set")
        elif choice < 44:
            if client.ephemerals and rng.random() < 0.4:
                path = client.ephemerals.pop(rng.randrange(len(client.ephemerals)))
            elif client.children and rng.random() < 0.3:
                path = "/q/" + client.children.pop(rng.randrange(len(client.children)))
            else:
                path = key
            version = client.versions.get(path, -1) if rng.random() < 0.5 else -1
            self._send(client, DeleteRequest(path=path, version=version), "delete")
        elif choice < 47:
            other = f"/k{rng.randrange(KEYS)}"
            ops = (
                CheckRequest(path=key, version=client.versions.get(key, 0)),
                SetDataRequest(path=other, data=self._data(client)),
            )
            self._send(client, MultiRequest(ops=ops), "multi")
        elif choice < 62:
            self._send(client, GetDataRequest(path=key, watch=rng.random() < 0.35), "get")
        elif choice < 71:
            self._send(client, ExistsRequest(path=key, watch=rng.random() < 0.35), "exists")
        elif choice < 75:
            path = "/q" if rng.random() < 0.7 else "/"
            self._send(client, GetChildrenRequest(path=path, watch=rng.random() < 0.35), "children")
        elif choice < 90:
            # sync, then a get: pipelined, or sent once the sync is answered
            required = self.checker.acked_max
            get = GetDataRequest(path=key, watch=rng.random() < 0.2)
            if rng.random() < 0.5:
                self._send(client, SyncRequest(path="/"), "sync")
                self._send(client, get, "synced_get", required=required)
            else:
                self._send(client, SyncRequest(path="/"), "sync", then=get, required=required)
        elif choice < 99.7:
            # a write with a read pipelined behind it (the read must see the write)
            self._send(client, SetDataRequest(path=key, data=self._data(client)), "set")
            self._send(client, GetDataRequest(path=key), "get")
        else:
            self._send(client, CloseSessionRequest(), "close")

    def _notify(self, writer: Client, request: Request) -> None:
        """Tell another client, out of band, about an acknowledged write: it will sync and read
        the path next (the use ``sync`` is for: a read that must see a write made elsewhere)."""
        path = getattr(request, "path", None)
        if path is None or not path.startswith("/k"):
            path = f"/k{self.rng.randrange(KEYS)}"
        others = [
            client
            for client in self.clients
            if client is not writer
            and client.conn is not None
            and client.conn.answered
            and client.hint is None
            and client.silent_until <= self.now
        ]
        if not others:
            return
        assert writer.conn is not None
        elsewhere = [client for client in others if client.conn is not None and client.conn.sid != writer.conn.sid]
        if elsewhere and self.rng.random() < 0.8:
            others = elsewhere  # sync matters most to a reader on another server
        idle = [client for client in others if not client.pending]
        if idle and self.rng.random() < 0.8:
            others = idle
        for reader in self.rng.sample(others, min(len(others), self.rng.choice((1, 1, 2)))):
            reader.hint = path
            self._wake_client(reader, self.rng.randint(1, self.options.client_delay_max))

    def _send_set_watches(self, client: Client) -> None:
        """Re-register data and child watches after a reconnect (exist watches are dropped: the
        replay only looks at the current state, so a node created and deleted meanwhile is missed,
        as in ZooKeeper)."""
        data = sorted(path for path, kinds in client.watches.items() if "data" in kinds)
        child = sorted(path for path, kinds in client.watches.items() if "child" in kinds)
        relative = client.last_zxid
        for kinds in client.watches.values():
            for kind in kinds:
                kinds[kind] = relative
        client.replaying = True
        self._send(
            client,
            SetWatchesRequest(relative_zxid=relative, data=tuple(data), child=tuple(child)),
            "setwatches",
            required=relative,
        )

    def _client_frame(self, client: Client, conn: Conn, frame: bytes) -> None:
        checker = self.checker
        client.last_heard = self.now
        item = decode_body(frame[4:])
        if not conn.answered:
            conn.answered = True
            answer = decode_handshake_reply(item)
            if isinstance(answer, tuple):
                code, message = answer
                self.note("recv_hs", client.id, conn.id, f"refused {code}: {message}")
                if code == SessionExpiredError.code:
                    self._session_gone(client, "refused as expired")
                # the server closes the connection; the client then tries another server
                return
            assert isinstance(answer, ConnectResponse)
            self.note("recv_hs", client.id, conn.id, f"session={answer.session_id:#x} zxid={zxid_str(answer.zxid)}")
            if answer.zxid < client.last_zxid:
                checker.fail(
                    f"c{client.id}: s{conn.sid} accepted the session at {zxid_str(answer.zxid)}, behind the client's "
                    f"{zxid_str(client.last_zxid)} (invariant 4: reads go back in time)"
                )
            if client.session_id and answer.session_id != client.session_id:
                checker.fail(f"c{client.id}: reconnected to session {answer.session_id:#x}, not {client.session_id:#x}")
            if not client.session_id:
                client.sessions += 1
                client.watches = {}
            client.session_id = answer.session_id
            client.password = answer.password
            client.timeout = answer.timeout_ms
            client.prefer = None
            if client.watches:
                self._send_set_watches(client)
            self._client_next_wake(client)
            return
        xid, zxid, err, result = decode_reply(item)
        self.note("recv_c", client.id, conn.id, xid, zxid, err, result)
        if zxid < client.last_zxid:
            checker.fail(
                f"c{client.id}: a frame at {zxid_str(zxid)} after one at {zxid_str(client.last_zxid)} "
                "(invariant 4: reads go back in time)"
            )
        else:
            client.last_zxid = zxid
        if xid == WATCH_XID:
            self._client_event(client, zxid, result)
            return
        pending = client.pending
        if not pending or pending[0].xid != xid:
            expected = pending[0].xid if pending else None
            if err == SessionExpiredError.code and "expired_reply_out_of_order" in self.known_findings:
                # Finding S1 (tests/sim/SERVER_FINDINGS.md): the pipeline answers a request of an
                # expired session at once, ahead of the session's earlier unanswered requests.
                # The project's client treats that as a protocol error and drops the
                # connection; so does this one (it learns of the expiry at its next handshake).
                checker.findings["expired_reply_out_of_order"] += 1
                self._client_hang_up(client, f"reply to xid {xid} while {expected} is the oldest (finding S1)")
                return
            checker.fail(f"c{client.id}: reply to xid {xid}, expected {expected}: replies out of order")
            return
        request = pending.popleft()
        if request.what == "setwatches" and err != 0:
            client.watches = {}  # not re-registered: they will not fire
        if err != SessionExpiredError.code:  # (the session's watches die with it)
            self._check_watches_fired(client, zxid)
        self._client_reply(client, request, zxid, err, result)
        if not pending:
            client.next_op_at = self.now + self._exp(self.options.op_mean)
            self._client_next_wake(client)

    def _check_watches_fired(self, client: Client, zxid: int) -> None:
        first_change = self.checker.first_change
        for path, kinds in client.watches.items():
            for kind, registered in kinds.items():
                missed = first_change(path, registered, zxid, FIRED_BY[kind])
                if missed is not None:
                    self.checker.fail(
                        f"c{client.id}: a reply at {zxid_str(zxid)} arrived before the {kind} watch on {path} "
                        f"(registered at {zxid_str(registered)}) fired for the change at {zxid_str(missed)} "
                        "(invariant 4)"
                    )
                    kinds[kind] = zxid  # report once

    def _client_event(self, client: Client, zxid: int, result: Any) -> None:
        checker = self.checker
        checker.events_checked += 1
        event = decode_event(zxid, result)
        path = event.path
        kinds = client.watches.get(path)
        fired = [kind for kind in FIRES[event.type] if kinds and kind in kinds]
        if not fired:
            checker.fail(
                f"c{client.id}: {event.type.name} event for {path} at {zxid_str(zxid)}, which no registered "
                "watch of its (not fired yet) covers (invariant 4)"
            )
            return
        assert kinds is not None
        for kind in fired:
            registered = kinds.pop(kind)
            if not client.replaying and zxid <= registered:
                checker.fail(
                    f"c{client.id}: {kind} watch on {path} registered at {zxid_str(registered)} fired for "
                    f"{zxid_str(zxid)} (invariant 4)"
                )
        if not kinds:
            del client.watches[path]
        if not client.replaying and not checker.changed_at(path, zxid, event.type):
            checker.fail(
                f"c{client.id}: {event.type.name} event for {path} at {zxid_str(zxid)}: no such change (invariant 4)"
            )

    def _register(self, client: Client, path: str, kind: str, zxid: int) -> None:
        kinds = client.watches.setdefault(path, {})
        kinds.setdefault(kind, zxid)

    def _client_reply(self, client: Client, pending: Pending, zxid: int, err: int, result: Any) -> None:
        checker = self.checker
        request = pending.request
        what = pending.what
        if err == SessionExpiredError.code:
            self._session_gone(client, "a request was answered as expired")
            return
        if what in ("create", "set", "delete", "multi", "scripted"):
            if err == 0:
                checker.on_ack(client.id, client.session_id, pending.xid, zxid, what)
                client.acked.append(zxid)
                if self.clients_working and self.rng.random() < 0.6:
                    self._notify(client, request)
                if what == "scripted":
                    client.script.popleft()
                match request:
                    case CreateRequest(mode=mode):
                        path = result[0]
                        client.versions[path] = 0
                        if mode.is_ephemeral:
                            client.ephemerals.append(path)
                    case SetDataRequest(path=path):
                        client.versions[path] = result[4]
                    case DeleteRequest(path=path):
                        client.versions.pop(path, None)
            return
        if what in ("get", "synced_get"):
            assert isinstance(request, GetDataRequest)
            if err == 0:
                data, stat = result
                checker.check_get(client.id, request.path, zxid, data, stat[1])
                client.versions[request.path] = stat[4]
                if request.watch:
                    self._register(client, request.path, "data", zxid)
            elif err == NoNodeError.code:
                checker.check_get(client.id, request.path, zxid, None, None)
            if what == "synced_get" and pending.required is not None and err in (0, NoNodeError.code):
                checker.check_synced_read(client.id, pending.required, zxid, f"get {request.path}")
            return
        if what == "exists":
            assert isinstance(request, ExistsRequest)
            if err == 0:
                checker.check_get(client.id, request.path, zxid, None, result[1] if result is not None else None)
                if request.watch:
                    self._register(client, request.path, "data" if result is not None else "exist", zxid)
            return
        if what == "children":
            assert isinstance(request, GetChildrenRequest)
            if err == 0:
                if request.path == "/q":
                    client.children = list(result[0])
                if request.watch:
                    self._register(client, request.path, "child", zxid)
            return
        if what == "sync":
            follow = client.pending[0] if client.pending else None
            if err != 0:
                if follow is not None and follow.what == "synced_get":
                    follow.required = None  # the sync failed: a plain read
                return
            if pending.then is not None and client.conn is not None:
                self._send(client, pending.then, "synced_get", required=pending.required)
            return
        if what == "setwatches":
            client.replaying = False
            return
        if what == "close":
            if err == 0:
                self._session_gone(client, "closed by its client")
            return
        assert what == "ping", what
