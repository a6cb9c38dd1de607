"""One-line formatting of simulator events, messages and records.

The simulator stores events as cheap tuples and formats them only when a trace is
read (a failure report, a determinism comparison, a transcript). Messages come from
``coord.zab.messages``, which the simulator does not otherwise know: any dataclass is
shown as ``Name(field=value, ...)`` with zxids as ``epoch.counter`` and bytes shortened.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from coord.zab.types import (
    EpochRecord,
    LogEntry,
    Record,
    RoleChange,
    SnapshotChunkRecord,
    SnapshotRecord,
    TruncateRecord,
    Zxid,
)
from coord.zxid import counter_of, epoch_of


def zxid_str(zxid: Zxid | None) -> str:
    """``(3 << 32) | 7`` → ``3.7``."""
    if zxid is None:
        return "-"
    return f"{epoch_of(zxid)}.{counter_of(zxid)}"


def _is_zxid_field(name: str) -> bool:
    return name == "zxid" or name.endswith("_zxid") or name.startswith("zxid")


def _value(name: str, value: Any, depth: int = 0) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace") if len(value) <= 24 else f"<{len(value)}B>"
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int) and _is_zxid_field(name):
        return zxid_str(value)
    if isinstance(value, (list, tuple)):
        if depth > 1:
            return f"[{len(value)}]"
        items = [_value(name, item, depth + 1) for item in value[:6]]
        more = f",+{len(value) - 6}" if len(value) > 6 else ""
        return "[" + ",".join(items) + more + "]"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return format_message(value, depth + 1)
    if hasattr(value, "name") and hasattr(value, "value"):  # an enum
        return str(value.name)
    return repr(value)


def format_message(message: Any, depth: int = 0) -> str:
    """``Proposal(zxid=1.3, txn=c7-2)``: a compact, deterministic rendering."""
    if not (dataclasses.is_dataclass(message) and not isinstance(message, type)):
        return repr(message)
    parts = []
    for field in dataclasses.fields(message):
        value = getattr(message, field.name)
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], tuple) and len(value[0]) == 2:
            # (zxid, txn) pairs: show them as zxid=txn.
            shown = [
                f"{zxid_str(z)}={_value('', t, 2)}" if isinstance(z, int) else _value(field.name, (z, t), 2)
                for z, t in value[:6]
            ]
            more = f",+{len(value) - 6}" if len(value) > 6 else ""
            parts.append(f"{field.name}=[{','.join(shown)}{more}]")
        else:
            parts.append(f"{field.name}={_value(field.name, value, depth)}")
    return f"{type(message).__name__}({', '.join(parts)})"


def format_record(record: Record) -> str:
    """A persisted record, without its seq (seqs are an implementation detail of the core)."""
    match record:
        case LogEntry(zxid=zxid, txn=txn):
            return f"log {zxid_str(zxid)}={_value('', txn)}"
        case EpochRecord(accepted_epoch=accepted, current_epoch=current):
            parts = []
            if accepted is not None:
                parts.append(f"accepted={accepted}")
            if current is not None:
                parts.append(f"current={current}")
            return "epoch " + " ".join(parts)
        case TruncateRecord(zxid=zxid):
            return f"trunc {zxid_str(zxid)}"
        case SnapshotChunkRecord(zxid=zxid, offset=offset, data=data):
            return f"snap-chunk {zxid_str(zxid)} @{offset} <{len(data)}B>"
        case SnapshotRecord(zxid=zxid, size=size):
            return f"snap {zxid_str(zxid)} <{size}B>"
    return repr(record)


def format_role(change: RoleChange) -> str:
    """``LEADING leader=3 epoch=2``."""
    return f"{change.role.name} leader={change.leader} epoch={change.epoch}"


def format_event(time: int, kind: str, args: tuple[Any, ...]) -> str:
    """Render one stored trace event."""
    match kind:
        case "recv":
            (envelope,) = args
            text = f"s{envelope.target} <- s{envelope.source} {format_message(envelope.message)}"
        case "stale":
            (envelope,) = args
            text = f"s{envelope.target} <- s{envelope.source} STALE {format_message(envelope.message)}"
        case "drop":
            envelope, reason = args
            text = f"s{envelope.target} x- s{envelope.source} {format_message(envelope.message)} ({reason})"
        case "tick":
            text = f"s{args[0]} tick"
        case "persist":
            server, records = args
            shown = [format_record(record) for record in records[:4]]
            if len(records) > 6:
                shown.append(f"... {len(records) - 6} more ...")
            shown.extend(format_record(record) for record in records[max(4, len(records) - 2) :])
            text = f"s{server} write " + "; ".join(shown)
        case "durable":
            server, seq, count = args
            text = f"s{server} durable {count} write(s) through seq {seq}"
        case "deliver":
            server, zxid, txn = args
            text = f"s{server} deliver {zxid_str(zxid)}={_value('', txn)}"
        case "install":
            server, zxid, count = args
            text = f"s{server} install snapshot {zxid_str(zxid)} ({count} txns)"
        case "role":
            server, change = args
            text = f"s{server} role {format_role(change)}"
        case "ready":
            server, value = args
            text = f"s{server} ready={value}"
        case "propose":
            server, txn, result = args
            text = f"s{server} propose {_value('', txn)} -> {result}"
        case "note":
            text = str(args[0])
        case _:
            text = f"{kind} {args!r}"
    return f"{time:>8} {text}"
