"""The codec's one error, and the strict checks every decoded value goes through.

A frame's CBOR item is untrusted until its shape is checked (docs/correctness.md,
"Hostile input"). Every decoder of the codec (requests, replies, events, the
handshake, :class:`~coord.protocol.types.Stat`) checks each value with these same
helpers, so that "a 64-bit integer" or "a text string" means the same thing
everywhere, and every violation is the same :class:`ProtocolError`.
"""

from __future__ import annotations

import enum
from typing import Any

from coord.errors import BadArgumentsError


class ProtocolError(Exception):
    """A frame that is malformed, oversized or of the wrong shape.

    ``xid`` is set when the frame was a well-formed request array whose xid could be
    read, so the server can answer with a typed error (``code``) instead of closing.
    """

    def __init__(self, message: str, *, xid: int | None = None, code: int = BadArgumentsError.code) -> None:
        super().__init__(message)
        self.xid = xid
        self.code = code


def _int(value: Any, what: str) -> int:
    if type(value) is not int or not -(1 << 63) <= value < (1 << 63):
        raise ProtocolError(f"{what} must be a 64-bit integer")
    return value


def _bool(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise ProtocolError(f"{what} must be a boolean")
    return value


def _bytes(value: Any, what: str) -> bytes:
    if type(value) is not bytes:
        raise ProtocolError(f"{what} must be a byte string")
    return value


def _str(value: Any, what: str) -> str:
    if type(value) is not str:
        raise ProtocolError(f"{what} must be a text string")
    return value


def _strs(value: Any, what: str) -> tuple[str, ...]:
    if type(value) is not list:
        raise ProtocolError(f"{what} must be an array of strings")
    return tuple(_str(item, what) for item in value)


def _enum(kind: type[enum.IntEnum], value: Any, what: str) -> Any:
    try:
        return kind(_int(value, what))
    except ValueError:
        raise ProtocolError(f"unknown {what} {value}") from None
