"""The server-to-server transport: opaque frames between the servers of an ensemble.

:class:`PeerTransport` carries ``bytes`` from one server to another. It knows nothing
of Zab: the ZAB core's messages are encoded by ``coord.zab.codec`` and handed to
:meth:`PeerTransport.send`; what arrives goes to ``on_message`` (or the ``received``
channel) as ``(source id, bytes)``.

Theory of operation
-------------------
*Two unidirectional connections per pair.* Every server dials every other server for
its own outgoing messages and only ever writes on that connection; it reads from the
connections the others dialed to it. A pair of servers therefore has exactly one
connection per direction, owned by the sender. ZooKeeper's QuorumCnxManager shares
one connection per pair and needs a tie-break ("the larger id keeps its dial") with
races when both dial at once; here there is nothing to break a tie over. The cost,
two sockets per pair, is nothing for 3 or 5 servers. Each connection is TCP, so a
link delivers in order while it is up.

*Frames.* A frame is a 4-byte big-endian length and that many bytes. The length is
checked against ``frame_bytes_max`` before anything of the body is buffered; an
oversized frame closes the connection with a logged reason.

*Handshake, both ways, identity fails closed* (:mod:`coord.peer_handshake`). The dialer
says who it is; the accepting side refuses (logs why, closes) anything but another
server of its own ensemble, else answers who it is; the dialer checks that the answer
names the server it meant to dial. Only then is the link up. Identity never comes from
the remote address. Connecting plus the handshake is bounded by ``HANDSHAKE_TIMEOUT_S``.

*Drop, never block.* :meth:`PeerTransport.send` is synchronous and never waits. The
ZAB core is driven by one task; if sending to a slow or stuck follower could block
it, one bad server would stall the whole ensemble (and an unbounded queue would
instead eat the leader's memory). Zab already copes with lost messages: timeouts,
re-election and re-sync. So a message for a link that is down is dropped, and a link
whose queue passes ``queue_frames_max`` (or ``queue_bytes_max``) is broken: closed,
its queue dropped. Dropping from the middle of a live link would leave a silent gap,
so we only ever drop by breaking the link; the receiver sees the connection close.
Delivery follows the same rule: when the ``received`` channel is full (or
``on_message`` raises :class:`trio.WouldBlock`), the connection that delivered is
closed rather than waited on.

*No reordering across a reconnect.* Messages queued on a link that broke are dropped
with it, and messages sent while it is down are dropped, so a new connection only
ever carries messages sent after it came up. On the receiving side, a new connection
from a server supersedes the older one at once: nothing more is delivered from the
old connection (it is closed), so its stale bytes cannot overtake newer ones. Across
a break a receiver can see a gap, never a reordering: exactly the "a link keeps its
order until it breaks" model that the simulator uses.

*Reconnects.* Each outgoing link has one task that dials, handshakes, writes and
redials, with jittered exponential backoff from ``BACKOFF_MIN_S`` to
``BACKOFF_MAX_S``; a link that stayed up for ``STABLE_LINK_S`` starts again from the
minimum. The dialer also reads its connection, to notice at once when the other end
closes it (and refuses any data sent its way).

*Writes coalesce.* ``send`` appends to the link's queue and wakes its writer, which
sends everything queued with one ``send_all``: under load many frames share one
system call.

*A gate, for fault hooks.* A :class:`LinkGate` given as ``gate`` may close: every link
closes at once and stays down, and everything sent or received is dropped, until it
opens again. The server gives none (links are always allowed); the test ensemble's
fault hooks give one to cut a server off from its peers (:mod:`coord.testing.faults`).

Ephemeral ports for tests: bind the listeners first (:mod:`coord.peer_listeners`).
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Callable, Mapping
from functools import partial
from typing import Final, Protocol

import trio

from coord.config import Address, EnsembleConfig
from coord.config import format_address as _name
from coord.config.security_table import read_peer_secret
from coord.peer_handshake import PEER_PROTOCOL_VERSION as PEER_PROTOCOL_VERSION
from coord.peer_handshake import HandshakeRefusedError, PeerAuth, accept_handshake, dial_handshake, read_hello
from coord.peer_listeners import bind_peer_listeners as bind_peer_listeners
from coord.peer_listeners import listener_address as listener_address
from coord.peer_tls import PeerTls
from coord.protocol import HEADER, FrameReader, ProtocolError

log = logging.getLogger(__name__)

MessageHandler = Callable[[int, bytes], None]

BACKOFF_MIN_S: Final = 0.02
BACKOFF_MAX_S: Final = 1.0
STABLE_LINK_S: Final = 1.0
"""A link that stayed up this long reconnects at the minimum backoff after it breaks."""
HANDSHAKE_TIMEOUT_S: Final = 5.0
"""Connecting plus the handshake, on either side."""
RECEIVE_BYTES: Final = 256 * 1024
FRAME_BYTES_MAX_DEFAULT: Final = 64 << 20
QUEUE_FRAMES_MAX_DEFAULT: Final = 10_000
QUEUE_BYTES_MAX_DEFAULT: Final = 256 << 20


class LinkGate(Protocol):
    """Whether a transport may have any peer links at all: a switch it obeys, set from outside.

    The server gives none; the test ensemble's fault hooks give an
    :class:`coord.testing.faults.IsolationGate`, so the transport has no hooks of its own.
    """

    @property
    def is_open(self) -> bool:
        """Whether links may be up now. While closed, every link stays down and
        everything sent or received is dropped."""

    async def wait_open(self) -> None:
        """Return once the gate is open (at once if it is)."""

    def on_close(self, callback: Callable[[], None]) -> None:
        """Have ``callback`` called, synchronously, every time the gate closes (the
        transport closes every link then)."""


class _LinkBrokenError(Exception):
    """The connection of an outgoing link is closed or unusable (the reason is logged)."""


class _OutLink:
    """This server's outgoing link to one other server: state shared by send and its task."""

    __slots__ = ("address", "bytes_queued", "frames_queued", "is_up", "queue", "scope", "target", "up_since", "wakeup")

    def __init__(self, target: int, address: Address) -> None:
        self.target = target
        self.address = address
        self.is_up = False
        self.up_since = 0.0
        self.queue: list[bytes] = []  # header, body, header, body, ...
        self.frames_queued = 0
        self.bytes_queued = 0
        self.wakeup = trio.Event()
        self.scope: trio.CancelScope | None = None  # the current connection; cancel to break the link

    def clear(self) -> int:
        """Empty the queue; returns the number of frames dropped."""
        dropped = self.frames_queued
        self.queue = []
        self.frames_queued = 0
        self.bytes_queued = 0
        return dropped


