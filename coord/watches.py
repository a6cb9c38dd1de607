"""Server-side watches: who wants to hear about a change to which znode.

Theory of operation
    Watches live on the server a client is connected to, not in the replicated
    state: when that server applies a txn, it calls :meth:`WatchManager.trigger` for
    each change the txn made (the tree reports them: created ``/a/b``, children of
    ``/a`` changed, ...) and pushes one event to each watcher returned. A *watcher*
    is an int, the session id of the connection holding the watch; when that
    connection goes away, :meth:`WatchManager.remove_watcher` drops all its watches
    (the client re-registers them on its next connection, see below).

    Semantics are ZooKeeper 3.6's:

    ==========================  =============================================================
    event                       watches that fire
    ==========================  =============================================================
    NODE_CREATED                DATA, EXIST and PERSISTENT on the path;
                                PERSISTENT_RECURSIVE on the path or any ancestor
    NODE_DATA_CHANGED           the same as NODE_CREATED
    NODE_DELETED                DATA, EXIST, CHILD and PERSISTENT on the path;
                                PERSISTENT_RECURSIVE on the path or any ancestor
    NODE_CHILDREN_CHANGED       CHILD and PERSISTENT on the path (never recursive ones:
                                a recursive watcher hears about the child itself instead)
    ==========================  =============================================================

    DATA, EXIST and CHILD are one-shot: removed as they fire. PERSISTENT and
    PERSISTENT_RECURSIVE stay until removed. A watcher is notified at most once per
    trigger, however many of its watches match, which is what ZooKeeper does with the
    watcher set it suppresses duplicates by.

Data structures
    One dict per kind, ``path -> {watcher: None}`` (insertion-ordered sets), plus the
    reverse index ``watcher -> kind -> {path}`` for :meth:`remove_watcher` and the
    counts. :meth:`trigger` does a handful of dict lookups on the changed path, so
    watches on unrelated paths cost nothing; it returns at once when there are no
    watches at all, and walks the ancestors of the path only while some recursive
    watch exists. The order of the result is deterministic: the one-shot and
    persistent watchers on the path (by kind, then registration order), then the
    recursive ones from the path upwards.

Reconnects
    :func:`replay_missed` implements ZooKeeper's setWatches2: a client that
    reconnects sends the paths it watches and the last zxid it saw; whatever changed
    after that is reported at once instead of being registered.

Where we differ from ZooKeeper
    ZooKeeper 3.6 keeps one mode per (watcher, path), so a session that holds both a
    one-shot and a persistent watch on a path loses track of one of them (fixed only
    in 3.9 with ``WatchStats``). Here each kind is registered separately, as in 3.9.
    EXIST is its own kind (ZooKeeper files it with data watches) so diagnostics can
    tell ``exists`` watches from ``get`` watches; it fires exactly like DATA.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from coord.protocol import EventType, SetWatchesRequest, Stat, WatcherType


class WatchKind(enum.Enum):
    """The kinds of watch a session can hold on a path."""

    DATA = "data"
    EXIST = "exist"
    CHILD = "child"
    PERSISTENT = "persistent"
    PERSISTENT_RECURSIVE = "persistent_recursive"

    @property
    def is_persistent(self) -> bool:
        return self in (WatchKind.PERSISTENT, WatchKind.PERSISTENT_RECURSIVE)


# Which non-recursive kinds on the changed path fire for each event type, in the
# order their watchers are listed. Recursive watches are handled separately.
_FIRES_ON_PATH: dict[EventType, tuple[WatchKind, ...]] = {
    EventType.NODE_CREATED: (WatchKind.DATA, WatchKind.EXIST, WatchKind.PERSISTENT),
    EventType.NODE_DATA_CHANGED: (WatchKind.DATA, WatchKind.EXIST, WatchKind.PERSISTENT),
    EventType.NODE_DELETED: (WatchKind.DATA, WatchKind.EXIST, WatchKind.CHILD, WatchKind.PERSISTENT),
    EventType.NODE_CHILDREN_CHANGED: (WatchKind.CHILD, WatchKind.PERSISTENT),
}

_FIRES_RECURSIVE = frozenset({EventType.NODE_CREATED, EventType.NODE_DATA_CHANGED, EventType.NODE_DELETED})

_KINDS_REMOVED: dict[WatcherType, tuple[WatchKind, ...]] = {
    WatcherType.CHILDREN: (WatchKind.CHILD,),
    WatcherType.DATA: (WatchKind.DATA, WatchKind.EXIST),
    WatcherType.PERSISTENT: (WatchKind.PERSISTENT,),
    WatcherType.PERSISTENT_RECURSIVE: (WatchKind.PERSISTENT_RECURSIVE,),
    WatcherType.ANY: tuple(WatchKind),
}


def _path_and_ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/a/b/c", "/a/b", "/a", "/"]``."""
    result = [path]
    while path != "/":
        index = path.rfind("/")
        path = path[:index] if index > 0 else "/"
        result.append(path)
    return result


