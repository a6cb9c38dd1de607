"""WatchManager and replay_missed: ZooKeeper 3.6 watch semantics."""

from __future__ import annotations

import pytest

from coord.protocol import EventType, SetWatchesRequest, Stat, WatcherType
from coord.watches import WatchKind, WatchManager, replay_missed

CREATED = EventType.NODE_CREATED
DELETED = EventType.NODE_DELETED
CHANGED = EventType.NODE_DATA_CHANGED
CHILDREN = EventType.NODE_CHILDREN_CHANGED

DATA = WatchKind.DATA
EXIST = WatchKind.EXIST
CHILD = WatchKind.CHILD
PERSISTENT = WatchKind.PERSISTENT
RECURSIVE = WatchKind.PERSISTENT_RECURSIVE

ONE_SHOT = (DATA, EXIST, CHILD)

# (event, kind, where the watch is relative to the changed node) -> does it fire?
# "self": on the changed path; "parent"/"root": on an ancestor; "child": below it; "sibling": unrelated.
FIRES: dict[tuple[EventType, WatchKind, str], bool] = {}
for _event in (CREATED, DELETED, CHANGED, CHILDREN):
    for _kind in WatchKind:
        for _where in ("self", "parent", "root", "child", "sibling"):
            FIRES[(_event, _kind, _where)] = False
for _event in (CREATED, CHANGED):
    for _kind in (DATA, EXIST, PERSISTENT, RECURSIVE):
        FIRES[(_event, _kind, "self")] = True
for _kind in (DATA, EXIST, CHILD, PERSISTENT, RECURSIVE):
    FIRES[(DELETED, _kind, "self")] = True
for _kind in (CHILD, PERSISTENT):
    FIRES[(CHILDREN, _kind, "self")] = True
for _event in (CREATED, CHANGED, DELETED):
    FIRES[(_event, RECURSIVE, "parent")] = True
    FIRES[(_event, RECURSIVE, "root")] = True

CHANGED_PATH = "/app/node"
WATCH_PATHS = {"self": "/app/node", "parent": "/app", "root": "/", "child": "/app/node/x", "sibling": "/app/other"}


@pytest.mark.parametrize(("event", "kind", "where"), sorted(FIRES, key=str))
def test_event_fires_exactly_the_watches_zookeeper_fires(event: EventType, kind: WatchKind, where: str) -> None:
    watches = WatchManager()
    watches.add(7, WATCH_PATHS[where], kind)
    expected = FIRES[(event, kind, where)]
    assert watches.trigger(event, CHANGED_PATH) == ([7] if expected else [])
    # one-shot watches are gone once fired; persistent ones and unfired ones stay
    still_there = not expected or kind.is_persistent
    assert watches.count() == (1 if still_there else 0)
    assert watches.paths_of(7) == ({kind: [WATCH_PATHS[where]]} if still_there else {})


def test_table_covers_zookeeper_child_event_exclusion_for_recursive_watches() -> None:
    assert not FIRES[(CHILDREN, RECURSIVE, "self")]
    assert not FIRES[(CHILDREN, RECURSIVE, "parent")]


@pytest.mark.parametrize("kind", ONE_SHOT)
def test_one_shot_watch_fires_once(kind: WatchKind) -> None:
    watches = WatchManager()
    watches.add(1, "/a", kind)
    assert watches.trigger(DELETED, "/a") == [1]
    assert watches.trigger(DELETED, "/a") == []
    assert watches.count() == 0
    assert watches.count_for(1) == 0


@pytest.mark.parametrize("kind", [PERSISTENT, RECURSIVE])
def test_persistent_watch_fires_every_time(kind: WatchKind) -> None:
    watches = WatchManager()
    watches.add(1, "/a", kind)
    for event in (CREATED, CHANGED, CHANGED, DELETED, CREATED):
        assert watches.trigger(event, "/a") == [1]
    assert watches.count() == 1


def test_recursive_watch_fires_for_deep_descendants() -> None:
    watches = WatchManager()
    watches.add(1, "/a", RECURSIVE)
    assert watches.trigger(CREATED, "/a/b/c/d") == [1]
    assert watches.trigger(CREATED, "/ab") == []  # a prefix of the name is not an ancestor


def test_recursive_watch_gets_no_child_events_even_with_descendants() -> None:
    watches = WatchManager()
    watches.add(1, "/", RECURSIVE)
    assert watches.trigger(CHILDREN, "/") == []
    assert watches.trigger(CHILDREN, "/a") == []
    assert watches.trigger(CREATED, "/a/b") == [1]


def test_watcher_is_notified_once_however_many_watches_match() -> None:
    watches = WatchManager()
    for kind in WatchKind:
        watches.add(1, "/a/b", kind)
    watches.add(1, "/a", RECURSIVE)
    watches.add(1, "/", RECURSIVE)
    assert watches.trigger(DELETED, "/a/b") == [1]
    # the one-shot ones all fired together and are gone; persistent ones remain
    assert watches.paths_of(1) == {PERSISTENT: ["/a/b"], RECURSIVE: ["/", "/a", "/a/b"]}


