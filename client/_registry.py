"""The client's registry of armed watches: routing events, restoring after reconnects.

Theory of operation
    One dict per kind of watch, ``path -> watchers`` in arming order: one-shot
    :class:`~client.Watch` objects (data, exist, child) and persistent
    :class:`~client.WatchStream` objects (persistent, recursive). The session core
    arms a watch when the reply of the request that carried it arrives, routes each
    pushed event here, and asks for the SetWatches requests that re-arm everything on
    a new connection. No I/O, no clock.

Routing (the server's table, see :mod:`coord.watches`)
    NODE_CREATED, NODE_DATA_CHANGED fire data and exist watches on the path;
    NODE_DELETED also child watches; NODE_CHILDREN_CHANGED child watches only. Every
    event goes to persistent watchers on the path, and (except NODE_CHILDREN_CHANGED)
    to recursive watchers on the path and its ancestors. The server notifies a session
    once per change however many of its watches match, so the client fans one event
    out to all local watchers, as ZooKeeper's client does. One-shot watches are
    forgotten as they fire.

Removal
    When ``remove_watches`` succeeds, the local watchers are told as ZooKeeper tells
    them: one-shot watches fire with DATA_WATCH_REMOVED / CHILD_WATCH_REMOVED,
    streams get PERSISTENT_WATCH_REMOVED and end. (Our server does not push those
    events itself; if a server does, they are routed the same way.)
"""

from __future__ import annotations

from typing import Any, Final

from client._watch import Watch, WatchEvent, WatchStream
from coord.errors import CoordError
from coord.protocol import EventType, SetWatchesRequest, WatcherType

SET_WATCHES_BYTES_MAX: Final = 256 * 1024
"""Watched paths beyond this many bytes go into further SetWatches requests, so a
client with a huge number of watches never sends a frame over the server's limit."""

_KINDS: Final = ("data", "exist", "child", "persistent", "persistent_recursive")
"""The SetWatchesRequest field of each registry, in :meth:`WatchRegistry._registries` order."""


