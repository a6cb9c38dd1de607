"""Serving a read from the applied tree: get, exists, children, ping, sync and the watch changes.

Reads are answered by the server a client is connected to, from the state it has
applied, never from anything pending (docs/correctness.md, rule 4: nothing is applied
that is not durable, so nothing a read sees can be lost). The ops that only change this
server's watches (add, remove, set after a reconnect) are local too, so they are served
here the same way. This module is the one place that turns such a request into its reply
frame; the pipeline (:mod:`coord.pipeline`) decides *when* a read is served (in request
order, within its connection's bounds), this decides *what* it answers. It keeps no
state of its own: the tree and the watch table it is given are the state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coord import protocol
from coord.errors import CoordError, MarshallingError, NoNodeError, NoWatcherError, UnimplementedError
from coord.protocol import (
    AddWatchMode,
    AddWatchRequest,
    ExistsRequest,
    GetChildrenRequest,
    GetDataRequest,
    PingRequest,
    RemoveWatchesRequest,
    Request,
    SetWatchesRequest,
    SyncRequest,
    WatchEvent,
)
from coord.tree import DataTree
from coord.watches import WatchKind, WatchManager, replay_missed

_encode_frame = protocol.encode_frame


def error_frame(last_zxid: int, xid: int, error: CoordError) -> bytes:
    """The reply frame answering request ``xid`` with ``error``, at the applied zxid ``last_zxid``."""
    return _encode_frame(protocol.encode_reply(xid, last_zxid, error.code, str(error)))


def serve_read(
    tree: DataTree,
    watches: WatchManager,
    session_id: int,
    xid: int,
    request: Request,
    *,
    reply_bytes_max: int,
    send_event: Callable[[bytes], None],
) -> bytes:
    """Serve a read (or a local op such as a watch change) from the applied tree.

    Returns the reply frame. Watches are registered for ``session_id``; the events a
    ``SetWatchesRequest`` replays (what changed while the client was away) are handed
    to ``send_event`` as frames, before the reply. A reply over ``reply_bytes_max``
    is answered with a :class:`~coord.errors.MarshallingError` instead."""
    try:
        match request:
            case GetDataRequest(path=path, watch=watch):
                protocol.validate_path(path)
                node = tree.get_node(path)
                if node is None:
                    raise NoNodeError(path)
                if watch:
                    watches.add(session_id, path, WatchKind.DATA)
                result: Any = [node.data, node.stat().to_wire()]
            case ExistsRequest(path=path, watch=watch):
                protocol.validate_path(path)
                node = tree.get_node(path)
                if watch:
                    watches.add(session_id, path, WatchKind.DATA if node else WatchKind.EXIST)
                result = node.stat().to_wire() if node else None
            case GetChildrenRequest(path=path, watch=watch):
                protocol.validate_path(path)
                names, stat = tree.get_children(path)
                if watch:
                    watches.add(session_id, path, WatchKind.CHILD)
                result = [names, stat.to_wire()]
            case PingRequest():
                result = None
            case SyncRequest(path=path):
                # Standalone: everything this session wrote is applied once the
                # sync reaches the head of its queue. (The ensemble confirms
                # leadership with a quorum round first: docs/correctness.md, rule 8.)
                protocol.validate_path(path)
                result = path
            case AddWatchRequest(path=path, mode=mode):
                protocol.validate_path(path)
                kind = WatchKind.PERSISTENT if mode is AddWatchMode.PERSISTENT else WatchKind.PERSISTENT_RECURSIVE
                watches.add(session_id, path, kind)
                result = None
            case RemoveWatchesRequest(path=path, watcher_type=watcher_type):
                protocol.validate_path(path)
                if not watches.remove(session_id, path, watcher_type):
                    raise NoWatcherError(path)
                result = None
            case SetWatchesRequest():
                for paths in (
                    request.data,
                    request.exist,
                    request.child,
                    request.persistent,
                    request.persistent_recursive,
                ):
                    for path in paths:
                        protocol.validate_path(path)
                events, registrations = replay_missed(request, tree.exists)
                for path, kind in registrations:
                    watches.add(session_id, path, kind)
                zxid = tree.last_zxid
                for event_type, path in events:
                    send_event(_encode_frame(protocol.encode_event(WatchEvent(type=event_type, path=path, zxid=zxid))))
                result = None
            case _:
                raise UnimplementedError(f"unsupported request {type(request).__name__}")
    except CoordError as error:
        return error_frame(tree.last_zxid, xid, error)
    frame = _encode_frame(protocol.encode_reply(xid, tree.last_zxid, 0, result))
    if len(frame) > reply_bytes_max:
        # No client could read it (its frame limit is the server's); say so instead.
        return error_frame(
            tree.last_zxid,
            xid,
            MarshallingError(f"the reply would be {len(frame)} bytes, over the frame limit of {reply_bytes_max}"),
        )
    return frame
