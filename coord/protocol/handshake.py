"""The handshake: the first frame each way, which opens (or resumes) a session.

Unlike requests, the handshake records travel as maps with text keys: they are
sent once per connection, so readability and room to grow matter more than size.
The client's first frame is a :class:`ConnectRequest` (or, for the admin status
command, a :class:`StatusRequest`); the server answers with a
:class:`ConnectResponse` or an error map (:func:`handshake_error`) and closes.

A :class:`BackupRequest` (``coord backup``) opens no session either: the server
answers with a :class:`BackupStart`, the tree's image as :class:`BackupPiece` frames
and a :class:`BackupEnd` (or an error map), then closes; :func:`decode_backup_frame`
reads them.
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
class BackupRequest:
    """Admin: stream a consistent image of the tree, without opening a session."""

    def to_wire(self) -> dict[str, Any]:
        return {"type": "backup"}


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupStart:
    """The first frame of a backup: the image is of the tree at ``zxid``, ``nodes`` znodes."""

    zxid: int
    nodes: int
    server_id: int

    def to_wire(self) -> dict[str, Any]:
        return {"backup": "start", "zxid": self.zxid, "nodes": self.nodes, "server_id": self.server_id}


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupPiece:
    """The next bytes of the image; ``nodes``: about how many znodes the bytes so far hold
    (for a progress bar only)."""

    data: bytes
    nodes: int

    def to_wire(self) -> dict[str, Any]:
        return {"backup": "piece", "data": self.data, "nodes": self.nodes}


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupEnd:
    """The last frame of a backup: the image was ``size`` bytes with this ``sha256``."""

    size: int
    sha256: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"backup": "end", "size": self.size, "sha256": self.sha256}


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


def decode_handshake(item: Any) -> ConnectRequest | StatusRequest | BackupRequest:
    """Validate the first frame a client sends."""
    if type(item) is not dict or not all(type(key) is str for key in item):
        raise ProtocolError("the handshake must be a map with text keys")
    kind = item.get("type")
    if kind == "status":
        return StatusRequest()
    if kind == "backup":
        return BackupRequest()
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


def decode_backup_frame(item: Any) -> BackupStart | BackupPiece | BackupEnd | tuple[int, str]:
    """A frame of the server's answer to a :class:`BackupRequest`, or ``(code, message)``."""
    if type(item) is not dict:
        raise ProtocolError("a backup frame must be a map")
    if "error" in item:
        return _int(item["error"], "error"), _str(item.get("message", ""), "message")
    kind = item.get("backup")
    if kind == "piece":
        return BackupPiece(data=_bytes(_field(item, "data"), "data"), nodes=_int(_field(item, "nodes"), "nodes"))
    if kind == "start":
        return BackupStart(
            zxid=_int(_field(item, "zxid"), "zxid"),
            nodes=_int(_field(item, "nodes"), "nodes"),
            server_id=_int(_field(item, "server_id"), "server_id"),
        )
    if kind == "end":
        sha256 = _bytes(_field(item, "sha256"), "sha256")
        if len(sha256) != 32:
            raise ProtocolError("sha256 must be 32 bytes")
        return BackupEnd(size=_int(_field(item, "size"), "size"), sha256=sha256)
    raise ProtocolError(f"unknown backup frame {kind!r:.40}")


def handshake_error(code: int, message: str) -> dict[str, Any]:
    return {"error": code, "message": message}
