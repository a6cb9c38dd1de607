"""The peer handshake: who is on the other end of a peer connection, and whether to link with it.

Kept apart from :mod:`coord.transport` because it is the one part of the peer protocol
with frames of its own and rules of its own; the transport's link logic (dialing,
queues, reconnects) only needs to know that the handshake passed.

*Both ways, identity fails closed.* The dialer's first frame is a CBOR map
``{"coord_peer": 3, "server_id": N, "ensemble_id": DIGEST, "auth": MODE, "nonce": 16 BYTES}``.
The accepting side refuses (logs why, closes) an id that is not in its ``peers``, its
own id, another ensemble's digest, another protocol version, another peer
authentication mode, or any other shape; it never uses the remote address for
identity. Otherwise it answers with the same map for itself, and the dialer checks
that the answer names the server it meant to dial (a wrong address in someone's
configuration is refused, not silently used), the same ensemble and the same mode.
The handshake frames are limited to ``HANDSHAKE_BYTES_MAX`` and the transport's
``HANDSHAKE_TIMEOUT_S``, so a stranger costs little.

*Peer authentication by a shared secret* (``[ensemble] secret_file``, mode
``"secret"``): a challenge-response over nonces from both sides, so nothing that
crosses the wire can be replayed. The acceptor's answer carries
``proof = HMAC-SHA256(secret, "coord-peer-accept" | ensemble | dialer | acceptor |
dialer's nonce | acceptor's nonce)``; the dialer checks it (it is talking to a holder
of the secret, not to an impostor it would send the ensemble's traffic to), then
sends ``{"coord_peer_proof": HMAC(secret, "coord-peer-dial" | ...)}``, which the
acceptor checks before a single message of the link is delivered. The two labels
differ, so an acceptor's proof is never a dialer's: a stranger who dials in learns an
answer it cannot use, and a fresh acceptor nonce makes every old proof worthless.
Each proof binds both ids, so a proof between servers 1 and 2 says nothing about 3.
Without TLS the link is then plain TCP: the secret keeps strangers from *joining*,
while an attacker on the path between two servers could still read or alter their
traffic (``[tls] peers = true`` is for networks with such attackers). Mode
``"none"`` (no secret) catches misconfiguration only; ``coord serve`` warns loudly.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final

import trio

from coord.protocol import HEADER, ProtocolError, decode_body, encode_frame

PEER_PROTOCOL_VERSION: Final = 3  # 2: SNAP streams in chunks; 3: peer authentication (auth, nonce, proofs)
HANDSHAKE_BYTES_MAX: Final = 1024
NONCE_BYTES: Final = 16
AUTH_NONE: Final = "none"
AUTH_SECRET: Final = "secret"
_AUTH_MODES: Final = frozenset({AUTH_NONE, AUTH_SECRET})

_HELLO_KEYS: Final = frozenset({"coord_peer", "server_id", "ensemble_id", "auth", "nonce"})
_PROOF_KEY: Final = "coord_peer_proof"
_RECEIVE_BYTES: Final = 4096  # a handshake frame is small: read it in small pieces


class HandshakeRefusedError(Exception):
    """A well-formed handshake from a server this one may not link with (the message says why)."""


@dataclass(frozen=True, slots=True)
class PeerAuth:
    """How this server authenticates its peers: ``mode`` (``"none"`` or ``"secret"``) and the secret."""

    mode: str = AUTH_NONE
    secret: bytes | None = None

    @classmethod
    def with_secret(cls, secret: bytes | None) -> PeerAuth:
        return cls(AUTH_SECRET, secret) if secret else cls()


@dataclass(frozen=True, slots=True)
class Hello:
    """A parsed handshake map: the sender's id, ensemble, mode, nonce, and (in an answer) its proof."""

    server_id: int
    ensemble_id: bytes
    auth: str
    nonce: bytes
    proof: bytes | None = None


def new_nonce() -> bytes:
    """A fresh random challenge for one handshake."""
    return os.urandom(NONCE_BYTES)


def encode_hello(server_id: int, ensemble_id: bytes, *, auth: str, nonce: bytes, proof: bytes | None = None) -> bytes:
    """The handshake frame of ``server_id``, a member of the ensemble ``ensemble_id``."""
    item: dict[str, object] = {
        "coord_peer": PEER_PROTOCOL_VERSION,
        "server_id": server_id,
        "ensemble_id": ensemble_id,
        "auth": auth,
        "nonce": nonce,
    }
    if proof is not None:
        item["proof"] = proof
    return encode_frame(item)