class WatchRegistry:
    """The armed watches of one session (see the module doc)."""

    def __init__(self) -> None:
        self.data: dict[str, list[Watch]] = {}
        self.exist: dict[str, list[Watch]] = {}
        self.child: dict[str, list[Watch]] = {}
        self.persistent: dict[str, list[WatchStream]] = {}
        self.recursive: dict[str, list[WatchStream]] = {}

    def __bool__(self) -> bool:
        """Whether any watch is armed."""
        return bool(self.data or self.exist or self.child or self.persistent or self.recursive)

    # --- arming -------------------------------------------------------------------------

    def arm(self, registry: dict[str, list[Watch]], path: str, watch: Watch) -> None:
        """Arm a one-shot ``watch`` on ``path`` in ``registry`` (data, exist or child)."""
        watches = registry.get(path)
        if watches is None:
            registry[path] = [watch]
        elif watch not in watches:
            watches.append(watch)

    def add_stream(self, stream: WatchStream) -> None:
        """Register a persistent watch stream (unless its caller already gave up on it)."""
        if not stream.is_ended:
            registry = self.recursive if stream.recursive else self.persistent
            registry.setdefault(stream.path, []).append(stream)

    def forget_stream(self, stream: WatchStream) -> bool:
        """Drop a persistent watch stream locally (its ``add_watch`` block was left).

        Returns:
            Whether it was the last local watcher of its kind on its path (then the
            server-side watch should be removed too).
        """
        registry = self.recursive if stream.recursive else self.persistent
        streams = registry.get(stream.path)
        if streams is None or stream not in streams:
            return False
        streams.remove(stream)
        if streams:
            return False
        del registry[stream.path]
        return True

    # --- events -------------------------------------------------------------------------

    def dispatch(self, event: WatchEvent) -> None:
        """Route one pushed event to the local watchers it concerns."""
        kind = event.type
        path = event.path
        one_shot: list[Watch] = []
        if kind is EventType.NODE_CREATED or kind is EventType.NODE_DATA_CHANGED:
            one_shot += self.data.pop(path, ())
            one_shot += self.exist.pop(path, ())
        elif kind is EventType.NODE_DELETED:
            one_shot += self.data.pop(path, ())
            one_shot += self.exist.pop(path, ())
            one_shot += self.child.pop(path, ())
        elif kind is EventType.NODE_CHILDREN_CHANGED:
            one_shot += self.child.pop(path, ())
        elif kind is EventType.DATA_WATCH_REMOVED or kind is EventType.CHILD_WATCH_REMOVED:
            watcher_type = WatcherType.DATA if kind is EventType.DATA_WATCH_REMOVED else WatcherType.CHILDREN
            self.removed(path, watcher_type, event.zxid)
            return
        elif kind is EventType.PERSISTENT_WATCH_REMOVED:
            self.removed(path, WatcherType.PERSISTENT, event.zxid)
            self.removed(path, WatcherType.PERSISTENT_RECURSIVE, event.zxid)
            return
        for watch in one_shot:
            watch._fire(event)
        for stream in self.persistent.get(path, ()):
            stream._put(event)
        if self.recursive and kind is not EventType.NODE_CHILDREN_CHANGED:
            recursive = self.recursive
            ancestor = path
            while True:
                for stream in recursive.get(ancestor, ()):
                    stream._put(event)
                if ancestor == "/":
                    break
                index = ancestor.rfind("/")
                ancestor = ancestor[:index] if index > 0 else "/"

    def removed(self, path: str, watcher_type: WatcherType, zxid: int) -> None:
        """``remove_watches(path, watcher_type)`` succeeded: tell the local watchers."""
        if watcher_type in (WatcherType.DATA, WatcherType.ANY):
            event = WatchEvent(EventType.DATA_WATCH_REMOVED, path, zxid)
            for watch in [*self.data.pop(path, ()), *self.exist.pop(path, ())]:
                watch._fire(event)
        if watcher_type in (WatcherType.CHILDREN, WatcherType.ANY):
            event = WatchEvent(EventType.CHILD_WATCH_REMOVED, path, zxid)
            for watch in self.child.pop(path, ()):
                watch._fire(event)
        registries: list[dict[str, list[WatchStream]]] = []
        if watcher_type in (WatcherType.PERSISTENT, WatcherType.ANY):
            registries.append(self.persistent)
        if watcher_type in (WatcherType.PERSISTENT_RECURSIVE, WatcherType.ANY):
            registries.append(self.recursive)
        event = WatchEvent(EventType.PERSISTENT_WATCH_REMOVED, path, zxid)
        for registry in registries:
            for stream in registry.pop(path, ()):
                stream._put(event)
                stream._end()

    def fail_all(self, error: CoordError) -> None:
        """The session is over: every watch fails with ``error`` and is forgotten."""
        for one_shot in (self.data, self.exist, self.child):
            for watches in one_shot.values():
                for watch in watches:
                    watch._fail(error)
            one_shot.clear()
        for persistent in (self.persistent, self.recursive):
            for streams in persistent.values():
                for stream in streams:
                    stream._fail(error)
            persistent.clear()

    # --- reconnects ---------------------------------------------------------------------

    def set_watches_requests(self, relative_zxid: int) -> list[SetWatchesRequest]:
        """The SetWatches request(s) that re-arm every watch on a new connection.

        Watches that already fired through another registration are forgotten first.
        Usually one request; more only when the paths would not fit in one frame.
        Empty when nothing is armed.
        """
        for one_shot in (self.data, self.exist, self.child):
            for path in [path for path, watches in one_shot.items() if all(w.is_fired for w in watches)]:
                del one_shot[path]
        registries: tuple[dict[str, Any], ...] = (self.data, self.exist, self.child, self.persistent, self.recursive)
        requests: list[SetWatchesRequest] = []
        batch: dict[str, list[str]] = {name: [] for name in _KINDS}
        size = 0
        for kind, registry in zip(_KINDS, registries, strict=True):
            for path in registry:
                path_bytes = len(path.encode()) + 8
                if size and size + path_bytes > SET_WATCHES_BYTES_MAX:
                    requests.append(_set_watches(relative_zxid, batch))
                    batch = {name: [] for name in _KINDS}
                    size = 0
                batch[kind].append(path)
                size += path_bytes
        if size:
            requests.append(_set_watches(relative_zxid, batch))
        return requests


def _set_watches(relative_zxid: int, batch: dict[str, list[str]]) -> SetWatchesRequest:
    return SetWatchesRequest(
        relative_zxid=relative_zxid,
        data=tuple(batch["data"]),
        exist=tuple(batch["exist"]),
        child=tuple(batch["child"]),
        persistent=tuple(batch["persistent"]),
        persistent_recursive=tuple(batch["persistent_recursive"]),
    )


__all__ = ["SET_WATCHES_BYTES_MAX", "WatchRegistry"]
