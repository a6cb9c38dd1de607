"""Application messages between the leader and a follower, carried inside ZAB's
``AppToLeader`` / ``AppToFollower`` messages.

One CBOR array each, tagged by its first element:

- ``["w", session, xid, request]``: a follower forwards a write (``request`` as
  :func:`coord.protocol.encode_request` gives it);
- ``["s", password, timeout_ms]``: a follower asks for a new session;
- ``["t", [session, ...]]``: a follower reports the sessions active since its last report;
- ``["y", session, xid]``: a sync, forwarded to the leader, or its answer to the follower.

:func:`decode_app` is strict (the strict CBOR decoder of :mod:`coord.protocol`, exact
shapes, bounded integers): whatever a peer sends, it returns a well-typed message or
raises :class:`~coord.protocol.ProtocolError`, and the caller drops that peer's link.
"""

from __future__ import annotations

from typing import Any

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


def encode_app(item: list[Any]) -> bytes:
    """An application message between the leader and a follower (CBOR array)."""
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


AppMessage = (
    tuple[str, int, int, Request]  # "w": session, xid, forwarded write
    | tuple[str, bytes, int]  # "s": new session's password, requested timeout
    | tuple[str, list[int]]  # "t": sessions active since the last report
    | tuple[str, int, int]  # "y": a sync (to the leader) or its answer (to the follower): session, xid
)


def decode_app(payload: bytes) -> AppMessage:
    """Decode and check one leader/follower message (strict CBOR, exact shapes).

    Raises:
        ProtocolError: anything that is not exactly one well-formed message.
    """
    item = protocol.decode_body(payload)
    if type(item) is not list or not item or type(item[0]) is not str:
        raise protocol.ProtocolError("an application message is an array starting with its kind")
    kind, fields = item[0], item[1:]
    shape = {"w": 3, "s": 2, "t": 1, "y": 2}.get(kind)
    if shape is None:
        raise protocol.ProtocolError(f"unknown message kind {kind!r:.20}")
    if len(fields) != shape:
        raise protocol.ProtocolError(f"message {kind!r} has {len(fields)} fields, not {shape}")
    match kind:
        case "w":
            _xid_in_request, request = protocol.decode_request(fields[2])
            if type(request) not in _FORWARDED_WRITES:
                raise protocol.ProtocolError(f"{type(request).__name__} is not a forwarded write")
            return ("w", _uint(fields[0], "session id"), _xid(fields[1]), request)
        case "s":
            password = fields[0]
            if type(password) is not bytes or len(password) > 64:
                raise protocol.ProtocolError("a session password is at most 64 bytes")
            return ("s", password, _uint(fields[1], "timeout_ms", _I32))
        case "t":
            touched = fields[0]
            if type(touched) is not list:
                raise protocol.ProtocolError("session report must be an array")
            return ("t", [_uint(session_id, "session id") for session_id in touched])
        case _:
            return ("y", _uint(fields[0], "session id"), _xid(fields[1]))


__all__ = ["AppMessage", "decode_app", "encode_app"]