def proof_of_secret(
    secret: bytes,
    role: str,
    *,
    ensemble_id: bytes,
    dialer: int,
    acceptor: int,
    dialer_nonce: bytes,
    acceptor_nonce: bytes,
) -> bytes:
    """HMAC-SHA256 of one side's view of the handshake (``role``: ``"accept"`` or ``"dial"``)."""
    message = b"|".join(
        [
            f"coord-peer-{role}".encode(),
            ensemble_id,
            str(dialer).encode(),
            str(acceptor).encode(),
            dialer_nonce,
            acceptor_nonce,
        ]
    )
    return hmac.new(secret, message, "sha256").digest()


def encode_proof(proof: bytes) -> bytes:
    """The dialer's last handshake frame: its proof of the secret."""
    return encode_frame({_PROOF_KEY: proof})


def check_proof(item: Any, expected: bytes, *, source: int) -> None:
    """Check the dialer's proof frame (``item``, None if the connection closed first).

    Raises:
        ProtocolError: not a proof frame.
        HandshakeRefusedError: no proof, or the wrong one.
    """
    if item is None:
        raise HandshakeRefusedError(f"server {source} closed before proving it holds the ensemble's secret")
    if not isinstance(item, dict) or set(item) != {_PROOF_KEY} or type(item[_PROOF_KEY]) is not bytes:
        raise ProtocolError("not a peer proof")
    if not hmac.compare_digest(item[_PROOF_KEY], expected):
        raise HandshakeRefusedError(
            f"refused: the connection claiming to be server {source} does not hold the ensemble's secret "
            "(a different secret_file, or not a server of this ensemble)"
        )


def check_hello(hello: Any, *, own_id: int, peers: Collection[int], ensemble_id: bytes, auth: PeerAuth) -> Hello:
    """The dialer's handshake, if it may link to us (fail closed: anything unexpected refuses).

    ``own_id`` is the accepting server, ``peers`` the ids of its ensemble and
    ``ensemble_id`` its digest. The dialer's proof of the secret comes later (:func:`check_proof`).

    Raises:
        ProtocolError: not a handshake of this protocol version.
        HandshakeRefusedError: a handshake, but not from another server of this ensemble.
    """
    parsed = parse_hello(hello)
    server_id = parsed.server_id
    if parsed.proof is not None:
        raise ProtocolError("a dialer's handshake carries no proof")
    if server_id == own_id:
        raise HandshakeRefusedError(f"refused: claims to be server {server_id}, which is this server")
    if server_id not in peers:
        known = ", ".join(str(known_id) for known_id in sorted(peers))
        raise HandshakeRefusedError(f"refused: server {server_id} is not in this ensemble ({known})")
    if parsed.ensemble_id != ensemble_id:
        raise HandshakeRefusedError(
            f"refused: server {server_id} has another ensemble configuration "
            f"({_short(parsed.ensemble_id)}, ours {_short(ensemble_id)})"
        )
    _check_mode(parsed, auth)
    return parsed


def check_answer(reply: Any, *, target: int, own_id: int, ensemble_id: bytes, auth: PeerAuth, nonce: bytes) -> Hello:
    """Check the accepting server's handshake answer: the server we dialed, our ensemble,
    our mode, and (with a secret) its proof over our ``nonce`` and its own.

    ``reply`` is what :func:`read_hello` returned (None: the connection closed first).

    Raises:
        ProtocolError: not a handshake of this protocol version.
        HandshakeRefusedError: no answer, or from another server, ensemble or mode, or
            a proof that does not show the ensemble's secret.
    """
    if reply is None:
        raise HandshakeRefusedError("refused (closed during the handshake; its log says why)")
    parsed = parse_hello(reply)
    if parsed.server_id != target:
        raise HandshakeRefusedError(f"the server at this address is server {parsed.server_id}, not {target}")
    if parsed.ensemble_id != ensemble_id:
        raise HandshakeRefusedError(f"server {target} belongs to another ensemble ({_short(parsed.ensemble_id)})")
    _check_mode(parsed, auth)
    if auth.secret is not None:
        expected = proof_of_secret(
            auth.secret,
            "accept",
            ensemble_id=ensemble_id,
            dialer=own_id,
            acceptor=target,
            dialer_nonce=nonce,
            acceptor_nonce=parsed.nonce,
        )
        if parsed.proof is None or not hmac.compare_digest(parsed.proof, expected):
            raise HandshakeRefusedError(
                f"the server at this address does not hold the ensemble's secret "
                f"(claims to be server {target}; a different secret_file?)"
            )
    elif parsed.proof is not None:
        raise ProtocolError("an answer without a secret carries no proof")
    return parsed


def _check_mode(hello: Hello, auth: PeerAuth) -> None:
    if hello.auth != auth.mode:
        raise HandshakeRefusedError(
            f"refused: server {hello.server_id} authenticates peers by {hello.auth!r}, this server by {auth.mode!r} "
            "(give every server the same [ensemble] secret_file)"
        )


