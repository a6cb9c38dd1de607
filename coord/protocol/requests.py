"""Requests: one frozen dataclass per op, and their wire arrays ``[xid, op, *fields]``.

Requests are the hot path, so they travel as arrays, not maps. Decoding checks the
shape only (field count and types, known op and enum numbers), not the paths:
path rules are the server's to apply, with typed errors. A request whose xid could
be read but whose fields are wrong raises :class:`~coord.protocol.shapes.ProtocolError`
with that ``xid`` set, so that the server can answer with an error instead of
closing the connection. Every op, field and result: docs/protocol.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from coord.errors import UnimplementedError
from coord.protocol.shapes import ProtocolError, _bool, _bytes, _enum, _int, _str, _strs
from coord.protocol.types import AddWatchMode, CreateMode, Op, WatcherType


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