class WatchManager:
    """The watches held by the sessions connected to this server. Pure, no I/O."""

    __slots__ = ("_by_kind", "_by_watcher", "_count")

    def __init__(self) -> None:
        self._by_kind: dict[WatchKind, dict[str, dict[int, None]]] = {kind: {} for kind in WatchKind}
        self._by_watcher: dict[int, dict[WatchKind, set[str]]] = {}
        self._count = 0

    def add(self, watcher: int, path: str, kind: WatchKind) -> None:
        """Register a watch. Adding one the watcher already holds changes nothing."""
        watchers = self._by_kind[kind].setdefault(path, {})
        if watcher in watchers:
            return
        watchers[watcher] = None
        self._by_watcher.setdefault(watcher, {}).setdefault(kind, set()).add(path)
        self._count += 1

    def trigger(self, event_type: EventType, path: str) -> list[int]:
        """The watchers to notify that ``event_type`` happened to ``path``.

        One-shot watches that fire are removed; persistent ones stay. Each watcher
        appears at most once. Event types that are not node changes (the
        ``*_WATCH_REMOVED`` ones) fire nothing.

        Returns:
            Watchers in a deterministic order (see the module docstring).
        """
        if not self._count:
            return []
        by_kind = self._by_kind
        notified: dict[int, None] = {}
        for kind in _FIRES_ON_PATH.get(event_type, ()):
            watchers = by_kind[kind].get(path)
            if watchers is None:
                continue
            notified.update(watchers)
            if not kind.is_persistent:
                del by_kind[kind][path]
                for watcher in watchers:
                    self._forget(watcher, kind, path)
        recursive = by_kind[WatchKind.PERSISTENT_RECURSIVE]
        if recursive and event_type in _FIRES_RECURSIVE:
            for ancestor in _path_and_ancestors(path):
                watchers = recursive.get(ancestor)
                if watchers is not None:
                    notified.update(watchers)
        return list(notified)

    def remove(self, watcher: int, path: str, watcher_type: WatcherType) -> bool:
        """Remove a watcher's watches on ``path`` of the kinds ``watcher_type`` names.

        ``CHILDREN`` removes the one-shot child watch, ``DATA`` the data and exist
        watches, ``PERSISTENT`` / ``PERSISTENT_RECURSIVE`` that kind, ``ANY`` all.

        Returns:
            True if anything was removed (else the caller answers NoWatcher).
        """
        removed = False
        for kind in _KINDS_REMOVED[watcher_type]:
            watchers = self._by_kind[kind].get(path)
            if watchers is None or watcher not in watchers:
                continue
            del watchers[watcher]
            if not watchers:
                del self._by_kind[kind][path]
            self._forget(watcher, kind, path)
            removed = True
        return removed

    def remove_watcher(self, watcher: int) -> int:
        """Drop every watch of a watcher (its connection closed).

        Returns:
            How many watches were dropped.
        """
        kinds = self._by_watcher.pop(watcher, None)
        if kinds is None:
            return 0
        dropped = 0
        for kind, paths in kinds.items():
            by_path = self._by_kind[kind]
            for path in paths:
                watchers = by_path[path]
                del watchers[watcher]
                if not watchers:
                    del by_path[path]
            dropped += len(paths)
        self._count -= dropped
        return dropped

    def count(self) -> int:
        """How many watches are registered, over all watchers and kinds."""
        return self._count

    def count_for(self, watcher: int) -> int:
        """How many watches one watcher holds."""
        kinds = self._by_watcher.get(watcher)
        return 0 if kinds is None else sum(len(paths) for paths in kinds.values())

    def paths_of(self, watcher: int) -> dict[WatchKind, list[str]]:
        """A watcher's watched paths by kind, sorted (kinds it holds none of are left out)."""
        kinds = self._by_watcher.get(watcher, {})
        return {kind: sorted(kinds[kind]) for kind in WatchKind if kinds.get(kind)}

    def watchers(self) -> list[int]:
        """The watchers that hold at least one watch."""
        return list(self._by_watcher)

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"WatchManager(watches={self._count}, watchers={len(self._by_watcher)})"

    def _forget(self, watcher: int, kind: WatchKind, path: str) -> None:
        """Drop ``path`` from the reverse index (the forward one is already updated)."""
        kinds = self._by_watcher[watcher]
        paths = kinds[kind]
        paths.discard(path)
        if not paths:
            del kinds[kind]
            if not kinds:
                del self._by_watcher[watcher]
        self._count -= 1


