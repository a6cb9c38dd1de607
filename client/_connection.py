"""The trio shell of a client session: sockets, reconnects, pings, the state.

Theory of operation
    :class:`Connection` owns one :class:`~client._session.SessionCore` and moves
    bytes between it and one socket at a time. :meth:`Connection.run` (a task in the
    nursery of ``client.connect``) connects to a server, then per connection runs
    three tasks:

    - the *reader* reads big chunks (``receive_some(65536)``) and feeds them to the
      core, which completes every reply in the chunk and fires watches;
    - the *writer* sleeps until requests are queued, then sends everything queued
      in ONE ``send_all`` (many concurrent callers coalesce into one write);
    - the *keepalive* sends a PING when nothing was sent for a third of the session
      timeout, and drops the connection when nothing arrived for two thirds of it.

    A caller (:meth:`Connection.call`) encodes its request into the core's buffer,
    wakes the writer if it sleeps and parks itself with
    :func:`trio.lowlevel.wait_task_rescheduled` until the reader hands it its reply:
    no task, no channel and no Event per request.

States
    ``CONNECTED`` while a connection serves the session. When it drops (EOF, error,
    read timeout, a malformed frame) every request in flight fails with
    ``ConnectionLossError`` and the state is ``SUSPENDED``: new calls wait for the
    reconnect. The shell then tries the hosts in turn (shuffled once, continuing after
    the last one used), backing off between rounds (jittered, doubling up to
    ``max_reconnect_delay``). A server behind the client (``ServerBehindError``) is
    skipped. On success the core queues ``SetWatches`` first and the state returns to
    ``CONNECTED``. If the server says the session expired, or the session timeout
    passes since the last byte from any server, the state is ``LOST``: final, every
    call and every armed watch raises ``SessionExpiredError``. (Unlike kazoo, which
    silently opens a new session after LOST, a lost session here ends the client:
    whatever relied on its ephemerals must notice, and a trio program handles that
    by leaving the ``connect`` block.)

    The first connection is retried the same way until ``connect_timeout`` (a
    service may start before its servers do). With ``fail_fast`` (one-shot tools such
    as the ``coord`` command) it gives up at once when, in ``FAIL_FAST_ROUNDS``
    rounds in a row, every server refused the connection or has a name that does not
    resolve: nothing there will answer. Reconnects of an existing session always
    keep trying until the session timeout, so a session rides out a server restart.

Cancellation
    A caller cancelled while its request is in flight just stops waiting: the
    request stays in the FIFO and its reply is discarded when it arrives, so the
    connection is never corrupted. The request may or may not have been applied.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
import ssl
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import trio

from client._errors import ConnectionClosedError
from client._session import SessionCore
from client._state import ConnectionState, StateStream
from client._watch import _fresh
from coord.errors import BadArgumentsError, ConnectionLossError, CoordError, SessionExpiredError
from coord.protocol import CloseSessionRequest, ConnectResponse, PingRequest, ProtocolError, Request

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 2281
RECEIVE_BYTES: Final = 65536
CLOSE_TIMEOUT_S: Final = 2.0
"""How long closing waits for the server to confirm CLOSE_SESSION."""
RECONNECT_DELAY_MIN_S: Final = 0.02
ATTEMPT_TIMEOUT_MIN_S: Final = 0.5
FAIL_FAST_ROUNDS: Final = 3
"""With ``fail_fast``, the rounds in a row in which every server must have refused the
connection before the first connection gives up (a few tens of milliseconds)."""

OpenStream = Callable[[str, int], Awaitable[trio.abc.Stream]]
"""How to open a byte stream to a server: ``await open_stream(host, port)``."""

_CONNECTED: Final = ConnectionState.CONNECTED
_SUSPENDED: Final = ConnectionState.SUSPENDED
_LOST: Final = ConnectionState.LOST
_NETWORK_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ProtocolError)


class _DroppedError(Exception):
    """Internal: this connection is unusable (the reason is the message)."""


class _NobodyThereError(Exception):
    """Internal: with ``fail_fast``, every server kept refusing (the reason is the message)."""


def _hopeless(error: BaseException) -> str | None:
    """Why connecting failed, if retrying at once cannot help: ``"connection refused"``
    (nothing listens on the port) or ``"unknown host"``; None for other failures.

    trio reports a refused connection as an OSError caused by a group of the refusals
    of each address the name resolved to.
    """
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error.__cause__, ssl.SSLError):  # client._tls: the TLS handshake failed
        return f"TLS refused: {error.__cause__}"
    if isinstance(error, socket.gaierror) and error.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)):
        return "unknown host"
    if isinstance(error, OSError) and error.errno == errno.ECONNREFUSED:
        return "connection refused"
    cause = error.__cause__
    if isinstance(error, OSError) and isinstance(cause, BaseExceptionGroup):
        reasons = {_hopeless(leaf) for leaf in cause.exceptions}
        if len(reasons) == 1:
            return reasons.pop()
    return None


def parse_hosts(hosts: str | Sequence[str], *, default_port: int | None = DEFAULT_PORT) -> list[tuple[str, int]]:
    """Parse ``"h1:p1,h2:p2"`` (or a list of ``"h:p"``) into ``(host, port)`` pairs.

    A missing port means ``default_port`` (2281), or is an error if that is None;
    IPv6 addresses go in brackets (``"[::1]:2281"``).

    Raises:
        BadArgumentsError: an empty list or an empty entry (``"a:1,,b:2"``), a port
            that is not a number or not in 1..65535, or a chroot suffix (not supported).
    """
    items = hosts.split(",") if isinstance(hosts, str) else list(hosts)
    if not any(item.strip() for item in items):
        raise BadArgumentsError(f"no hosts in {hosts!r}")
    result: list[tuple[str, int]] = []
    for raw in items:
        item = raw.strip()
        if not item:
            raise BadArgumentsError(f"empty entry in the host list {hosts!r}")
        if "/" in item:
            raise BadArgumentsError(f"a chroot in the host list is not supported: {raw!r}")
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
            if rest and not rest.startswith(":"):
                raise BadArgumentsError(f"bad host {raw!r}: expected [IPV6]:PORT")
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
        else:
            host, port_text = item, ""
        if not host:
            raise BadArgumentsError(f"no host in {raw!r}")
        if not port_text:
            if default_port is None:
                raise BadArgumentsError(
                    f"expected HOST:PORT (an IPv6 address in brackets, as [::1]:2281), got {raw.strip()!r}"
                )
            port = default_port
        elif not (port_text.isascii() and port_text.isdigit()):
            raise BadArgumentsError(f"port must be a number, got {port_text!r} in {raw.strip()!r}")
        else:
            port = int(port_text)
            if not 0 < port < 65536:
                raise BadArgumentsError(f"port {port} in {raw.strip()!r} is out of range (1..65535)")
        result.append((host, port))
    return result


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def open_tcp(host: str, port: int) -> trio.abc.Stream:
    """The default ``open_stream``: a TCP connection (trio sets TCP_NODELAY)."""
    return await trio.open_tcp_stream(host, port)


class Connection:
    """The shell that keeps one session connected (see the module doc).

    Args:
        hosts: ``(host, port)`` pairs, tried in a shuffled order.
        session_timeout_ms: the session timeout to ask for.
        connect_timeout: seconds to wait for the first session.
        max_reconnect_delay: the cap of the backoff between rounds of attempts.
        fail_fast: give up on the first session early when nothing listens (see the
            module doc).
        data_bytes_max: the largest value a request may carry.
        rng: the source of shuffling and jitter.
        open_stream: how to reach a server.
    """

    def __init__(
        self,
        hosts: list[tuple[str, int]],
        *,
        session_timeout_ms: int,
        connect_timeout: float,
        max_reconnect_delay: float,
        data_bytes_max: int,
        rng: random.Random,
        open_stream: OpenStream = open_tcp,
        fail_fast: bool = False,
    ) -> None:
        self.core = SessionCore(
            timeout_ms=session_timeout_ms, data_bytes_max=data_bytes_max, wake=trio.lowlevel.reschedule
        )
        self._hosts_text = ",".join(_host_port(host, port) for host, port in hosts)
        self._hosts = list(hosts)
        rng.shuffle(self._hosts)
        self._fail_fast = fail_fast
        self._host_index = 0
        self._rng = rng
        self._open_stream = open_stream
        self._connect_timeout = connect_timeout
        self._max_reconnect_delay = max_reconnect_delay
        self.state = _SUSPENDED
        """Until the first session exists the client is not handed out, so users only
        ever see CONNECTED, SUSPENDED and LOST in that order of lifetime."""
        self.accepting = False
        """True while new requests may be sent (CONNECTED and not closing)."""
        self.address: tuple[str, int] | None = None
        """The server of the current connection."""
        self._state_changed = trio.Event()
        self._state_streams: weakref.WeakSet[StateStream] = weakref.WeakSet()
        self._lost_error: CoordError | None = None
        self._closing = False
        self._writer: Any = None  # the writer task while it sleeps
        self._connection_scope: trio.CancelScope | None = None
        self._run_scope: trio.CancelScope | None = None
        self._last_received = 0.0
        self._last_sent = 0.0
        self._last_failure: BaseException | None = None

    # --- requests -------------------------------------------------------------------

    async def call(self, request: Request, path: str = "", watch: Any = None, extra: Any = None) -> Any:
        """Send one request and wait for its result (the hot path).

        Args:
            request: the request (the session core gives it its xid and encodes it).
            path: the node, for error messages and watch registration.
            watch: the Watch or WatchStream the request arms, if any.
            extra: op-specific context for decoding the result.

        Returns:
            The decoded result.

        Raises:
            CoordError: the server's error for this request; ``ConnectionLossError``
                if the connection dropped before the reply came; ``SessionExpiredError``
                if the session is lost (``ConnectionClosedError`` once closed).

        Cancellation: if cancelled before the request was queued (while waiting for a
        reconnect) nothing was sent; after that, the request may or may not take effect.
        """
        if not self.accepting:
            await self._wait_accepting()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        slot = self.core.send(request, path, watch, extra)
        writer = self._writer
        if writer is not None:
            self._writer = None
            trio.lowlevel.reschedule(writer)
        slot.waiter = trio.lowlevel.current_task()

        def abort(raise_cancel: Any) -> trio.lowlevel.Abort:
            slot.waiter = None  # the reply will be discarded
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        if slot.error is not None:
            raise slot.error
        return slot.value

    async def _wait_accepting(self) -> None:
        while True:
            if self._closing or self.state is _LOST:
                raise self._lost()
            if self.accepting:
                return
            await self._state_changed.wait()

    def _lost(self) -> CoordError:
        error = self._lost_error or ConnectionClosedError("the client is closed")
        return _fresh(error)

    def _send_internal(self, request: Request) -> Any:
        """Queue a request whose reply nobody awaits (pings)."""
        slot = self.core.send(request)
        self._wake_writer()
        return slot

    def _wake_writer(self) -> None:
        writer = self._writer
        if writer is not None:
            self._writer = None
            trio.lowlevel.reschedule(writer)

    # --- state ----------------------------------------------------------------------

    async def wait_connected(self) -> None:
        """Wait until the state is CONNECTED.

        Raises:
            SessionExpiredError: the session is lost (or the client closed).
        """
        while True:
            if self.state is _LOST or self._closing:
                raise self._lost()
            if self.state is _CONNECTED:
                await trio.lowlevel.checkpoint()
                return
            await self._state_changed.wait()

    def states(self) -> StateStream:
        """A new iterator of the state: the current one first, then each change."""
        stream = StateStream(self.state)
        if self.state is not _LOST:
            self._state_streams.add(stream)
        return stream

    def _set_state(self, state: ConnectionState) -> None:
        if state is self.state:
            return
        log.info("session %#x: %s -> %s", self.core.session_id, self.state, state)
        self.state = state
        self.accepting = state is _CONNECTED and not self._closing
        changed = self._state_changed
        self._state_changed = trio.Event()
        changed.set()
        for stream in list(self._state_streams):
            stream._put(state)

    def _lose(self, error: CoordError) -> None:
        """The session is over: fail everything, state LOST (final)."""
        if self.state is _LOST:
            return
        if not isinstance(error, ConnectionClosedError):
            log.warning("session %#x lost: %s", self.core.session_id, error)
        self._lost_error = error
        self.core.expire(error)
        self._set_state(_LOST)
        self._state_streams.clear()
        if self._connection_scope is not None:
            self._connection_scope.cancel()
            self._connection_scope = None
        if self._run_scope is not None:
            self._run_scope.cancel()

    # --- the session task -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the session connected until it is lost or the client closes.

        ``task_status.started()`` is called once the first session exists.

        Raises:
            ConnectionLossError: (before started) no server could be reached within
                ``connect_timeout``.
        """
        try:
            with trio.CancelScope() as self._run_scope:
                stream, answer = await self._connect_first()
                # From now on only close() or the loss of the session stops this
                # task: when the block that owns the client is cancelled, close()
                # still needs the writer and reader to say goodbye to the server.
                self._run_scope.shield = True
                task_status.started()
                while True:
                    await self._serve(stream, answer)
                    if self._closing or self.state is _LOST:
                        return
                    found = await self._reconnect()
                    if found is None:
                        return
                    stream, answer = found
        finally:
            self._run_scope = None
            if self.state is not _LOST:
                self._lose(ConnectionClosedError("the client is closed"))

    async def _connect_first(self) -> tuple[trio.abc.Stream, ConnectResponse]:
        with trio.move_on_after(self._connect_timeout):
            try:
                return await self._establish(fail_fast=self._fail_fast)
            except _NobodyThereError as error:
                raise ConnectionLossError(f"could not connect to {error}") from self._last_failure
        raise ConnectionLossError(
            f"could not connect to {self._hosts_text} within {self._connect_timeout:g}s: {self._last_failure}"
        ) from self._last_failure

    async def _reconnect(self) -> tuple[trio.abc.Stream, ConnectResponse] | None:
        deadline = self._last_received + self.core.timeout_ms / 1000
        with trio.move_on_at(deadline):
            try:
                return await self._establish()
            except SessionExpiredError as error:
                self._lose(error)
                return None
        self._lose(
            SessionExpiredError(
                f"session {self.core.session_id:#x} expired: no server answered within the session timeout"
                f" (last failure: {self._last_failure})"
            )
        )
        return None

    async def _establish(self, *, fail_fast: bool = False) -> tuple[trio.abc.Stream, ConnectResponse]:
        """Try the hosts in turn, backing off between rounds, until one takes us.

        Raises:
            SessionExpiredError: a server said the session is over.
            _NobodyThereError: (``fail_fast``) every server refused for
                ``FAIL_FAST_ROUNDS`` rounds in a row.
        """
        delay = min(RECONNECT_DELAY_MIN_S, self._max_reconnect_delay)
        hopeless_rounds = 0
        while True:
            reasons: dict[str, str | None] = {}
            for _ in range(len(self._hosts)):
                host, port = self._hosts[self._host_index]
                self._host_index = (self._host_index + 1) % len(self._hosts)
                try:
                    return await self._attempt(host, port)
                except SessionExpiredError:
                    raise
                except (*_NETWORK_ERRORS, CoordError, _DroppedError) as error:
                    log.debug("connecting to %s:%s failed: %r", host, port, error)
                    self._last_failure = error
                    reasons[_host_port(host, port)] = _hopeless(error)
            if fail_fast:
                hopeless_rounds = hopeless_rounds + 1 if None not in reasons.values() else 0
                if hopeless_rounds >= FAIL_FAST_ROUNDS:
                    raise _NobodyThereError(self._describe_failures(reasons))
            await trio.sleep(delay * (0.5 + 0.5 * self._rng.random()))
            delay = min(delay * 2, self._max_reconnect_delay)

    def _describe_failures(self, reasons: dict[str, str | None]) -> str:
        """``"a:1,b:2: connection refused"``, or each server's reason if they differ."""
        if len(set(reasons.values())) == 1:
            return f"{self._hosts_text}: {next(iter(reasons.values()))}"
        return ", ".join(f"{name} ({reasons.get(name)})" for name in self._hosts_text.split(","))

    async def _attempt(self, host: str, port: int) -> tuple[trio.abc.Stream, ConnectResponse]:
        """One connection attempt with the handshake, bounded as ZooKeeper bounds it
        (the session timeout shared among the hosts)."""
        timeout = max(self.core.timeout_ms / 1000 / len(self._hosts), ATTEMPT_TIMEOUT_MIN_S)
        with trio.move_on_after(timeout):
            stream = await self._open_stream(host, port)
            try:
                await stream.send_all(self.core.begin_connection())
                while True:
                    data = await stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        raise _DroppedError("the server closed the connection during the handshake")
                    answer = self.core.receive_handshake(data)
                    if answer is not None:
                        self.address = (host, port)
                        return stream, answer
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        raise _DroppedError(f"no handshake answer within {timeout:g}s")

    async def _serve(self, stream: trio.abc.Stream, answer: ConnectResponse) -> None:
        """Serve the session on ``stream`` until the connection drops."""
        core = self.core
        core.connection_made(answer)
        log.info(
            "session %#x connected to %s (server %d, timeout %d ms)",
            answer.session_id,
            self.address,
            answer.server_id,
            answer.timeout_ms,
        )
        self._last_received = self._last_sent = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                self._connection_scope = nursery.cancel_scope
                self._set_state(_CONNECTED)
                nursery.start_soon(self._read_loop, stream)
                nursery.start_soon(self._write_loop, stream)
                nursery.start_soon(self._keepalive_loop)
        finally:
            if self._connection_scope is not None:  # cancelled from outside (close)
                self._connection_scope = None
                core.connection_lost(ConnectionLossError("the connection was closed"))
            self._writer = None
            await trio.aclose_forcefully(stream)

    def _drop(self, reason: str) -> None:
        """This connection is unusable: fail what is in flight, go SUSPENDED."""
        scope = self._connection_scope
        if scope is None:
            return
        self._connection_scope = None
        scope.cancel()
        if self.core.expired is not None:
            self._lose(self.core.expired)
            return
        if not self._closing:
            log.info("session %#x: connection to %s dropped: %s", self.core.session_id, self.address, reason)
        self.core.connection_lost(ConnectionLossError(f"connection lost: {reason}"))
        if not self._closing:
            self._set_state(_SUSPENDED)

    async def _read_loop(self, stream: trio.abc.Stream) -> None:
        core = self.core
        try:
            core.receive(b"")  # frames that came with the handshake answer
            while True:
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    raise _DroppedError("the server closed the connection")
                self._last_received = trio.current_time()
                core.receive(data)
                if core.expired is not None:
                    raise _DroppedError(f"the session expired: {core.expired}")
        except (*_NETWORK_ERRORS, _DroppedError) as error:
            self._drop(str(error) or type(error).__name__)

    async def _write_loop(self, stream: trio.abc.Stream) -> None:
        core = self.core
        try:
            while True:
                if not core.outgoing:
                    self._writer = trio.lowlevel.current_task()
                    await trio.lowlevel.wait_task_rescheduled(self._abort_writer)
                    continue
                await stream.send_all(core.take_outgoing())
                self._last_sent = trio.current_time()
        except _NETWORK_ERRORS as error:
            self._drop(str(error) or type(error).__name__)

    def _abort_writer(self, raise_cancel: Any) -> trio.lowlevel.Abort:
        self._writer = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def _keepalive_loop(self) -> None:
        timeout = self.core.timeout_ms / 1000
        ping_interval = timeout / 3
        read_timeout = timeout * 2 / 3
        while True:
            now = trio.current_time()
            if now - self._last_received >= read_timeout:
                self._drop(f"nothing from the server for {read_timeout:g}s")
                return
            if now - self._last_sent >= ping_interval:
                self._send_internal(PingRequest())
                self._last_sent = now
            await trio.sleep_until(min(self._last_sent + ping_interval, self._last_received + read_timeout))

    # --- closing --------------------------------------------------------------------

    async def close(self) -> None:
        """Close the session (CLOSE_SESSION, at most 2 s, shielded) and stop.

        Idempotent. Requests in flight fail with ``ConnectionLossError``; later calls
        and armed watches raise ``ConnectionClosedError``.
        """
        if self._closing:
            await trio.lowlevel.checkpoint()
            return
        self._closing = True
        self.accepting = False
        if self.state is _CONNECTED and self._connection_scope is not None:
            timeout = min(CLOSE_TIMEOUT_S, self.core.timeout_ms / 1000)
            with trio.move_on_after(timeout, shield=True):
                slot = self._send_internal(CloseSessionRequest())
                slot.waiter = trio.lowlevel.current_task()

                def abort(raise_cancel: Any) -> trio.lowlevel.Abort:
                    slot.waiter = None
                    return trio.lowlevel.Abort.SUCCEEDED

                await trio.lowlevel.wait_task_rescheduled(abort)
        self._lose(ConnectionClosedError("the client is closed"))
        await trio.lowlevel.checkpoint()


__all__ = ["DEFAULT_PORT", "Connection", "OpenStream", "open_tcp", "parse_hosts"]