def parse_hello(item: Any) -> Hello:
    """A handshake map, checked strictly."""
    if not isinstance(item, dict) or not (set(item) == _HELLO_KEYS or set(item) == _HELLO_KEYS | {"proof"}):
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
    auth = item["auth"]
    if auth not in _AUTH_MODES:
        raise ProtocolError(f"unknown peer authentication {auth!r:.20}")
    nonce = item["nonce"]
    if type(nonce) is not bytes or len(nonce) != NONCE_BYTES:
        raise ProtocolError(f"the nonce must be {NONCE_BYTES} bytes")
    proof = item.get("proof")
    if proof is not None and type(proof) is not bytes:
        raise ProtocolError("the proof must be bytes")
    return Hello(server_id, ensemble_id, auth, nonce, proof)


async def read_hello(stream: trio.abc.ReceiveStream, *, receive_bytes: int, buffered: bytes = b"") -> tuple[Any, bytes]:
    """One handshake frame's item (None at end of stream) and any bytes that came after it.

    Read with its own small limit, so a stranger cannot make us buffer a large frame.
    ``receive_bytes`` is the most taken from the socket at once; ``buffered`` is what
    an earlier read already took beyond its frame; what comes after this frame is
    returned for the next read or the caller's frame reader.

    Raises:
        ProtocolError: the frame is over ``HANDSHAKE_BYTES_MAX`` or not one CBOR item.
    """
    buffer = bytearray(buffered)
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


async def dial_handshake(
    stream: trio.abc.Stream, auth: PeerAuth, *, own_id: int, target: int, ensemble_id: bytes
) -> bytes:
    """The dialer's side: our hello, the acceptor's answer (checked, its proof too), then
    our proof; returns what came after the answer (nothing may).

    Raises:
        ProtocolError, HandshakeRefusedError: as :func:`check_answer`.
    """
    nonce = new_nonce()
    await stream.send_all(encode_hello(own_id, ensemble_id, auth=auth.mode, nonce=nonce))
    reply, leftover = await read_hello(stream, receive_bytes=_RECEIVE_BYTES)
    answer = check_answer(reply, target=target, own_id=own_id, ensemble_id=ensemble_id, auth=auth, nonce=nonce)
    if auth.secret is not None:
        proof = proof_of_secret(
            auth.secret,
            "dial",
            ensemble_id=ensemble_id,
            dialer=own_id,
            acceptor=target,
            dialer_nonce=nonce,
            acceptor_nonce=answer.nonce,
        )
        await stream.send_all(encode_proof(proof))
    return leftover


async def accept_handshake(
    stream: trio.abc.Stream,
    auth: PeerAuth,
    hello: object,
    leftover: bytes,
    *,
    own_id: int,
    peers: Collection[int],
    ensemble_id: bytes,
) -> tuple[int, bytes]:
    """The acceptor's side, given the dialer's ``hello`` (and the bytes read after it):
    check it, answer, check the dialer's proof; returns its id and what came after.

    Raises:
        ProtocolError, HandshakeRefusedError: as :func:`check_hello` and :func:`check_proof`.
    """
    dialer = check_hello(hello, own_id=own_id, peers=peers, ensemble_id=ensemble_id, auth=auth)
    nonce = new_nonce()
    proofs: dict[str, bytes] = {}
    if auth.secret is not None:
        for role in ("accept", "dial"):
            proofs[role] = proof_of_secret(
                auth.secret,
                role,
                ensemble_id=ensemble_id,
                dialer=dialer.server_id,
                acceptor=own_id,
                dialer_nonce=dialer.nonce,
                acceptor_nonce=nonce,
            )
    await stream.send_all(encode_hello(own_id, ensemble_id, auth=auth.mode, nonce=nonce, proof=proofs.get("accept")))
    if auth.mode == AUTH_SECRET:
        item, leftover = await read_hello(stream, receive_bytes=_RECEIVE_BYTES, buffered=leftover)
        check_proof(item, proofs["dial"], source=dialer.server_id)
    return dialer.server_id, leftover


def _short(ensemble_id: bytes) -> str:
    return ensemble_id[:6].hex() or "empty"


__all__ = [
    "AUTH_NONE",
    "AUTH_SECRET",
    "HANDSHAKE_BYTES_MAX",
    "NONCE_BYTES",
    "PEER_PROTOCOL_VERSION",
    "HandshakeRefusedError",
    "Hello",
    "PeerAuth",
    "accept_handshake",
    "check_answer",
    "check_hello",
    "check_proof",
    "dial_handshake",
    "encode_hello",
    "encode_proof",
    "new_nonce",
    "parse_hello",
    "proof_of_secret",
    "read_hello",
]
