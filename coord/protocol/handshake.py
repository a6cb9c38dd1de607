"""The handshake: the first frame each way, which opens (or resumes) a session.

Unlike requests, the handshake records travel as maps with text keys: they are
sent once per connection, so readability and room to grow matter more than size.
The client's first frame is a :class:`ConnectRequest` (or, for the admin status
command, a :class:`StatusRequest`); the server answers with a
:class:`ConnectResponse` or an error map (:func:`handshake_error`) and closes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from coord.protocol.shapes import ProtocolError, _bytes, _int, _str

PROTOCOL_VERSION: Final = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectRequest:
    last_zxid: int = 0
    session_id: int = 0
    password: bytes = b""
    timeout_ms: int = 10_000
    protocol: int = PROTOCOL_VERSION

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": "connect",
            "protocol": self.protocol,
            "last_zxid": self.last_zxid,
            "session_id": self.session_id,
            "password": self.password,
            "timeout_ms": self.timeout_ms,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusRequest:
    """Admin: ask the server about itself, without opening a session."""

    def to_wire(self) -> dict[str, Any]:
        return {"type": "status"}


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectResponse:
    session_id: int
    password: bytes
    timeout_ms: int
    zxid: int
    server_id: int = 1
    protocol: int = PROTOCOL_VERSION

    def to_wire(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "session_id": self.session_id,
            "password": self.password,
            "timeout_ms": self.timeout_ms,
            "zxid": self.zxid,
            "server_id": self.server_id,
        }


def _field(item: dict[str, Any], key: str) -> Any:
    if key not in item:
        raise ProtocolError(f"handshake is missing {key!r}")
    return item[key]


def decode_handshake(item: Any) -> ConnectRequest | StatusRequest:
    """Validate the first frame a client sends."""
    if type(item) is not dict or not all(type(key) is str for key in item):
        raise ProtocolError("the handshake must be a map with text keys")
    kind = item.get("type")
    if kind == "status":
        return StatusRequest()
    if kind != "connect":
        raise ProtocolError(f"unknown handshake type {kind!r:.40}")
    password = _bytes(_field(item, "password"), "password")
    if len(password) > 64:
        raise ProtocolError("password too long")
    return ConnectRequest(
        protocol=_int(_field(item, "protocol"), "protocol"),
        last_zxid=_int(_field(item, "last_zxid"), "last_zxid"),
        session_id=_int(_field(item, "session_id"), "session_id"),
        password=password,
        timeout_ms=_int(_field(item, "timeout_ms"), "timeout_ms"),
    )


def decode_handshake_reply(item: Any) -> ConnectResponse | tuple[int, str]:
    """The server's answer to a connect: the response, or ``(code, message)``."""
    if type(item) is not dict:
        raise ProtocolError("the handshake reply must be a map")
    if "error" in item:
        return _int(item["error"], "error"), _str(item.get("message", ""), "message")
    return ConnectResponse(
        protocol=_int(_field(item, "protocol"), "protocol"),
        session_id=_int(_field(item, "session_id"), "session_id"),
        password=_bytes(_field(item, "password"), "password"),
        timeout_ms=_int(_field(item, "timeout_ms"), "timeout_ms"),
        zxid=_int(_field(item, "zxid"), "zxid"),
        server_id=_int(_field(item, "server_id"), "server_id"),
    )


def handshake_error(code: int, message: str) -> dict[str, Any]:
    return {"error": code, "message": message}
