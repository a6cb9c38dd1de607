"""Peer-to-peer message codec: one CBOR array per message, validated strictly.

Shape: ``[type, field1, field2, ...]`` with ``type`` a small integer (stable,
listed in ``_TAGS``) and the fields in the dataclass's declaration order. Arrays,
not maps, because proposals and acks are the hot path; the schema lives here.

Decoding is strict, because a peer link is an input like any other
(docs/correctness.md, "Hostile input"): exactly one CBOR item and no trailing bytes, no
CBOR tags at all (cbor2 would otherwise build datetimes, bignums, sets ...), a
bounded nesting depth, and then every field's type and range is checked: integers
are real ints (not bools or floats) within their bounds, flags are real booleans, byte strings are bytes, a
batch of txns is non-empty and its zxids stay inside one epoch. Anything else
raises :class:`ValueError`; the transport closes that link and logs why.

Framing (the length prefix and its limit) is the transport's job, not this one's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any, Final, NoReturn

import cbor2

from coord.cbor import StrictCBORError, decode_strict
from coord.zab.messages import (
    Ack,
    AckEpoch,
    AckNewLeader,
    AppToFollower,
    AppToLeader,
    Commit,
    Diff,
    FollowerInfo,
    Message,
    NewEpoch,
    NewLeader,
    Notification,
    Ping,
    PingAck,
    Proposal,
    Snap,
    SnapAck,
    SnapChunk,
    SnapEnd,
    SyncEntries,
    Trunc,
    UpToDate,
)
from coord.zab.types import Role
from coord.zxid import COUNTER_MAX, EPOCH_MAX, ZXID_MAX, counter_of

_TAGS: Final[dict[type[Message], int]] = {
    Notification: 1,
    FollowerInfo: 2,
    NewEpoch: 3,
    AckEpoch: 4,
    Diff: 5,
    Trunc: 6,
    Snap: 7,
    SyncEntries: 8,
    NewLeader: 9,
    AckNewLeader: 10,
    UpToDate: 11,
    Proposal: 12,
    Ack: 13,
    Commit: 14,
    Ping: 15,
    PingAck: 16,
    AppToFollower: 17,
    AppToLeader: 18,
    SnapChunk: 19,
    SnapEnd: 20,
    SnapAck: 21,
}
_BY_TAG: Final = {tag: cls for cls, tag in _TAGS.items()}
_FIELDS: Final = {cls: tuple(field.name for field in fields(cls)) for cls in _TAGS}

_ROLE_CODES: Final = {Role.LOOKING: 0, Role.FOLLOWING: 1, Role.LEADING: 2}
_ROLES_BY_CODE: Final = {code: role for role, code in _ROLE_CODES.items()}

_COUNT_MAX: Final = (1 << 63) - 1  # rounds, sequence numbers, handshakes, server ids


def _fail(message: str) -> NoReturn:
    raise ValueError(message)


def _int(value: Any, name: str, maximum: int) -> int:
    if type(value) is not int or not 0 <= value <= maximum:
        _fail(f"{name}: expected an integer in [0, {maximum}], got {value!r:.40}")
    return value


def _bytes(value: Any, name: str) -> bytes:
    if type(value) is not bytes:
        _fail(f"{name}: expected a byte string, got {type(value).__name__}")
    return value


def _digest(value: Any, name: str) -> bytes:
    if type(value) is not bytes or len(value) != 32:
        _fail(f"{name}: expected a sha256 digest (32 bytes)")
    return value


def _txns(value: Any, name: str) -> tuple[bytes, ...]:
    if type(value) is not list or not value:
        _fail(f"{name}: expected a non-empty array of byte strings")
    return tuple(_bytes(txn, name) for txn in value)


def _bool(value: Any, name: str) -> bool:
    if type(value) is not bool:
        _fail(f"{name}: expected a boolean, got {value!r:.40}")
    return value


def _role(value: Any, name: str) -> Role:
    if type(value) is not int or value not in _ROLES_BY_CODE:
        _fail(f"{name}: not a peer state: {value!r:.40}")
    return _ROLES_BY_CODE[value]


# How each field is checked on decode, by name (the names mean the same everywhere).
_CHECKS: Final[dict[str, Callable[[Any, str], Any]]] = {
    "leader": lambda value, name: _int(value, name, _COUNT_MAX),
    "zxid": lambda value, name: _int(value, name, ZXID_MAX),
    "last_zxid": lambda value, name: _int(value, name, ZXID_MAX),
    "previous_zxid": lambda value, name: _int(value, name, ZXID_MAX),
    "delivered_zxid": lambda value, name: _int(value, name, ZXID_MAX),
    "commit_zxid": lambda value, name: _int(value, name, ZXID_MAX),
    "epoch": lambda value, name: _int(value, name, EPOCH_MAX),
    "accepted_epoch": lambda value, name: _int(value, name, EPOCH_MAX),
    "current_epoch": lambda value, name: _int(value, name, EPOCH_MAX),
    "election_round": lambda value, name: _int(value, name, _COUNT_MAX),
    "handshake": lambda value, name: _int(value, name, _COUNT_MAX),
    "seq": lambda value, name: _int(value, name, _COUNT_MAX),
    "offset": lambda value, name: _int(value, name, _COUNT_MAX),
    "size": lambda value, name: _int(value, name, _COUNT_MAX),
    "digest": _digest,
    "is_first_ack": _bool,
    "state": _role,
    "data": _bytes,
    "payload": _bytes,
    "txns": _txns,
}
assert all(name in _CHECKS for names in _FIELDS.values() for name in names)


def encode_message(message: Message) -> bytes:
    """Encode one message as a CBOR array.

    Raises:
        ValueError: ``message`` is not one of the ZAB messages.
    """
    tag = _TAGS.get(type(message))
    if tag is None:
        _fail(f"not a ZAB message: {type(message).__name__}")
    item: list[Any] = [tag]
    for name in _FIELDS[type(message)]:
        value = getattr(message, name)
        if name == "state":
            value = _ROLE_CODES[value]
        elif name == "txns":
            value = list(value)
        item.append(value)
    return cbor2.dumps(item)


def decode_message(data: bytes) -> Message:
    """Decode and validate one message.

    Raises:
        ValueError: ``data`` is not exactly one well-formed ZAB message.
    """
    try:
        item = decode_strict(data, max_depth=4)
    except StrictCBORError as error:
        raise ValueError(f"{error.stray} stray bytes after the message" if error.stray else str(error)) from None
    if type(item) is not list or not item:
        _fail("a message is a non-empty array")
    tag = item[0]
    cls = _BY_TAG.get(tag) if type(tag) is int else None
    if cls is None:
        _fail(f"unknown message type {tag!r:.40}")
    names = _FIELDS[cls]
    if len(item) != len(names) + 1:
        _fail(f"{cls.__name__}: expected {len(names)} fields, got {len(item) - 1}")
    values = {name: _CHECKS[name](value, f"{cls.__name__}.{name}") for name, value in zip(names, item[1:], strict=True)}
    if "txns" in values:
        # A batch names zxid, zxid+1, ...: all of one epoch, none with counter 0.
        first = counter_of(values["zxid"])
        if first == 0 or first + len(values["txns"]) - 1 > COUNTER_MAX:
            _fail(f"{cls.__name__}: a batch of {len(values['txns'])} at counter {first} leaves its epoch")
    return cls(**values)
