"""Replies and watch events: what the server sends back after the handshake.

A reply is ``[xid, zxid, err, result]``; a watch event is pushed in the same shape
with the reserved xid :data:`WATCH_XID`, so that a client reads one kind of frame
and tells the two apart by the xid alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from coord.protocol.shapes import ProtocolError, _enum, _int, _str
from coord.protocol.types import EventType

WATCH_XID: Final = -1
"""The xid of a pushed watch event frame."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchEvent:
    """A change a watch fired for: ``type`` happened to ``path`` at ``zxid``."""

    type: EventType
    path: str
    zxid: int = 0


def encode_reply(xid: int, zxid: int, err: int, result: Any) -> list[Any]:
    return [xid, zxid, err, result]


def encode_event(event: WatchEvent) -> list[Any]:
    return [WATCH_XID, event.zxid, 0, [int(event.type), event.path]]


def decode_reply(item: Any) -> tuple[int, int, int, Any]:
    """Validate a reply (or event) frame's outer shape: ``(xid, zxid, err, result)``."""
    if type(item) is not list or len(item) != 4:
        raise ProtocolError("a reply must be an array [xid, zxid, err, result]")
    xid, zxid, err, result = item
    _int(xid, "xid")
    _int(zxid, "zxid")
    _int(err, "err")
    return xid, zxid, err, result


def decode_event(zxid: int, result: Any) -> WatchEvent:
    if type(result) is not list or len(result) != 2:
        raise ProtocolError("a watch event must be [type, path]")
    return WatchEvent(type=_enum(EventType, result[0], "event type"), path=_str(result[1], "path"), zxid=zxid)
