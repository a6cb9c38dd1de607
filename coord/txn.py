"""Transactions: the deterministic state changes that the log stores and replicates.

A client's write request is *prepared* once, by the server that orders writes,
into a :class:`Txn`. Everything that could differ between servers is decided
then and travels in the txn: the zxid, the time, the session, the sequential
name, the parents a ``makepath`` create adds, and whether version checks passed.
A request that fails its checks is still ordered, as an :class:`ErrorTxn`
carrying its code, so that its answer is linearized at a zxid like any other.

Applying a txn (see :mod:`coord.tree`) is then a pure function of the tree and
the txn, so every server that applies the same txns holds the same tree.

On disk and on the wire a txn is one CBOR array
``[zxid, time_ms, session_id, xid, kind, *fields]``; :func:`encode_txn` is
deterministic (the same txn always gives the same bytes).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import cbor2

from coord.protocol import CreateMode
from coord.zxid import counter_of as counter_of  # re-exported: zxid arithmetic lives in coord.zxid
from coord.zxid import epoch_of as epoch_of
from coord.zxid import make_zxid as make_zxid


class TxnKind(enum.IntEnum):
    """Txn type codes (ZooKeeper's op numbers where it has them)."""

    ERROR = -1
    CREATE_SESSION = -10
    CLOSE_SESSION = -11
    CREATE = 1
    DELETE = 2
    SET_DATA = 5
    CHECK = 13
    MULTI = 14


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateSessionTxn:
    """Open a session. Its id is the zxid of this txn (unique, and all servers agree)."""

    timeout_ms: int
    password: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseSessionTxn:
    """Close (or expire) ``session_id``; applying it deletes the session's ephemerals.

    ``session_id`` is explicit because the txn's own ``session_id`` is the one that
    asked (0 when the server expired it).
    """

    session_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateTxn:
    """Create ``path`` (sequential suffix already resolved).

    ``parents`` are created first, in order, as empty persistent nodes (``makepath``);
    each was checked absent when the txn was prepared.
    """

    path: str
    data: bytes
    mode: CreateMode
    ephemeral_owner: int = 0
    ttl_ms: int = 0
    parents: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteTxn:
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SetDataTxn:
    """Replace the data of ``path``; applying it bumps the version by one."""

    path: str
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckTxn:
    """A version check inside a multi that passed; applying it changes nothing."""

    path: str


MultiTxnOp = CreateTxn | DeleteTxn | SetDataTxn | CheckTxn


@dataclass(frozen=True, slots=True, kw_only=True)
class MultiTxn:
    """All of ``ops``, applied in order, atomically (every check already passed)."""

    ops: tuple[MultiTxnOp, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorTxn:
    """A request that failed when prepared. Applying it changes nothing.

    ``code`` is the error to answer with. For a failed multi, ``multi_codes`` holds
    one code per op as ZooKeeper reports them: 0 (rolled back) for the ops before
    the failing one, its error for the failing one, -2 (runtime inconsistency) after.
    """

    code: int
    multi_codes: tuple[int, ...] = ()
    message: str = ""
    """Why, for the requester's reply (encoded only when not empty, so older txns decode)."""


TxnBody = CreateSessionTxn | CloseSessionTxn | CreateTxn | DeleteTxn | SetDataTxn | CheckTxn | MultiTxn | ErrorTxn


@dataclass(frozen=True, slots=True, kw_only=True)
class Txn:
    """One ordered state change.

    Attributes:
        zxid: its position in the total order: ``(epoch << 32) | counter``.
        time_ms: wall-clock milliseconds chosen by the server that ordered it.
        session_id: the session whose request this is (0: the server's own).
        xid: that request's xid, so the server holding the connection can answer.
        body: what changes.
    """

    zxid: int
    time_ms: int
    session_id: int
    xid: int
    body: TxnBody


def _encode_body(body: TxnBody) -> list[Any]:
    match body:
        case CreateSessionTxn():
            return [TxnKind.CREATE_SESSION, body.timeout_ms, body.password]
        case CloseSessionTxn():
            return [TxnKind.CLOSE_SESSION, body.session_id]
        case CreateTxn():
            return [
                TxnKind.CREATE,
                body.path,
                body.data,
                int(body.mode),
                body.ephemeral_owner,
                body.ttl_ms,
                list(body.parents),
            ]
        case DeleteTxn():
            return [TxnKind.DELETE, body.path]
        case SetDataTxn():
            return [TxnKind.SET_DATA, body.path, body.data]
        case CheckTxn():
            return [TxnKind.CHECK, body.path]
        case MultiTxn():
            return [TxnKind.MULTI, [_encode_body(op) for op in body.ops]]
        case ErrorTxn():
            if body.message:
                return [TxnKind.ERROR, body.code, list(body.multi_codes), body.message]
            return [TxnKind.ERROR, body.code, list(body.multi_codes)]
    raise TypeError(f"not a txn body: {body!r}")


def _decode_body(item: list[Any]) -> TxnBody:
    kind = _KINDS[item[0]]  # a dict, not TxnKind(...): an enum call costs more than the rest of a create
    match kind:
        case TxnKind.CREATE_SESSION:
            return CreateSessionTxn(timeout_ms=item[1], password=item[2])
        case TxnKind.CLOSE_SESSION:
            return CloseSessionTxn(session_id=item[1])
        case TxnKind.CREATE:
            return CreateTxn(
                path=item[1],
                data=item[2],
                mode=_MODES[item[3]],
                ephemeral_owner=item[4],
                ttl_ms=item[5],
                parents=tuple(item[6]),
            )
        case TxnKind.DELETE:
            return DeleteTxn(path=item[1])
        case TxnKind.SET_DATA:
            return SetDataTxn(path=item[1], data=item[2])
        case TxnKind.CHECK:
            return CheckTxn(path=item[1])
        case TxnKind.MULTI:
            ops: list[MultiTxnOp] = []
            for op in item[1]:
                body = _decode_body(op)
                if type(body) not in _MULTI_OPS:
                    raise TypeError(f"a multi holds a {type(body).__name__}")
                ops.append(body)  # type: ignore[arg-type]  # checked just above
            return MultiTxn(ops=tuple(ops))
        case TxnKind.ERROR:
            message = item[3] if len(item) > 3 else ""
            if type(message) is not str:
                raise TypeError("an error txn's message must be a string")
            return ErrorTxn(code=item[1], multi_codes=tuple(item[2]), message=message)
    raise ValueError(f"unknown txn kind {kind}")  # pragma: no cover


_KINDS: dict[int, TxnKind] = {int(kind): kind for kind in TxnKind}
_MODES: dict[int, CreateMode] = {int(mode): mode for mode in CreateMode}
_MULTI_OPS: frozenset[type] = frozenset({CreateTxn, DeleteTxn, SetDataTxn, CheckTxn})


def encode_txn(txn: Txn) -> bytes:
    """The txn's canonical bytes (what the log stores and peers receive)."""
    return cbor2.dumps([txn.zxid, txn.time_ms, txn.session_id, txn.xid, *_encode_body(txn.body)])


def decode_txn(data: bytes) -> Txn:
    """Inverse of :func:`encode_txn`. Txns come only from our own log and peers, so a
    malformed one is corruption: it raises ValueError rather than being tolerated."""
    try:
        item = cbor2.loads(data)
        return Txn(zxid=item[0], time_ms=item[1], session_id=item[2], xid=item[3], body=_decode_body(item[4:]))
    except (IndexError, TypeError, KeyError, cbor2.CBORDecodeError) as error:
        raise ValueError(f"malformed txn: {error}") from error
