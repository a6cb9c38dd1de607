"""Application messages between the leader and a follower, carried inside ZAB's
``AppToLeader`` / ``AppToFollower`` messages.

One CBOR array each, tagged by its first element:

- ``["w", session, xid, request]``: a follower forwards a write (``request`` as
  :func:`coord.protocol.encode_request` gives it);
- ``["s", password, timeout_ms]``: a follower asks for a new session;
- ``["t", [session, ...]]``: a follower reports the sessions active since its last report;
- ``["y", session, xid]``: a sync, forwarded to the leader, or its answer to the follower.

Each kind is a frozen dataclass here (:class:`ForwardedWrite`, :class:`NewSession`,
:class:`ActiveSessions`, :class:`SyncRequest`), encoded by :func:`encode_app` and
decoded by :func:`decode_app`: one schema, one encoder, one decoder.
:func:`decode_app` is strict (the strict CBOR decoder of :mod:`coord.protocol`, exact
shapes, bounded integers): whatever a peer sends, it returns a well-typed message or
raises :class:`~coord.protocol.ProtocolError`, and the caller drops that peer's link.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, assert_never

import cbor2

from coord import protocol
from coord.protocol import (
    CloseSessionRequest,
    CreateRequest,
    DeleteRequest,
    MultiRequest,
    Request,
    SetDataRequest,
)

_FORWARDED_WRITES = frozenset({CreateRequest, DeleteRequest, SetDataRequest, MultiRequest, CloseSessionRequest})


@dataclass(frozen=True, slots=True)
class ForwardedWrite:
    """Follower -> leader: a client's write, to be prepared and proposed."""

    session_id: int
    xid: int
    request: Request


@dataclass(frozen=True, slots=True)
class NewSession:
    """Follower -> leader: a client asks for a session; ``password`` matches the answer."""

    password: bytes
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class ActiveSessions:
    """Follower -> leader: the sessions active since the last report (they do not expire)."""

    session_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SyncBarrier:
    """A client's sync: forwarded to the leader, and its answer back to the follower."""

    session_id: int
    xid: int


AppMessage = ForwardedWrite | NewSession | ActiveSessions | SyncBarrier


def encode_app(message: AppMessage) -> bytes:
    """The message's bytes (a CBOR array tagged by its kind)."""
    match message:
        case ForwardedWrite(session_id=session_id, xid=xid, request=request):
            item: list[Any] = ["w", session_id, xid, protocol.encode_request(xid, request)]
        case NewSession(password=password, timeout_ms=timeout_ms):
            item = ["s", password, timeout_ms]
        case ActiveSessions(session_ids=session_ids):
            item = ["t", list(session_ids)]
        case SyncBarrier(session_id=session_id, xid=xid):
            item = ["y", session_id, xid]
        case _:
            assert_never(message)
    return cbor2.dumps(item)


_U64 = 1 << 64
_I32 = 1 << 31


def _uint(value: Any, what: str, bound: int = _U64) -> int:
    if type(value) is not int or not 0 <= value < bound:
        raise protocol.ProtocolError(f"{what} must be an integer in 0..{bound - 1}")
    return value


def _xid(value: Any) -> int:
    if type(value) is not int or not -_I32 <= value < _I32:
        raise protocol.ProtocolError("xid must be a 32-bit integer")
    return value


_FIELDS = {"w": 3, "s": 2, "t": 1, "y": 2}


def decode_app(payload: bytes) -> AppMessage:
    """Decode and check one leader/follower message (strict CBOR, exact shapes).

    Raises:
        ProtocolError: anything that is not exactly one well-formed message.
    """
    item = protocol.decode_body(payload)
    if type(item) is not list or not item or type(item[0]) is not str:
        raise protocol.ProtocolError("an application message is an array starting with its kind")
    kind, fields = item[0], item[1:]
    shape = _FIELDS.get(kind)
    if shape is None:
        raise protocol.ProtocolError(f"unknown message kind {kind!r:.20}")
    if len(fields) != shape:
        raise protocol.ProtocolError(f"message {kind!r} has {len(fields)} fields, not {shape}")
    if kind == "w":
        _xid_in_request, request = protocol.decode_request(fields[2])
        if type(request) not in _FORWARDED_WRITES:
            raise protocol.ProtocolError(f"{type(request).__name__} is not a forwarded write")
        return ForwardedWrite(_uint(fields[0], "session id"), _xid(fields[1]), request)
    if kind == "s":
        password = fields[0]
        if type(password) is not bytes or len(password) > 64:
            raise protocol.ProtocolError("a session password is at most 64 bytes")
        return NewSession(password, _uint(fields[1], "timeout_ms", _I32))
    if kind == "t":
        touched = fields[0]
        if type(touched) is not list:
            raise protocol.ProtocolError("session report must be an array")
        return ActiveSessions(tuple(_uint(session_id, "session id") for session_id in touched))
    return SyncBarrier(_uint(fields[0], "session id"), _xid(fields[1]))


__all__ = [
    "ActiveSessions",
    "AppMessage",
    "ForwardedWrite",
    "NewSession",
    "SyncBarrier",
    "decode_app",
    "encode_app",
]