def replay_missed(
    request: SetWatchesRequest, lookup: Callable[[str], Stat | None]
) -> tuple[list[tuple[EventType, str]], list[tuple[str, WatchKind]]]:
    """Re-register a reconnecting client's watches, firing those it missed.

    For each path, with ``z = request.relative_zxid`` (the last zxid the client saw):

    - data: node missing -> NODE_DELETED; ``mzxid > z`` -> NODE_DATA_CHANGED; else register DATA
    - exist: node exists -> NODE_CREATED; else register EXIST
    - child: node missing -> NODE_DELETED; ``pzxid > z`` -> NODE_CHILDREN_CHANGED; else register CHILD
    - persistent, persistent_recursive: always register, no event

    An event stands in for the one-shot watch: that watch is consumed, not registered.
    Identical events are sent once (a data and a child watch on a deleted node give
    one NODE_DELETED, as a live delete would), which matches :meth:`WatchManager.trigger`
    notifying each watcher once.

    Args:
        request: the client's setWatches request.
        lookup: the Stat of a path in the applied tree, or None if there is no node.

    Returns:
        ``(events, watches)``: the events to send now, in request order, and the
        ``(path, kind)`` watches to register with :meth:`WatchManager.add`.
    """
    zxid = request.relative_zxid
    events: dict[tuple[EventType, str], None] = {}
    watches: list[tuple[str, WatchKind]] = []
    for path in request.data:
        stat = lookup(path)
        if stat is None:
            events[(EventType.NODE_DELETED, path)] = None
        elif stat.mzxid > zxid:
            events[(EventType.NODE_DATA_CHANGED, path)] = None
        else:
            watches.append((path, WatchKind.DATA))
    for path in request.exist:
        if lookup(path) is not None:
            events[(EventType.NODE_CREATED, path)] = None
        else:
            watches.append((path, WatchKind.EXIST))
    for path in request.child:
        stat = lookup(path)
        if stat is None:
            events[(EventType.NODE_DELETED, path)] = None
        elif stat.pzxid > zxid:
            events[(EventType.NODE_CHILDREN_CHANGED, path)] = None
        else:
            watches.append((path, WatchKind.CHILD))
    watches.extend((path, WatchKind.PERSISTENT) for path in request.persistent)
    watches.extend((path, WatchKind.PERSISTENT_RECURSIVE) for path in request.persistent_recursive)
    return list(events), watches


__all__ = ["WatchKind", "WatchManager", "replay_missed"]
