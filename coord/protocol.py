"""The wire protocol: frames, handshake, requests, replies and watch events.

This module is the service's contract with its clients. It is pure (no I/O) and
imports nothing of the server except :mod:`coord.errors`; the client imports it.

Framing
    Every frame is a 4-byte big-endian length followed by exactly one CBOR item.
    The length is checked against the limit *before* the body is read
    (:class:`FrameReader`), each frame is decoded on its own, CBOR tags are refused
    (no datetimes, bignums or anything else a hostile peer could smuggle in),
    trailing bytes after the item are refused, and the item's shape is then
    validated strictly. Any violation raises :class:`ProtocolError`.

Handshake (maps, because they are rare and must be readable)
    client -> ``{"type": "connect", "protocol": 1, "last_zxid": Z, "session_id": S,
    "password": b"..", "timeout_ms": T}`` (session_id 0 and an empty password ask
    for a new session), or ``{"type": "status"}`` for the admin status command.
    server -> ``{"protocol": 1, "session_id": S, "password": b"..", "timeout_ms": T,
    "zxid": Z, "server_id": N}`` or ``{"error": code, "message": ".."}`` and close.

Requests and replies (arrays, because they are the hot path)
    request: ``[xid, op, *fields]`` with fields per :class:`Op` (see ``_decode_op``;
    every op, field and result: docs/protocol.md).
    reply:   ``[xid, zxid, err, result]`` where ``zxid`` is the server's last applied
    zxid after the op, ``err`` is 0 or an error code of :mod:`coord.errors` and
    ``result`` is the op's result (or a message string when ``err`` is not 0).
    event:   ``[WATCH_XID, zxid, 0, [event_type, path]]``, pushed by the server.

Why not ZooKeeper's jute encoding: CBOR is self-describing, has a fast C codec in
cbor2, and lets us validate shapes strictly; the op and error numbers are
ZooKeeper's so that its documentation still applies.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import cbor2

from coord.cbor import StrictCBORError, decode_strict
from coord.errors import BadArgumentsError, UnimplementedError

PROTOCOL_VERSION: Final = 1
WATCH_XID: Final = -1
"""The xid of a pushed watch event frame."""

DATA_BYTES_MAX_DEFAULT: Final = 1 << 20
"""Largest znode value accepted by default (1 MiB, as ZooKeeper's jute.maxbuffer)."""

FRAME_OVERHEAD_BYTES: Final = 64 * 1024
"""Room in a frame beyond the data limit for paths, names and fields."""

HEADER = struct.Struct(">I")


def frame_bytes_max(data_bytes_max: int = DATA_BYTES_MAX_DEFAULT) -> int:
    """The largest frame body accepted when values may be ``data_bytes_max`` long."""
    return data_bytes_max + FRAME_OVERHEAD_BYTES


class ProtocolError(Exception):
    """A frame that is malformed, oversized or of the wrong shape.

    ``xid`` is set when the frame was a well-formed request array whose xid could be
    read, so the server can answer with a typed error (``code``) instead of closing.
    """

    def __init__(self, message: str, *, xid: int | None = None, code: int = BadArgumentsError.code) -> None:
        super().__init__(message)
        self.xid = xid
        self.code = code


# --- enums -----------------------------------------------------------------------


class Op(enum.IntEnum):
    """Request op codes (ZooKeeper's numbers where ZooKeeper has the op)."""

    CREATE = 1
    DELETE = 2
    EXISTS = 3
    GET_DATA = 4
    SET_DATA = 5
    GET_CHILDREN = 8
    SYNC = 9
    PING = 11
    CHECK = 13
    MULTI = 14
    REMOVE_WATCHES = 18
    SET_WATCHES = 101
    ADD_WATCH = 106
    CLOSE_SESSION = -11


class CreateMode(enum.IntEnum):
    """Kinds of znode, with ZooKeeper's numbers."""

    PERSISTENT = 0
    EPHEMERAL = 1
    PERSISTENT_SEQUENTIAL = 2
    EPHEMERAL_SEQUENTIAL = 3
    CONTAINER = 4
    PERSISTENT_WITH_TTL = 5
    PERSISTENT_SEQUENTIAL_WITH_TTL = 6

    @property
    def is_ephemeral(self) -> bool:
        return self in (CreateMode.EPHEMERAL, CreateMode.EPHEMERAL_SEQUENTIAL)

    @property
    def is_sequential(self) -> bool:
        return self in (
            CreateMode.PERSISTENT_SEQUENTIAL,
            CreateMode.EPHEMERAL_SEQUENTIAL,
            CreateMode.PERSISTENT_SEQUENTIAL_WITH_TTL,
        )

    @property
    def is_ttl(self) -> bool:
        return self in (CreateMode.PERSISTENT_WITH_TTL, CreateMode.PERSISTENT_SEQUENTIAL_WITH_TTL)

    @property
    def is_container(self) -> bool:
        return self is CreateMode.CONTAINER


class EventType(enum.IntEnum):
    """Watch event types (ZooKeeper's numbers)."""

    NODE_CREATED = 1
    NODE_DELETED = 2
    NODE_DATA_CHANGED = 3
    NODE_CHILDREN_CHANGED = 4
    DATA_WATCH_REMOVED = 5
    CHILD_WATCH_REMOVED = 6
    PERSISTENT_WATCH_REMOVED = 7


class WatcherType(enum.IntEnum):
    """Which watches ``remove_watches`` removes (ZooKeeper's numbers)."""

    CHILDREN = 1
    DATA = 2
    ANY = 3
    PERSISTENT = 4
    PERSISTENT_RECURSIVE = 5


class AddWatchMode(enum.IntEnum):
    """Modes of ``add_watch`` (ZooKeeper 3.6's numbers)."""

    PERSISTENT = 0
    PERSISTENT_RECURSIVE = 1


# --- stat ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stat:
    """A znode's metadata, field for field ZooKeeper's ``Stat`` (in its order).

    On the wire it is an array of these 11 integers. Times are milliseconds since
    the epoch, as decided by the server that ordered the write.
    """

    czxid: int
    mzxid: int
    ctime: int
    mtime: int
    version: int
    cversion: int
    aversion: int
    ephemeral_owner: int
    data_length: int
    num_children: int
    pzxid: int

    def to_wire(self) -> list[int]:
        return [
            self.czxid,
            self.mzxid,
            self.ctime,
            self.mtime,
            self.version,
            self.cversion,
            self.aversion,
            self.ephemeral_owner,
            self.data_length,
            self.num_children,
            self.pzxid,
        ]

    @classmethod
    def from_wire(cls, value: Any) -> Stat:
        if not isinstance(value, list) or len(value) != 11 or not all(type(v) is int for v in value):
            raise ProtocolError(f"bad stat: {value!r:.80}")
        return cls(*value)

    # kazoo's friendly names, so kazoo users feel at home
    @property
    def created(self) -> float:
        """Creation time in seconds since the epoch."""
        return self.ctime / 1000.0

    @property
    def last_modified(self) -> float:
        """Last modification time in seconds since the epoch."""
        return self.mtime / 1000.0

    @property
    def owner_session_id(self) -> int | None:
        """The session owning this ephemeral node, or None for a persistent one."""
        return self.ephemeral_owner or None

    @property
    def children_count(self) -> int:
        return self.num_children

    @property
    def children_version(self) -> int:
        return self.cversion

    @property
    def acl_version(self) -> int:
        return self.aversion

    @property
    def creation_transaction_id(self) -> int:
        return self.czxid

    @property
    def last_modified_transaction_id(self) -> int:
        return self.mzxid


# --- paths -----------------------------------------------------------------------

RESERVED_PATH: Final = "/coord"
"""The subtree the service keeps for its own metadata; clients may read, not write."""


def _bad_char(ch: str) -> bool:
    code = ord(ch)
    return (
        code == 0
        or 0x01 <= code <= 0x1F
        or 0x7F <= code <= 0x9F
        or 0xD800 <= code <= 0xF8FF
        or 0xFFF0 <= code <= 0xFFFF
    )


def validate_path(path: object, *, sequential: bool = False) -> str:
    """Check a znode path by ZooKeeper's rules and return it.

    Absolute, no trailing slash (except ``/``), no empty, ``.`` or ``..`` component,
    no control or non-character code points. A sequential create may end in ``/``
    (the server appends the counter), as in ZooKeeper.

    Raises:
        BadArgumentsError: with a message naming what is wrong.
    """
    if not isinstance(path, str):
        raise BadArgumentsError(f"path must be a string, not {type(path).__name__}")
    check = path + "1" if sequential else path
    if not check:
        raise BadArgumentsError("path must not be empty")
    if check[0] != "/":
        raise BadArgumentsError(f"path must start with '/': {path!r}")
    if len(check) == 1:
        return path
    if check[-1] == "/":
        raise BadArgumentsError(f"path must not end with '/': {path!r}")
    for component in check[1:].split("/"):
        if component == "":
            raise BadArgumentsError(f"empty component in path {path!r}")
        if component in (".", ".."):
            raise BadArgumentsError(f"relative component {component!r} in path {path!r}")
    for ch in check:
        if _bad_char(ch):
            raise BadArgumentsError(f"invalid character {ch!r} in path {path!r}")
    return path


def parent_of(path: str) -> str:
    """The parent path (``/`` for a top-level node). ``path`` must be valid, not ``/``."""
    index = path.rfind("/")
    return path[:index] if index > 0 else "/"


def basename(path: str) -> str:
    return path[path.rfind("/") + 1 :]


def join(parent: str, child: str) -> str:
    return parent + child if parent == "/" else parent + "/" + child


def is_reserved(path: str) -> bool:
    """Whether ``path`` is in the service's reserved subtree."""
    return path == RESERVED_PATH or path.startswith(RESERVED_PATH + "/")


# --- requests ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateRequest:
    path: str
    data: bytes = b""
    mode: CreateMode = CreateMode.PERSISTENT
    ttl_ms: int = 0
    makepath: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteRequest:
    path: str
    version: int = -1


@dataclass(frozen=True, slots=True, kw_only=True)
class ExistsRequest:
    path: str
    watch: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class GetDataRequest:
    path: str
    watch: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SetDataRequest:
    path: str
    data: bytes
    version: int = -1


@dataclass(frozen=True, slots=True, kw_only=True)
class GetChildrenRequest:
    path: str
    watch: bool = False
    include_stat: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncRequest:
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PingRequest:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckRequest:
    path: str
    version: int


MultiOp = CreateRequest | DeleteRequest | SetDataRequest | CheckRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class MultiRequest:
    ops: tuple[MultiOp, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AddWatchRequest:
    path: str
    mode: AddWatchMode


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveWatchesRequest:
    path: str
    watcher_type: WatcherType


@dataclass(frozen=True, slots=True, kw_only=True)
class SetWatchesRequest:
    """Re-register watches after a reconnect; the server fires what changed after
    ``relative_zxid`` at once (as ZooKeeper's setWatches2)."""

    relative_zxid: int
    data: tuple[str, ...] = ()
    exist: tuple[str, ...] = ()
    child: tuple[str, ...] = ()
    persistent: tuple[str, ...] = ()
    persistent_recursive: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseSessionRequest:
    pass


Request = (
    CreateRequest
    | DeleteRequest
    | ExistsRequest
    | GetDataRequest
    | SetDataRequest
    | GetChildrenRequest
    | SyncRequest
    | PingRequest
    | CheckRequest
    | MultiRequest
    | AddWatchRequest
    | RemoveWatchesRequest
    | SetWatchesRequest
    | CloseSessionRequest
)

WRITE_OPS: Final = frozenset({Op.CREATE, Op.DELETE, Op.SET_DATA, Op.MULTI, Op.CLOSE_SESSION})
"""Ops that become transactions (everything else is served locally)."""


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


def _expect(fields: list[Any], count: int, op: str) -> None:
    if len(fields) != count:
        raise ProtocolError(f"{op} takes {count} fields, got {len(fields)}")


def _decode_op(op: Op, fields: list[Any]) -> Request:
    """Turn the fields of one op into its request object (shape only, not paths)."""
    match op:
        case Op.CREATE:
            _expect(fields, 5, "create")
            return CreateRequest(
                path=_str(fields[0], "path"),
                data=_bytes(fields[1], "data"),
                mode=_enum(CreateMode, fields[2], "create mode"),
                ttl_ms=_int(fields[3], "ttl"),
                makepath=_bool(fields[4], "makepath"),
            )
        case Op.DELETE:
            _expect(fields, 2, "delete")
            return DeleteRequest(path=_str(fields[0], "path"), version=_int(fields[1], "version"))
        case Op.EXISTS:
            _expect(fields, 2, "exists")
            return ExistsRequest(path=_str(fields[0], "path"), watch=_bool(fields[1], "watch"))
        case Op.GET_DATA:
            _expect(fields, 2, "get")
            return GetDataRequest(path=_str(fields[0], "path"), watch=_bool(fields[1], "watch"))
        case Op.SET_DATA:
            _expect(fields, 3, "set")
            return SetDataRequest(
                path=_str(fields[0], "path"),
                data=_bytes(fields[1], "data"),
                version=_int(fields[2], "version"),
            )
        case Op.GET_CHILDREN:
            _expect(fields, 3, "get_children")
            return GetChildrenRequest(
                path=_str(fields[0], "path"),
                watch=_bool(fields[1], "watch"),
                include_stat=_bool(fields[2], "include_stat"),
            )
        case Op.SYNC:
            _expect(fields, 1, "sync")
            return SyncRequest(path=_str(fields[0], "path"))
        case Op.PING:
            _expect(fields, 0, "ping")
            return PingRequest()
        case Op.CHECK:
            _expect(fields, 2, "check")
            return CheckRequest(path=_str(fields[0], "path"), version=_int(fields[1], "version"))
        case Op.MULTI:
            _expect(fields, 1, "multi")
            if type(fields[0]) is not list:
                raise ProtocolError("multi takes an array of ops")
            ops: list[MultiOp] = []
            for item in fields[0]:
                if type(item) is not list or not item:
                    raise ProtocolError("each multi op must be a non-empty array")
                sub_op = _enum(Op, item[0], "op")
                if sub_op not in (Op.CREATE, Op.DELETE, Op.SET_DATA, Op.CHECK):
                    raise ProtocolError(f"op {sub_op.name} is not allowed in a multi")
                sub = _decode_op(sub_op, item[1:])
                assert isinstance(sub, CreateRequest | DeleteRequest | SetDataRequest | CheckRequest)
                ops.append(sub)
            return MultiRequest(ops=tuple(ops))
        case Op.ADD_WATCH:
            _expect(fields, 2, "add_watch")
            return AddWatchRequest(path=_str(fields[0], "path"), mode=_enum(AddWatchMode, fields[1], "watch mode"))
        case Op.REMOVE_WATCHES:
            _expect(fields, 2, "remove_watches")
            return RemoveWatchesRequest(
                path=_str(fields[0], "path"), watcher_type=_enum(WatcherType, fields[1], "watcher type")
            )
        case Op.SET_WATCHES:
            _expect(fields, 6, "set_watches")
            return SetWatchesRequest(
                relative_zxid=_int(fields[0], "zxid"),
                data=_strs(fields[1], "data watches"),
                exist=_strs(fields[2], "exist watches"),
                child=_strs(fields[3], "child watches"),
                persistent=_strs(fields[4], "persistent watches"),
                persistent_recursive=_strs(fields[5], "persistent recursive watches"),
            )
        case Op.CLOSE_SESSION:
            _expect(fields, 0, "close_session")
            return CloseSessionRequest()
    raise ProtocolError(f"unknown op {op!r}")  # pragma: no cover - all ops matched


def _encode_op(request: Request) -> list[Any]:
    """The wire array of one op, without the xid."""
    match request:
        case CreateRequest():
            return [Op.CREATE, request.path, request.data, int(request.mode), request.ttl_ms, request.makepath]
        case DeleteRequest():
            return [Op.DELETE, request.path, request.version]
        case ExistsRequest():
            return [Op.EXISTS, request.path, request.watch]
        case GetDataRequest():
            return [Op.GET_DATA, request.path, request.watch]
        case SetDataRequest():
            return [Op.SET_DATA, request.path, request.data, request.version]
        case GetChildrenRequest():
            return [Op.GET_CHILDREN, request.path, request.watch, request.include_stat]
        case SyncRequest():
            return [Op.SYNC, request.path]
        case PingRequest():
            return [Op.PING]
        case CheckRequest():
            return [Op.CHECK, request.path, request.version]
        case MultiRequest():
            return [Op.MULTI, [_encode_op(op) for op in request.ops]]
        case AddWatchRequest():
            return [Op.ADD_WATCH, request.path, int(request.mode)]
        case RemoveWatchesRequest():
            return [Op.REMOVE_WATCHES, request.path, int(request.watcher_type)]
        case SetWatchesRequest():
            return [
                Op.SET_WATCHES,
                request.relative_zxid,
                list(request.data),
                list(request.exist),
                list(request.child),
                list(request.persistent),
                list(request.persistent_recursive),
            ]
        case CloseSessionRequest():
            return [Op.CLOSE_SESSION]
    raise TypeError(f"not a request: {request!r}")


def op_of(request: Request) -> Op:
    """The op code of a request object."""
    return Op(_encode_op(request)[0]) if not isinstance(request, MultiRequest) else Op.MULTI


def encode_request(xid: int, request: Request) -> list[Any]:
    """The wire item of a request: ``[xid, op, *fields]``."""
    item = _encode_op(request)
    item.insert(0, xid)
    return item


def decode_request(item: Any) -> tuple[int, Request]:
    """Validate a decoded request item's shape and build the request.

    Raises:
        ProtocolError: with ``xid`` set when the xid was readable (answer with an
            error), unset when even that was not (close the connection).
    """
    if type(item) is not list or len(item) < 2:
        raise ProtocolError("a request must be an array [xid, op, ...]")
    xid = item[0]
    if type(xid) is not int or not -(1 << 31) <= xid < (1 << 31):
        raise ProtocolError("xid must be a 32-bit integer")
    try:
        try:
            op = _enum(Op, item[1], "op")
        except ProtocolError as error:
            error.code = UnimplementedError.code
            raise
        if op is Op.CHECK:
            raise ProtocolError("check is allowed only inside a multi")
        return xid, _decode_op(op, item[2:])
    except ProtocolError as error:
        error.xid = xid
        raise


# --- replies and events ----------------------------------------------------------


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


# --- handshake ---------------------------------------------------------------------


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


# --- frames ------------------------------------------------------------------------


def encode_frame(item: Any) -> bytes:
    """One frame: length prefix and CBOR body."""
    body = cbor2.dumps(item)
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Any:
    """Decode one frame body: exactly one CBOR item, no tags, bounded depth.

    Raises:
        ProtocolError: the body is not exactly one acceptable CBOR item.
    """
    try:
        item = decode_strict(body, max_depth=8)
    except StrictCBORError as error:
        raise ProtocolError(str(error)) from None
    if type(item) is float:
        raise ProtocolError("floats are not allowed")
    return item


class FrameReader:
    """Sans-IO splitter of a byte stream into frame bodies.

    Feed it what the socket gave; iterate it for the complete frames so far. The
    length prefix is checked against ``frame_bytes_max`` as soon as its 4 bytes are
    in, before any of the body is buffered beyond what already arrived.
    """

    __slots__ = ("_buffer", "_frame_bytes_max")

    def __init__(self, frame_bytes_max: int) -> None:
        self._buffer = bytearray()
        self._frame_bytes_max = frame_bytes_max

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def needed(self) -> int:
        """Bytes still needed before the next frame is complete (0 if it is)."""
        if len(self._buffer) < 4:
            return 4 - len(self._buffer)
        (length,) = HEADER.unpack_from(self._buffer)
        return max(0, 4 + int(length) - len(self._buffer))

    def ready(self) -> bool:
        """Whether a complete frame is buffered.

        Raises:
            ProtocolError: the next frame's length prefix is over the limit.
        """
        buffer = self._buffer
        if len(buffer) < 4:
            return False
        length: int = HEADER.unpack_from(buffer)[0]
        if length > self._frame_bytes_max:
            raise ProtocolError(f"frame of {length} bytes is over the limit of {self._frame_bytes_max}")
        return len(buffer) >= 4 + length

    def __iter__(self) -> Iterator[bytes]:
        buffer = self._buffer
        offset = 0
        try:
            while len(buffer) - offset >= 4:
                (length,) = HEADER.unpack_from(buffer, offset)
                if length > self._frame_bytes_max:
                    raise ProtocolError(f"frame of {length} bytes is over the limit of {self._frame_bytes_max}")
                end = offset + 4 + length
                if len(buffer) < end:
                    break
                body = bytes(buffer[offset + 4 : end])
                # Consume before yielding: a consumer that stops early (returns from
                # its loop) must not see this frame again.
                offset = end
                yield body
        finally:
            del buffer[:offset]


__all__ = [
    "DATA_BYTES_MAX_DEFAULT",
    "PROTOCOL_VERSION",
    "RESERVED_PATH",
    "WATCH_XID",
    "WRITE_OPS",
    "AddWatchMode",
    "AddWatchRequest",
    "CheckRequest",
    "CloseSessionRequest",
    "ConnectRequest",
    "ConnectResponse",
    "CreateMode",
    "CreateRequest",
    "DeleteRequest",
    "EventType",
    "ExistsRequest",
    "FrameReader",
    "GetChildrenRequest",
    "GetDataRequest",
    "MultiOp",
    "MultiRequest",
    "Op",
    "PingRequest",
    "ProtocolError",
    "RemoveWatchesRequest",
    "Request",
    "SetDataRequest",
    "SetWatchesRequest",
    "Stat",
    "StatusRequest",
    "SyncRequest",
    "WatchEvent",
    "WatcherType",
    "decode_body",
    "decode_event",
    "decode_handshake",
    "decode_handshake_reply",
    "decode_reply",
    "decode_request",
    "encode_event",
    "encode_frame",
    "encode_reply",
    "encode_request",
    "frame_bytes_max",
    "handshake_error",
    "basename",
    "is_reserved",
    "join",
    "parent_of",
    "validate_path",
]
