"""The peer handshake: who is on the other end of a peer connection, and whether to link with it.

Kept apart from :mod:`coord.transport` because it is the one part of the peer protocol
with a frame of its own and rules of its own; the transport's link logic (dialing,
queues, reconnects) only needs to know that the handshake passed. The transport sends
:func:`encode_hello`, reads the other side's with :func:`read_hello` and checks it
with :func:`check_hello` (accepting) or :func:`check_answer` (dialing).

*Both ways, identity fails closed.* The dialer's first frame is a CBOR map
``{"coord_peer": 1, "server_id": N, "ensemble_id": DIGEST}``. The accepting side
refuses (logs why, closes) an id that is not in its ``peers``, its own id, another
ensemble's digest, a different protocol version, or any other shape; it never uses
the remote address for identity. Otherwise it answers with the same map for itself,
and the dialer checks that the answer names the server it meant to dial (a wrong
address in someone's configuration is refused, not silently used) and the same
ensemble. Only then is the link up. The handshake frame is limited to
``HANDSHAKE_BYTES_MAX`` and the transport's ``HANDSHAKE_TIMEOUT_S``, so a stranger
costs little. There is no shared secret (yet): the handshake catches
misconfiguration, not an attacker on the network.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final

import trio

from coord.protocol import HEADER, ProtocolError, decode_body, encode_frame

PEER_PROTOCOL_VERSION: Final = 2  # 2: SNAP streams in chunks (SnapChunk, SnapEnd, SnapAck)
HANDSHAKE_BYTES_MAX: Final = 1024

_HELLO_KEYS: Final = frozenset({"coord_peer", "server_id", "ensemble_id"})


class HandshakeRefusedError(Exception):
    """A well-formed handshake from a server this one may not link with (the message says why)."""


def encode_hello(server_id: int, ensemble_id: bytes) -> bytes:
    """The handshake frame of ``server_id``, a member of the ensemble ``ensemble_id``."""
    return encode_frame({"coord_peer": PEER_PROTOCOL_VERSION, "server_id": server_id, "ensemble_id": ensemble_id})


def check_hello(hello: Any, *, own_id: int, peers: Collection[int], ensemble_id: bytes) -> int:
    """The dialer's id, if it may link to us (fail closed: anything unexpected refuses).

    ``own_id`` is the accepting server, ``peers`` the ids of its ensemble and
    ``ensemble_id`` its digest.

    Raises:
        ProtocolError: not a handshake of this protocol version.
        HandshakeRefusedError: a handshake, but not from another server of this ensemble.
    """
    server_id, their_ensemble_id = parse_hello(hello)
    if server_id == own_id:
        raise HandshakeRefusedError(f"refused: claims to be server {server_id}, which is this server")
    if server_id not in peers:
        known = ", ".join(str(known_id) for known_id in sorted(peers))
        raise HandshakeRefusedError(f"refused: server {server_id} is not in this ensemble ({known})")
    if their_ensemble_id != ensemble_id:
        raise HandshakeRefusedError(
            f"refused: server {server_id} has another ensemble configuration "
            f"({_short(their_ensemble_id)}, ours {_short(ensemble_id)})"
        )
    return server_id


def check_answer(reply: Any, *, target: int, ensemble_id: bytes) -> None:
    """Check the accepting server's handshake answer: the server we dialed, our ensemble.

    ``reply`` is what :func:`read_hello` returned (None: the connection closed first).

    Raises:
        ProtocolError: not a handshake of this protocol version.
        HandshakeRefusedError: no answer, or from another server or ensemble.
    """
    if reply is None:
        raise HandshakeRefusedError("refused (closed during the handshake; its log says why)")
    server_id, their_ensemble_id = parse_hello(reply)
    if server_id != target:
        raise HandshakeRefusedError(f"the server at this address is server {server_id}, not {target}")
    if their_ensemble_id != ensemble_id:
        raise HandshakeRefusedError(f"server {target} belongs to another ensemble ({_short(their_ensemble_id)})")


def parse_hello(item: Any) -> tuple[int, bytes]:
    """``(server_id, ensemble_id)`` from a handshake map, checked strictly."""
    if not isinstance(item, dict) or set(item) != _HELLO_KEYS:
        raise ProtocolError("not a peer handshake")
    version = item["coord_peer"]
    if type(version) is not int or version != PEER_PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported peer protocol version {version!r}")
    server_id = item["server_id"]
    if type(server_id) is not int:
        raise ProtocolError(f"server_id must be an integer, got {type(server_id).__name__}")
    ensemble_id = item["ensemble_id"]
    if type(ensemble_id) is not bytes:
        raise ProtocolError(f"ensemble_id must be bytes, got {type(ensemble_id).__name__}")
    return server_id, ensemble_id


async def read_hello(stream: trio.SocketStream, *, receive_bytes: int) -> tuple[Any, bytes]:
    """The handshake item (None at end of stream) and any bytes that came after it.

    Read with its own small limit, so a stranger cannot make us buffer a large frame.
    ``receive_bytes`` is the most taken from the socket at once; what came after the
    handshake is returned for the caller's frame reader.

    Raises:
        ProtocolError: the frame is over ``HANDSHAKE_BYTES_MAX`` or not one CBOR item.
    """
    buffer = bytearray()
    while True:
        if len(buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer)
            if length > HANDSHAKE_BYTES_MAX:
                raise ProtocolError(f"handshake frame of {length} bytes is over the limit of {HANDSHAKE_BYTES_MAX}")
            end = HEADER.size + length
            if len(buffer) >= end:
                return decode_body(bytes(buffer[HEADER.size : end])), bytes(buffer[end:])
        data = await stream.receive_some(receive_bytes)
        if not data:
            return None, b""
        buffer += data


def _short(ensemble_id: bytes) -> str:
    return ensemble_id[:6].hex() or "empty"


__all__ = [
    "HANDSHAKE_BYTES_MAX",
    "PEER_PROTOCOL_VERSION",
    "HandshakeRefusedError",
    "check_answer",
    "check_hello",
    "encode_hello",
    "parse_hello",
    "read_hello",
]