def test_data_and_child_watch_on_a_deleted_node_both_fire_with_one_notification() -> None:
    watches = WatchManager()
    watches.add(1, "/a", DATA)
    watches.add(1, "/a", CHILD)
    assert watches.trigger(DELETED, "/a") == [1]
    assert watches.count() == 0


def test_data_change_leaves_the_child_watch_in_place() -> None:
    watches = WatchManager()
    watches.add(1, "/a", DATA)
    watches.add(1, "/a", CHILD)
    assert watches.trigger(CHANGED, "/a") == [1]
    assert watches.paths_of(1) == {CHILD: ["/a"]}


def test_many_watchers_are_each_notified_in_a_deterministic_order() -> None:
    watches = WatchManager()
    watches.add(3, "/a", DATA)
    watches.add(1, "/a", DATA)
    watches.add(2, "/a", EXIST)
    watches.add(1, "/a", EXIST)
    watches.add(4, "/a", PERSISTENT)
    watches.add(5, "/", RECURSIVE)
    watches.add(6, "/a", RECURSIVE)
    assert watches.trigger(CREATED, "/a") == [3, 1, 2, 4, 6, 5]


def test_watches_on_unrelated_paths_are_untouched() -> None:
    watches = WatchManager()
    for watcher in range(1000):
        watches.add(watcher, f"/n{watcher}", DATA)
    assert watches.trigger(CHANGED, "/n500") == [500]
    assert watches.count() == 999


def test_trigger_with_no_watches_returns_nothing() -> None:
    watches = WatchManager()
    assert watches.trigger(CREATED, "/a") == []
    assert len(watches) == 0


def test_watch_removed_event_types_fire_nothing() -> None:
    watches = WatchManager()
    watches.add(1, "/a", DATA)
    watches.add(1, "/a", RECURSIVE)
    assert watches.trigger(EventType.DATA_WATCH_REMOVED, "/a") == []
    assert watches.count() == 2


def test_adding_the_same_watch_twice_registers_it_once() -> None:
    watches = WatchManager()
    watches.add(1, "/a", DATA)
    watches.add(1, "/a", DATA)
    assert watches.count() == 1
    assert watches.trigger(CHANGED, "/a") == [1]
    assert watches.count() == 0


# --- remove ------------------------------------------------------------------------

ALL_KINDS_ON_A = {kind: ["/a"] for kind in WatchKind}


@pytest.mark.parametrize(
    ("watcher_type", "left"),
    [
        (WatcherType.CHILDREN, {DATA, EXIST, PERSISTENT, RECURSIVE}),
        (WatcherType.DATA, {CHILD, PERSISTENT, RECURSIVE}),
        (WatcherType.PERSISTENT, {DATA, EXIST, CHILD, RECURSIVE}),
        (WatcherType.PERSISTENT_RECURSIVE, {DATA, EXIST, CHILD, PERSISTENT}),
        (WatcherType.ANY, set()),
    ],
)
def test_remove_drops_the_kinds_its_watcher_type_names(watcher_type: WatcherType, left: set[WatchKind]) -> None:
    watches = WatchManager()
    for kind in WatchKind:
        watches.add(1, "/a", kind)
        watches.add(2, "/a", kind)
    assert watches.remove(1, "/a", watcher_type) is True
    assert set(watches.paths_of(1)) == left
    assert watches.paths_of(2) == ALL_KINDS_ON_A  # another watcher's watches are untouched
    assert watches.count() == len(WatchKind) + len(left)
    assert watches.remove(1, "/a", watcher_type) is False  # nothing left of that type


def test_remove_data_type_removes_an_exist_watch_alone() -> None:
    watches = WatchManager()
    watches.add(1, "/a", EXIST)
    assert watches.remove(1, "/a", WatcherType.DATA)
    assert watches.count() == 0


@pytest.mark.parametrize("watcher_type", list(WatcherType))
def test_remove_of_nothing_is_false(watcher_type: WatcherType) -> None:
    watches = WatchManager()
    watches.add(1, "/a", CHILD if watcher_type is not WatcherType.CHILDREN else DATA)
    watches.add(2, "/b", CHILD)
    assert watches.remove(1, "/b", watcher_type) is False
    assert watches.remove(3, "/a", watcher_type) is False
    assert watches.count() == 2


@pytest.mark.parametrize(
    ("held", "watcher_type"),
    [
        (DATA, WatcherType.CHILDREN),
        (EXIST, WatcherType.CHILDREN),
        (CHILD, WatcherType.DATA),
        (RECURSIVE, WatcherType.PERSISTENT),
        (PERSISTENT, WatcherType.PERSISTENT_RECURSIVE),
        (DATA, WatcherType.PERSISTENT),
    ],
)
def test_remove_of_another_kind_on_the_path_is_false(held: WatchKind, watcher_type: WatcherType) -> None:
    watches = WatchManager()
    watches.add(1, "/a", held)
    assert watches.remove(1, "/a", watcher_type) is False
    assert watches.paths_of(1) == {held: ["/a"]}