def peer_auth(ensemble: EnsembleConfig) -> PeerAuth:
    """The peer authentication an ensemble's configuration puts in force (the secret read now).

    Raises:
        ConfigError: the secret file cannot be read (any more) or is too short.
    """
    if ensemble.secret_file is None:
        return PeerAuth()
    return PeerAuth.with_secret(read_peer_secret(ensemble.secret_file))


class PeerTransport:
    """One server's links to the other servers of its ensemble.

    Args:
        server_id: this server's id; a key of ``peers``.
        peers: every server of the ensemble, this one included, -> its peer
            ``(host, port)``. This server listens on ``peers[server_id]`` (port 0 is
            allowed; see ``address``) and dials the others.
        ensemble_id: a digest of the membership
            (:attr:`coord.config.EnsembleConfig.ensemble_id`); peers must agree on it.
        on_message: called as ``on_message(source, data)`` for every frame received,
            synchronously from the connection's reader task, in arrival order per
            source. It must not block; it may call :meth:`send`. If it raises
            :class:`trio.WouldBlock` (its own bounded queue is full) that connection is
            closed; any other exception is a bug and crashes :meth:`serve`. When None,
            frames go to the ``received`` channel instead.
        frame_bytes_max: the largest frame sent or accepted.
        queue_frames_max: frames queued unsent on one link before the link is broken;
            also the capacity of the ``received`` channel.
        queue_bytes_max: bytes queued unsent on one link before the link is broken.
        rng: randomness for the backoff jitter (seed it for reproducible tests).
        auth: how peers prove they belong (:class:`coord.peer_handshake.PeerAuth`: a shared
            secret, or none); every server of the ensemble must use the same.
        tls: TLS on every link, both ways authenticated by certificate
            (:class:`coord.peer_tls.PeerTls`); None: plain TCP.
        gate: a :class:`LinkGate` that may close every link for a while (fault hooks);
            None (the default) for links that are always allowed.

    Attributes:
        received: ``(source id, data)`` pairs, when no ``on_message`` was given. It
            holds at most ``queue_frames_max``; when it is full, the connection that
            delivered is closed rather than waited on. It is never closed.
        address: the bound peer address once :meth:`serve` is listening (before
            that, ``peers[server_id]`` as given).
        frames_dropped: frames given to :meth:`send` or received that were dropped
            (link down, the gate closed, queue overflow). Diagnostics only.
    """

    def __init__(
        self,
        *,
        server_id: int,
        peers: Mapping[int, Address],
        ensemble_id: bytes,
        on_message: MessageHandler | None = None,
        on_link_down: Callable[[int], None] | None = None,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        queue_frames_max: int = QUEUE_FRAMES_MAX_DEFAULT,
        queue_bytes_max: int = QUEUE_BYTES_MAX_DEFAULT,
        rng: random.Random | None = None,
        gate: LinkGate | None = None,
        auth: PeerAuth | None = None,
        tls: PeerTls | None = None,
    ) -> None:
        if server_id not in peers:
            raise ValueError(f"server {server_id} is not in peers {sorted(peers)}")
        if not isinstance(ensemble_id, bytes):
            raise TypeError(f"ensemble_id must be bytes, got {type(ensemble_id).__name__}")
        if frame_bytes_max < 1 or queue_frames_max < 1 or queue_bytes_max < frame_bytes_max:
            raise ValueError("need frame_bytes_max > 0, queue_frames_max > 0, queue_bytes_max >= frame_bytes_max")
        self.server_id = server_id
        self.ensemble_id = ensemble_id
        self.address: Address = peers[server_id]
        self.frames_dropped = 0
        self._peers = dict(peers)
        self._frame_bytes_max = frame_bytes_max
        self._queue_frames_max = queue_frames_max
        self._queue_bytes_max = queue_bytes_max
        self._rng = rng if rng is not None else random.Random()
        self._auth = auth if auth is not None else PeerAuth()
        self.tls = tls
        self._links = {
            target: _OutLink(target, address) for target, address in sorted(peers.items()) if target != server_id
        }
        self._incoming: dict[int, trio.CancelScope] = {}  # source -> its current (newest) connection
        self._unidentified: set[trio.CancelScope] = set()  # accepted connections still in their handshake
        self._gate = gate
        if gate is not None:
            gate.on_close(self._close_all_links)
        self._is_serving = False
        self._received_in, self.received = trio.open_memory_channel[tuple[int, bytes]](queue_frames_max)
        self._deliver: MessageHandler = on_message if on_message is not None else self._deliver_to_channel
        # Called when the current link FROM a server closes (not when a newer one
        # replaces it): a hint that the server may be gone, faster than any timeout.
        self._on_link_down = on_link_down

    # --- the caller's side ---------------------------------------------------------------

    def send(self, target: int, data: bytes) -> None:
        """Queue ``data`` for ``target``; never blocks.

        Dropped (silently, counted in ``frames_dropped``) when the link is down or the
        gate is closed. If the link already has ``queue_frames_max`` frames (or
        ``queue_bytes_max`` bytes) waiting, the link is broken instead: closed, its
        queue dropped, and redialed; the messages after that go on the new connection.

        Raises:
            ValueError: ``target`` is not another server of the ensemble, or ``data``
                is longer than ``frame_bytes_max`` (the receiver would refuse it).
        """
        link = self._links.get(target)
        if link is None:
            raise ValueError(f"server {target} is not a peer of server {self.server_id}")
        if len(data) > self._frame_bytes_max:
            raise ValueError(f"a frame of {len(data)} bytes is over the limit of {self._frame_bytes_max}")
        if not link.is_up:
            self.frames_dropped += 1
            return
        if link.frames_queued >= self._queue_frames_max or link.bytes_queued + len(data) > self._queue_bytes_max:
            log.warning(
                "link to server %d: %d frames (%d bytes) waiting unsent; breaking it",
                target,
                link.frames_queued,
                link.bytes_queued,
            )
            self.frames_dropped += 1
            self._break(link)
            return
        link.queue.append(HEADER.pack(len(data)))
        link.queue.append(data)
        link.frames_queued += 1
        link.bytes_queued += len(data)
        link.wakeup.set()

    def links_up(self) -> set[int]:
        """The ids of the servers this one has an established outgoing link to."""
        return {target for target, link in self._links.items() if link.is_up}

    def links_in(self) -> set[int]:
        """The ids of the servers with an established link to this one (diagnostics)."""
        return set(self._incoming)

    def _close_all_links(self) -> None:
        """The gate closed: close every link now; they stay down until it opens."""
        for link in self._links.values():
            self._break(link)
        for scope in [*self._incoming.values(), *self._unidentified]:
            scope.cancel()
        self._incoming.clear()
        self._unidentified.clear()

    def disconnect(self, target: int, reason: str) -> None:
        """Drop both links with ``target`` now (it sent something malformed, or a message
        for it could not be sent); the outgoing one is redialed with backoff."""
        log.warning("dropping the links with server %d: %s", target, reason)
        link = self._links.get(target)
        if link is not None:
            self._break(link)
        scope = self._incoming.get(target)
        if scope is not None:
            scope.cancel()

    # --- serving ---------------------------------------------------------------------------

    async def serve(
        self,
        *,
        listener: trio.SocketListener | None = None,
        task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen, accept the other servers' links, and keep one link to each of them.

        Runs until cancelled, then closes every socket, the listener's too. It may be
        called again afterwards (a restart); not twice at once.

        Args:
            listener: an already bound listener to accept on (it becomes this
                transport's and is closed at the end), e.g. from
                :func:`bind_peer_listeners`; by default bind ``peers[server_id]``.
            task_status: ``started(address)`` once listening, with the bound address.

        Raises:
            OSError: the peer address cannot be bound.
        """
        if self._is_serving:
            raise RuntimeError(f"server {self.server_id}'s transport is already serving")
        self._is_serving = True
        try:
            if listener is not None:
                listeners = [listener]
            else:
                host, port = self._peers[self.server_id]
                listeners = await trio.open_tcp_listeners(port, host=host)
            try:
                self.address = listener_address(listeners[0])
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        partial(trio.serve_listeners, self._handle_incoming, listeners, handler_nursery=nursery)
                    )
                    for link in self._links.values():
                        nursery.start_soon(self._serve_link, link)
                    log.info("server %d: peer transport listening on %s", self.server_id, _name(self.address))
                    task_status.started(self.address)
            finally:
                for link in self._links.values():
                    self._break(link)
                self._incoming.clear()
                self._unidentified.clear()
                for each in listeners:
                    await trio.aclose_forcefully(each)
        finally:
            self._is_serving = False

    # --- outgoing links -----------------------------------------------------------------

    def _break(self, link: _OutLink) -> None:
        """Mark ``link`` down and drop its queue now; its task closes the socket and redials."""
        if link.is_up:
            log.info("link to server %d down", link.target)
        link.is_up = False
        self.frames_dropped += link.clear()
        if link.scope is not None:
            link.scope.cancel()

    async def _serve_link(self, link: _OutLink) -> None:
        """Dial ``link.target``, carry the link while it is up, redial with backoff; forever."""
        backoff = BACKOFF_MIN_S
        gate = self._gate
        while True:
            if gate is not None and not gate.is_open:
                await gate.wait_open()
                backoff = BACKOFF_MIN_S
                continue
            link.scope = trio.CancelScope()
            link.up_since = 0.0
            with link.scope:
                await self._run_link(link)
            link.scope = None
            self._break(link)
            if link.up_since and trio.current_time() - link.up_since >= STABLE_LINK_S:
                backoff = BACKOFF_MIN_S
            if gate is not None and not gate.is_open:
                continue
            await trio.sleep(backoff * self._rng.uniform(0.5, 1.0))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _run_link(self, link: _OutLink) -> None:
        """One connection of ``link``: dial, handshake, then write until it breaks."""
        target = link.target
        stream: trio.abc.Stream | None = None
        try:
            with trio.move_on_after(HANDSHAKE_TIMEOUT_S) as timeout:
                try:
                    stream = await trio.open_tcp_stream(*link.address)
                except OSError as error:
                    # the normal state of a link while the other server is down
                    log.debug("link to server %d: cannot connect to %s: %s", target, _name(link.address), error)
                    return
                if self.tls is not None:
                    # the certificate must name the host we dialed (and be of the ensemble's CA)
                    stream = trio.SSLStream(stream, self.tls.client_context, server_hostname=link.address[0])
                    await stream.do_handshake()
                leftover = await dial_handshake(
                    stream, self._auth, own_id=self.server_id, target=target, ensemble_id=self.ensemble_id
                )
            if timeout.cancelled_caught:
                log.warning("link to server %d: no handshake answer within %ss", target, HANDSHAKE_TIMEOUT_S)
                return
            assert stream is not None
            if leftover:
                raise _LinkBrokenError("data after the handshake on an outgoing link")
            link.clear()
            link.is_up = True
            link.up_since = trio.current_time()
            log.info("link to server %d up (%s)", target, _name(link.address))
            async with trio.open_nursery() as nursery:
                # the writer cancels the nursery (having logged why) if a send fails
                nursery.start_soon(self._write, link, stream, nursery.cancel_scope)
                problem, is_violation = await _wait_closed(stream)
                log.log(logging.WARNING if is_violation else logging.INFO, "link to server %d: %s", target, problem)
                nursery.cancel_scope.cancel()
        except (_LinkBrokenError, HandshakeRefusedError, ProtocolError) as error:
            log.warning("link to server %d (%s): %s; closing", target, _name(link.address), error)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            if isinstance(error.__cause__, ssl.SSLError):
                log.warning("link to server %d (%s): TLS refused: %s", target, _name(link.address), error.__cause__)
            else:
                log.info("link to server %d: connection lost (%s)", target, error.__cause__ or error)
        finally:
            if stream is not None:
                await trio.aclose_forcefully(stream)

    @staticmethod
    async def _write(link: _OutLink, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        """Flush the link's queue, everything queued in one ``send_all``, until it breaks."""
        try:
            while True:
                await link.wakeup.wait()
                link.wakeup = trio.Event()
                if not link.queue:
                    continue
                batch = link.queue
                link.queue = []
                link.frames_queued = 0
                link.bytes_queued = 0
                await stream.send_all(b"".join(batch))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            log.info("link to server %d: send failed (%s)", link.target, error.__cause__ or error)
            scope.cancel()

    # --- incoming links -----------------------------------------------------------------

    async def _handle_incoming(self, stream: trio.abc.Stream) -> None:
        """One accepted connection: the handshake, then deliver its frames until it closes."""
        name = _remote_name(stream)
        scope = trio.CancelScope()
        source: int | None = None
        gate = self._gate
        self._unidentified.add(scope)
        try:
            with scope:
                if gate is not None and not gate.is_open:
                    return
                identified: int | None = None
                with trio.move_on_after(HANDSHAKE_TIMEOUT_S) as timeout:
                    if self.tls is not None:
                        # the dialer must present a certificate of the ensemble's CA
                        stream = trio.SSLStream(stream, self.tls.server_context, server_side=True)
                        await stream.do_handshake()
                    hello, leftover = await read_hello(stream, receive_bytes=RECEIVE_BYTES)
                    if hello is None:
                        log.info("peer connection from %s: closed before its handshake", name)
                        return
                    identified, leftover = await accept_handshake(
                        stream, self._auth, hello, leftover, own_id=self.server_id, peers=self._peers,
                        ensemble_id=self.ensemble_id,
                    )  # fmt: skip
                if timeout.cancelled_caught or identified is None:
                    log.warning("peer connection from %s: no handshake within %ss; closing", name, HANDSHAKE_TIMEOUT_S)
                    return
                # Only now, its proof checked, may it replace a link: a stranger's hello cannot cut one.
                source = identified
                self._unidentified.discard(scope)
                previous = self._incoming.get(source)
                if previous is not None:
                    # the sender only dials again once it gave up on its old connection:
                    # nothing more may be delivered from that one
                    log.info("link from server %d: replaced by a new connection from %s", source, name)
                    previous.cancel()
                self._incoming[source] = scope
                log.info("link from server %d up (%s)", source, name)
                reader = FrameReader(self._frame_bytes_max)
                reader.feed(leftover)
                await self._read_frames(stream, reader, source, scope)
        except (_LinkBrokenError, HandshakeRefusedError, ProtocolError) as error:
            label = f"server {source}" if source is not None else "unidentified peer"
            log.warning("peer connection from %s (%s): %s; closing", name, label, error)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            if isinstance(error.__cause__, ssl.SSLError):
                log.warning("peer connection from %s: TLS refused: %s; closing", name, error.__cause__)
            else:
                log.info("peer connection from %s: lost (%s)", name, error.__cause__ or error)
        finally:
            self._unidentified.discard(scope)
            if source is not None and self._incoming.get(source) is scope:
                del self._incoming[source]
                log.info("link from server %d down", source)
                if self._on_link_down is not None and (gate is None or gate.is_open):
                    self._on_link_down(source)
            await trio.aclose_forcefully(stream)

    async def _read_frames(
        self, stream: trio.abc.Stream, reader: FrameReader, source: int, scope: trio.CancelScope
    ) -> None:
        deliver = self._deliver
        incoming = self._incoming
        while True:
            for body in reader:  # ProtocolError for an oversized frame
                if incoming.get(source) is not scope:
                    return  # superseded by a newer connection, or the gate closed
                try:
                    deliver(source, body)
                except trio.WouldBlock:
                    self.frames_dropped += 1
                    raise _LinkBrokenError("the receiver is not keeping up") from None
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                log.info("link from server %d: closed by the sender", source)
                return
            reader.feed(data)

    def _deliver_to_channel(self, source: int, data: bytes) -> None:
        self._received_in.send_nowait((source, data))


# --- helpers -------------------------------------------------------------------------------


async def _wait_closed(stream: trio.abc.Stream) -> tuple[str, bool]:
    """Wait until the other end closes our outgoing connection or misbehaves.

    Returns:
        what happened, and whether it broke the protocol.

    Nothing may flow towards the dialer on an outgoing link after the handshake, so
    any data is a reason to close it too. Never raises (it runs in a nursery's body,
    where an exception would come out wrapped in an ExceptionGroup).
    """
    try:
        data = await stream.receive_some(RECEIVE_BYTES)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
        return f"connection lost ({error.__cause__ or error})", False
    if data:
        return f"{len(data)} unexpected bytes from the receiving end; closing", True
    return "closed by the receiving end", False


def _remote_name(stream: trio.abc.Stream) -> str:
    if not isinstance(stream, trio.SocketStream):
        return "?"
    try:
        return _name(stream.socket.getpeername()[:2])
    except OSError:
        return "?"


__all__ = [
    "BACKOFF_MAX_S",
    "BACKOFF_MIN_S",
    "HANDSHAKE_TIMEOUT_S",
    "PEER_PROTOCOL_VERSION",
    "LinkGate",
    "MessageHandler",
    "PeerTransport",
    "bind_peer_listeners",
    "listener_address",
]