def test_removed_watch_does_not_fire() -> None:
    watches = WatchManager()
    watches.add(1, "/a", DATA)
    watches.add(2, "/a", DATA)
    watches.remove(1, "/a", WatcherType.DATA)
    assert watches.trigger(CHANGED, "/a") == [2]


def test_remove_watcher_drops_everything_it_holds() -> None:
    watches = WatchManager()
    watches.add(1, "/a", DATA)
    watches.add(1, "/a", CHILD)
    watches.add(1, "/b", EXIST)
    watches.add(1, "/", RECURSIVE)
    watches.add(2, "/a", DATA)
    assert watches.remove_watcher(1) == 4
    assert watches.count() == 1
    assert watches.count_for(1) == 0
    assert watches.paths_of(1) == {}
    assert watches.trigger(DELETED, "/a") == [2]
    assert watches.trigger(CREATED, "/b") == []
    assert watches.remove_watcher(1) == 0
    assert watches.watchers() == []


def test_counts_follow_adds_fires_and_removes() -> None:
    watches = WatchManager()
    watches.add(1, "/a", DATA)
    watches.add(1, "/b", DATA)
    watches.add(2, "/a", PERSISTENT)
    assert (watches.count(), watches.count_for(1), watches.count_for(2)) == (3, 2, 1)
    watches.trigger(CHANGED, "/a")
    assert (watches.count(), watches.count_for(1), watches.count_for(2)) == (2, 1, 1)
    assert watches.paths_of(1) == {DATA: ["/b"]}
    assert sorted(watches.watchers()) == [1, 2]


# --- replay_missed ------------------------------------------------------------------


def stat(*, mzxid: int = 5, pzxid: int = 5) -> Stat:
    return Stat(
        czxid=1,
        mzxid=mzxid,
        ctime=0,
        mtime=0,
        version=0,
        cversion=0,
        aversion=0,
        ephemeral_owner=0,
        data_length=0,
        num_children=0,
        pzxid=pzxid,
    )


TREE = {
    "/same": stat(mzxid=5, pzxid=5),
    "/data-changed": stat(mzxid=11, pzxid=5),
    "/kids-changed": stat(mzxid=5, pzxid=11),
}


def replay(**fields: tuple[str, ...]) -> tuple[list[tuple[EventType, str]], list[tuple[str, WatchKind]]]:
    return replay_missed(SetWatchesRequest(relative_zxid=10, **fields), TREE.get)


@pytest.mark.parametrize(
    ("field", "path", "event", "registered"),
    [
        ("data", "/gone", DELETED, None),
        ("data", "/data-changed", CHANGED, None),
        ("data", "/kids-changed", None, DATA),
        ("data", "/same", None, DATA),
        ("exist", "/same", CREATED, None),
        ("exist", "/gone", None, EXIST),
        ("child", "/gone", DELETED, None),
        ("child", "/kids-changed", CHILDREN, None),
        ("child", "/data-changed", None, CHILD),
        ("child", "/same", None, CHILD),
        ("persistent", "/gone", None, PERSISTENT),
        ("persistent", "/data-changed", None, PERSISTENT),
        ("persistent_recursive", "/gone", None, RECURSIVE),
        ("persistent_recursive", "/kids-changed", None, RECURSIVE),
    ],
)
def test_replay_fires_what_was_missed_and_registers_the_rest(
    field: str, path: str, event: EventType | None, registered: WatchKind | None
) -> None:
    events, watches = replay(**{field: (path,)})
    assert events == ([(event, path)] if event else [])
    assert watches == ([(path, registered)] if registered else [])


def test_replay_change_at_exactly_the_clients_zxid_was_seen() -> None:
    tree = {"/a": stat(mzxid=10, pzxid=10)}
    events, watches = replay_missed(SetWatchesRequest(relative_zxid=10, data=("/a",), child=("/a",)), tree.get)
    assert events == []
    assert watches == [("/a", DATA), ("/a", CHILD)]


def test_replay_sends_one_deleted_event_for_data_and_child_watch_on_a_gone_node() -> None:
    events, watches = replay(data=("/gone",), child=("/gone",))
    assert events == [(DELETED, "/gone")]
    assert watches == []


def test_replay_keeps_request_order() -> None:
    events, watches = replay(
        data=("/data-changed", "/same"),
        exist=("/same", "/gone"),
        child=("/kids-changed", "/same"),
        persistent=("/p",),
        persistent_recursive=("/r",),
    )
    assert events == [(CHANGED, "/data-changed"), (CREATED, "/same"), (CHILDREN, "/kids-changed")]
    assert watches == [("/same", DATA), ("/gone", EXIST), ("/same", CHILD), ("/p", PERSISTENT), ("/r", RECURSIVE)]


def test_replayed_watches_register_into_the_manager() -> None:
    _, to_register = replay(data=("/same",), persistent_recursive=("/",))
    watches = WatchManager()
    for path, kind in to_register:
        watches.add(9, path, kind)
    assert watches.trigger(CHANGED, "/same") == [9]
    assert watches.paths_of(9) == {RECURSIVE: ["/"]}
