"""The data tree: stat fields, events, indexes and snapshot images, from hand-made txns."""

from __future__ import annotations

import gc
import random
import weakref
from collections.abc import Iterator

import cbor2
import pytest

from coord.errors import NoNodeError
from coord.protocol import CreateMode, EventType, Stat
from coord.tree import DataTree, Node, TreeImage
from coord.tree_image import collector_paused
from coord.txn import (
    CheckTxn,
    CloseSessionTxn,
    CreateSessionTxn,
    CreateTxn,
    DeleteTxn,
    ErrorTxn,
    MultiTxn,
    SetDataTxn,
    Txn,
    TxnBody,
)

CREATED = EventType.NODE_CREATED
DELETED = EventType.NODE_DELETED
DATA_CHANGED = EventType.NODE_DATA_CHANGED
CHILDREN_CHANGED = EventType.NODE_CHILDREN_CHANGED


class Applier:
    """A tree plus a zxid counter: ``apply(body)`` wraps the body in the next txn."""

    def __init__(self, tree: DataTree | None = None) -> None:
        self.tree = tree or DataTree()
        self.zxid = self.tree.last_zxid

    def apply(self, body: TxnBody, *, time_ms: int = 1_000, session_id: int = 0):
        self.zxid += 1
        return self.tree.apply(Txn(zxid=self.zxid, time_ms=time_ms, session_id=session_id, xid=0, body=body))


def create(path: str, data: bytes = b"", mode: CreateMode = CreateMode.PERSISTENT, **kwargs) -> CreateTxn:
    return CreateTxn(path=path, data=data, mode=mode, **kwargs)


def test_fresh_tree_holds_root_and_reserved_subtree_at_zxid_zero() -> None:
    tree = DataTree()
    assert tree.last_zxid == 0
    assert tree.node_count == 2
    children, root_stat = tree.get_children("/")
    assert children == ["coord"]
    assert root_stat == Stat(0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0)
    assert tree.exists("/coord") == Stat(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def test_create_sets_stat_fields_and_bumps_parent_counters() -> None:
    a = Applier()
    a.apply(create("/a"), time_ms=100)
    result = a.apply(create("/a/b", b"hello"), time_ms=200)
    assert result.error == 0
    stat = [2, 2, 200, 200, 0, 0, 0, 0, 5, 0, 2]
    assert result.result == ["/a/b", stat]
    assert result.events == [(CREATED, "/a/b"), (CHILDREN_CHANGED, "/a")]
    assert a.tree.get_data("/a/b") == (b"hello", Stat(*stat))
    # the parent: created at 1, one child, cversion 1, pzxid of the child's create, data untouched
    assert a.tree.exists("/a") == Stat(1, 1, 100, 100, 0, 1, 0, 0, 0, 1, 2)
    assert a.tree.last_zxid == 2


def test_create_with_parents_creates_each_first_with_events_in_order() -> None:
    a = Applier()
    result = a.apply(create("/x/y/z", b"d", parents=("/x", "/x/y")))
    assert result.result[0] == "/x/y/z"
    assert result.events == [
        (CREATED, "/x"),
        (CHILDREN_CHANGED, "/"),
        (CREATED, "/x/y"),
        (CHILDREN_CHANGED, "/x"),
        (CREATED, "/x/y/z"),
        (CHILDREN_CHANGED, "/x/y"),
    ]
    for parent in ("/x", "/x/y"):
        node = a.tree.get_node(parent)
        assert node is not None
        assert (node.data, node.mode, node.num_children, node.cversion, node.czxid) == (
            b"",
            CreateMode.PERSISTENT,
            1,
            1,
            1,
        )


def test_set_data_replaces_data_and_bumps_version_mzxid_mtime_only() -> None:
    a = Applier()
    a.apply(create("/a", b"one"), time_ms=100)
    result = a.apply(SetDataTxn(path="/a", data=b"three"), time_ms=300)
    assert result.result == [1, 2, 100, 300, 1, 0, 0, 0, 5, 0, 1]
    assert result.events == [(DATA_CHANGED, "/a")]
    a.apply(SetDataTxn(path="/a", data=b""), time_ms=400)
    data, stat = a.tree.get_data("/a")
    assert (data, stat.version, stat.mzxid, stat.mtime, stat.czxid, stat.ctime) == (b"", 2, 3, 400, 1, 100)


def test_delete_removes_node_and_updates_parent() -> None:
    a = Applier()
    a.apply(create("/a"))
    a.apply(create("/a/b"))
    result = a.apply(DeleteTxn(path="/a/b"))
    assert (result.error, result.result) == (0, None)
    assert result.events == [(DELETED, "/a/b"), (CHILDREN_CHANGED, "/a")]
    assert a.tree.get_node("/a/b") is None
    stat = a.tree.exists("/a")
    assert stat is not None
    assert (stat.num_children, stat.cversion, stat.pzxid) == (0, 2, 3)
    assert a.tree.get_children("/a")[0] == []
    assert a.tree.child_names("/a") == set()


def test_reads_of_a_missing_node_raise_no_node() -> None:
    tree = DataTree()
    assert tree.exists("/nope") is None
    assert tree.get_node("/nope") is None
    with pytest.raises(NoNodeError):
        tree.get_data("/nope")
    with pytest.raises(NoNodeError):
        tree.get_children("/nope")
    assert tree.child_names("/nope") == set()


def test_get_children_sorts_names_and_child_names_is_live() -> None:
    a = Applier()
    a.apply(create("/p"))
    for name in ("c", "a", "b"):
        a.apply(create(f"/p/{name}"))
    live = a.tree.child_names("/p")
    assert a.tree.get_children("/p")[0] == ["a", "b", "c"]
    a.apply(create("/p/d"))
    assert "d" in live


def test_error_txn_changes_nothing_but_last_zxid() -> None:
    a = Applier()
    before = a.tree.digest()
    result = a.apply(ErrorTxn(code=NoNodeError.code))
    assert (result.error, result.result, result.events) == (NoNodeError.code, None, [])
    assert a.tree.last_zxid == 1
    after = DataTree()
    after.last_zxid = 1
    assert a.tree.digest() == after.digest() != before


def test_failed_multi_answers_ok_with_per_op_codes() -> None:
    a = Applier()
    result = a.apply(ErrorTxn(code=NoNodeError.code, multi_codes=(0, NoNodeError.code, -2)))
    assert (result.error, result.result, result.events) == (0, [False, [0, -101, -2]], [])


def test_multi_applies_ops_in_order_with_one_zxid_and_concatenated_events() -> None:
    a = Applier()
    result = a.apply(
        MultiTxn(
            ops=(
                create("/m", b"1"),
                SetDataTxn(path="/m", data=b"22"),
                CheckTxn(path="/m"),
                create("/m/k"),
                DeleteTxn(path="/m/k"),
            )
        ),
        time_ms=50,
    )
    assert result.error == 0
    assert result.result == [
        True,
        [
            ["/m", [1, 1, 50, 50, 0, 0, 0, 0, 1, 0, 1]],
            [1, 1, 50, 50, 1, 0, 0, 0, 2, 0, 1],
            None,
            ["/m/k", [1, 1, 50, 50, 0, 0, 0, 0, 0, 0, 1]],
            None,
        ],
    ]
    assert result.events == [
        (CREATED, "/m"),
        (CHILDREN_CHANGED, "/"),
        (DATA_CHANGED, "/m"),
        (CREATED, "/m/k"),
        (CHILDREN_CHANGED, "/m"),
        (DELETED, "/m/k"),
        (CHILDREN_CHANGED, "/m"),
    ]
    assert a.tree.exists("/m") == Stat(1, 1, 50, 50, 1, 2, 0, 0, 2, 0, 1)


def test_apply_refuses_a_zxid_that_does_not_grow() -> None:
    tree = DataTree()
    tree.apply(Txn(zxid=5, time_ms=0, session_id=0, xid=0, body=create("/a")))
    with pytest.raises(AssertionError):
        tree.apply(Txn(zxid=5, time_ms=0, session_id=0, xid=0, body=create("/b")))
    assert tree.get_node("/b") is None


def test_session_is_created_with_its_zxid_as_id() -> None:
    a = Applier()
    a.apply(create("/a"))
    result = a.apply(CreateSessionTxn(timeout_ms=4_000, password=b"secret"))
    assert result.result == 2
    record = a.tree.sessions[2]
    assert (record.session_id, record.timeout_ms, record.password) == (2, 4_000, b"secret")


def test_close_session_deletes_exactly_its_ephemerals_in_sorted_order() -> None:
    a = Applier()
    mine = a.apply(CreateSessionTxn(timeout_ms=1, password=b"")).result
    other = a.apply(CreateSessionTxn(timeout_ms=1, password=b"")).result
    a.apply(create("/locks"))
    a.apply(create("/locks/b", mode=CreateMode.EPHEMERAL, ephemeral_owner=mine))
    a.apply(create("/locks/a", mode=CreateMode.EPHEMERAL, ephemeral_owner=mine))
    a.apply(create("/z", mode=CreateMode.EPHEMERAL, ephemeral_owner=mine))
    a.apply(create("/locks/c", mode=CreateMode.EPHEMERAL, ephemeral_owner=other))
    assert a.tree.ephemerals(mine) == ["/locks/a", "/locks/b", "/z"]
    result = a.apply(CloseSessionTxn(session_id=mine))
    assert result.events == [
        (DELETED, "/locks/a"),
        (CHILDREN_CHANGED, "/locks"),
        (DELETED, "/locks/b"),
        (CHILDREN_CHANGED, "/locks"),
        (DELETED, "/z"),
        (CHILDREN_CHANGED, "/"),
    ]
    assert mine not in a.tree.sessions and other in a.tree.sessions
    assert a.tree.ephemerals(mine) == []
    assert a.tree.get_children("/locks")[0] == ["c"]
    assert a.tree.ephemerals(other) == ["/locks/c"]


def test_deleting_an_ephemeral_removes_it_from_the_session_index() -> None:
    a = Applier()
    session = a.apply(CreateSessionTxn(timeout_ms=1, password=b"")).result
    a.apply(create("/e", mode=CreateMode.EPHEMERAL, ephemeral_owner=session))
    a.apply(DeleteTxn(path="/e"))
    assert a.tree.ephemerals(session) == []
    result = a.apply(CloseSessionTxn(session_id=session))
    assert result.events == []


def test_container_is_a_candidate_only_after_it_had_a_child_and_is_empty() -> None:
    a = Applier()
    a.apply(create("/c", mode=CreateMode.CONTAINER))
    assert a.tree.cleanup_candidates(10**12) == []  # never used: kept
    a.apply(create("/c/x"))
    assert a.tree.cleanup_candidates(10**12) == []  # has a child
    a.apply(DeleteTxn(path="/c/x"))
    assert a.tree.cleanup_candidates(0) == ["/c"]  # time does not matter for containers
    a.apply(DeleteTxn(path="/c"))
    assert a.tree.cleanup_candidates(10**12) == []


def test_ttl_node_is_a_candidate_once_mtime_plus_ttl_has_passed_and_it_is_empty() -> None:
    a = Applier()
    a.apply(create("/t", mode=CreateMode.PERSISTENT_WITH_TTL, ttl_ms=500), time_ms=1_000)
    a.apply(create("/s", mode=CreateMode.PERSISTENT_SEQUENTIAL_WITH_TTL, ttl_ms=100), time_ms=1_000)
    assert a.tree.cleanup_candidates(1_099) == []
    assert a.tree.cleanup_candidates(1_100) == ["/s"]
    assert a.tree.cleanup_candidates(1_500) == ["/s", "/t"]
    a.apply(SetDataTxn(path="/t", data=b"touch"), time_ms=1_400)  # a write restarts the clock
    assert a.tree.cleanup_candidates(1_500) == ["/s"]
    a.apply(create("/t/child"), time_ms=1_400)
    assert a.tree.cleanup_candidates(10**12) == ["/s"]


def test_image_is_unaffected_by_later_changes() -> None:
    a = Applier()
    a.apply(create("/a", b"old"))
    a.apply(CreateSessionTxn(timeout_ms=1, password=b""))
    image = a.tree.image()
    frozen = DataTree.serialize_image(image)
    a.apply(SetDataTxn(path="/a", data=b"new"))
    a.apply(create("/b"))
    a.apply(CloseSessionTxn(session_id=2))
    assert image.last_zxid == 2
    assert image.nodes["/a"].data == b"old"
    assert "/b" not in image.nodes
    assert 2 in image.sessions
    assert DataTree.serialize_image(image) == frozen


def build_sample(applier: Applier) -> None:
    s1 = applier.apply(CreateSessionTxn(timeout_ms=3_000, password=b"p1")).result
    applier.apply(CreateSessionTxn(timeout_ms=5_000, password=b"p2"))
    applier.apply(create("/app/cfg", b"\x00\xff", parents=("/app",)), time_ms=7)
    applier.apply(create("/app/e", mode=CreateMode.EPHEMERAL, ephemeral_owner=s1))
    applier.apply(create("/box", mode=CreateMode.CONTAINER))
    applier.apply(create("/box/x"))
    applier.apply(DeleteTxn(path="/box/x"))
    applier.apply(create("/ttl", mode=CreateMode.PERSISTENT_WITH_TTL, ttl_ms=10), time_ms=20)
    applier.apply(SetDataTxn(path="/app/cfg", data=b"v2"), time_ms=9)


def test_equal_txns_give_byte_identical_images_and_a_faithful_round_trip() -> None:
    first, second = Applier(), Applier()
    build_sample(first)
    build_sample(second)
    data = DataTree.serialize_image(first.tree.image())
    assert data == DataTree.serialize_image(second.tree.image())
    restored = DataTree.from_bytes(data)
    assert restored.digest() == first.tree.digest()
    assert DataTree.serialize_image(restored.image()) == data
    assert restored.nodes == first.tree.nodes
    assert all(type(node) is Node and type(node.mode) is int for node in restored.nodes.values())
    assert all(type(node.mode) is int for node in first.tree.nodes.values())
    # the derived indexes are rebuilt, not just the nodes
    assert restored.get_children("/") == first.tree.get_children("/")
    assert restored.ephemerals(1) == ["/app/e"]
    assert restored.cleanup_candidates(30) == ["/box", "/ttl"]
    assert restored.sessions == first.tree.sessions
    # and the restored tree keeps applying like the original
    first.apply(CloseSessionTxn(session_id=1))
    again = Applier(restored)
    again.apply(CloseSessionTxn(session_id=1))
    assert again.tree.digest() == first.tree.digest()


def test_image_bytes_do_not_depend_on_dict_order() -> None:
    a = Applier()
    build_sample(a)
    image = a.tree.image()
    shuffled = TreeImage(image.last_zxid, dict(reversed(image.nodes.items())), dict(reversed(image.sessions.items())))
    assert list(shuffled.nodes) != list(image.nodes)
    assert DataTree.serialize_image(shuffled) == DataTree.serialize_image(image)


def test_digest_tells_trees_apart_by_any_field() -> None:
    first, second = Applier(), Applier()
    first.apply(create("/a"), time_ms=1)
    second.apply(create("/a"), time_ms=2)
    assert first.tree.digest() != second.tree.digest()


def test_from_bytes_rejects_an_inconsistent_image() -> None:
    a = Applier()
    a.apply(create("/a"))
    image = a.tree.image()
    image.nodes["/a"] = image.nodes["/a"].with_child_added(1)  # claims a child it does not have
    with pytest.raises(ValueError, match="inconsistent"):
        DataTree.from_bytes(DataTree.serialize_image(image))
    with pytest.raises(ValueError):
        DataTree.from_bytes(b"\x83\x01\x02\x03")


# --- snapshot images in pieces (a SNAP streams them) --------------------------------


def big_sample(nodes: int = 9_000) -> Applier:
    """More than two chunks of nodes (chunks hold 4096), plus the kinds of build_sample."""
    a = Applier()
    build_sample(a)
    a.apply(create("/many"))
    for index in range(nodes):
        a.apply(create(f"/many/n{index:05d}", bytes([index % 256]) * (index % 37)))
    return a


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` cut into pieces of the given sizes, cycling through them."""
    pieces, offset, index = [], 0, 0
    while offset < len(data):
        size = sizes[index % len(sizes)]
        pieces.append(data[offset : offset + size])
        offset += size
        index += 1
    return pieces


def test_image_pieces_join_to_the_serialized_image() -> None:
    a = big_sample()
    image = a.tree.image()
    pieces = list(DataTree.image_pieces(image))
    assert b"".join(pieces) == DataTree.serialize_image(image)
    assert len(pieces) == 1 + 3 + 1  # the head, one piece per chunk of 4096 nodes (9,009 nodes), the break
    assert len(list(DataTree.image_pieces(DataTree().image()))) == 3  # a fresh tree: the head, one chunk, the break
    empty = TreeImage(0, {}, {})
    assert b"".join(DataTree.image_pieces(empty)) == DataTree.serialize_image(empty)
    assert len(list(DataTree.image_pieces(empty))) == 2  # the head, the break


def test_image_pieces_are_encoded_only_when_asked_for() -> None:
    a = big_sample()
    image = a.tree.image()
    pieces = DataTree.image_pieces(image)
    first = next(pieces)
    image.nodes["/many/n08900"] = image.nodes["/many/n08900"].with_data(b"later", 99, 99)  # in the last chunk
    rest = list(pieces)
    assert b"later" in rest[-2]
    assert first == next(DataTree.image_pieces(image))


@pytest.mark.parametrize("sizes", [[1], [7], [3, 1000, 1, 65_536, 13, 200_000], [1 << 30]], ids=str)
def test_from_pieces_of_any_sizes_rebuilds_the_same_tree(sizes: list[int]) -> None:
    a = big_sample()
    data = DataTree.serialize_image(a.tree.image())
    restored = DataTree.from_pieces(iter(split(data, sizes)))
    assert restored.digest() == a.tree.digest()
    assert restored.nodes == a.tree.nodes
    assert restored.sessions == a.tree.sessions
    assert restored.get_children("/many") == a.tree.get_children("/many")
    assert restored.ephemerals(1) == ["/app/e"]
    assert restored.cleanup_candidates(30) == ["/box", "/ttl"]


def test_from_pieces_with_random_sizes_and_empty_pieces() -> None:
    a = big_sample(1_200)
    data = DataTree.serialize_image(a.tree.image())
    rng = random.Random(7)
    for _ in range(5):
        sizes = [rng.choice([0, 1, 2, rng.randrange(1, 5_000), rng.randrange(1, 100_000)]) for _ in range(50)]
        pieces = split(data, [size or 1 for size in sizes])
        pieces = [piece for pair in zip(pieces, [b""] * len(pieces), strict=True) for piece in pair]
        assert DataTree.from_pieces(pieces).digest() == a.tree.digest()


def test_from_pieces_straight_from_image_pieces() -> None:
    a = big_sample()
    assert DataTree.from_pieces(DataTree.image_pieces(a.tree.image())).digest() == a.tree.digest()
    fresh = DataTree()
    assert DataTree.from_pieces(DataTree.image_pieces(fresh.image())).digest() == fresh.digest()


@pytest.mark.parametrize("cut", [0, 1, 2, 40, -500, -1])
def test_from_pieces_rejects_a_truncated_image(cut: int) -> None:
    data = DataTree.serialize_image(big_sample().tree.image())
    with pytest.raises(ValueError, match="malformed tree image"):
        DataTree.from_pieces(split(data[:cut], [7]))


@pytest.mark.parametrize("garbage", [b"\x00", b"\x80", b"more bytes"])
def test_from_pieces_and_from_bytes_reject_trailing_bytes(garbage: bytes) -> None:
    data = DataTree.serialize_image(big_sample().tree.image())
    with pytest.raises(ValueError, match="bytes remain after the last"):
        DataTree.from_pieces(split(data + garbage, [1000]))
    with pytest.raises(ValueError, match="bytes remain after the last"):
        DataTree.from_bytes(data + garbage)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "malformed tree image"),
        (b"\x80", "malformed tree image: the image is an empty array"),
        (b"\x01", "malformed tree image: not a CBOR array"),
        (b"\x9f\xff", "malformed tree image: the image is an empty array"),
        (b"\x9c", "malformed tree image: not a well-formed CBOR array head"),
        (b"\x82\x84\x6acoord-tree\x02\x00\x80\xf6", "malformed chunk in tree image: a chunk is not a list"),
        (b"\x82\x84\x6acoord-tree\x02\x00\x80\x81\x61/", "malformed chunk in tree image: a chunk is not a list"),
        (b"\x82\x84\x6acoord-tree\x02\x00\x80\x82\x61/\x01", "malformed chunk in tree image"),
        (b"\x81\x84\x6acoord-tree\x02\x00\x81\x01", "malformed tree image"),
        (b"\x81\x84\x6acoord-tree\x01\x00\x80", "not a tree image of format 3"),
        (b"\x82\x84\x6acoord-tree\x03\x00\x80\xf6", "malformed chunk in tree image"),
        (b"\x81\x84\x6acoord-tree\x02\x00\x80", "tree image has no root"),
    ],
)
def test_from_pieces_rejects_malformed_images(data: bytes, message: str) -> None:
    for pieces in ([data], split(data, [1])):
        with pytest.raises(ValueError, match=message):
            DataTree.from_pieces(pieces)


def _image_with_chunk(chunk: object) -> bytes:
    """A format-3 image of a fresh tree's head followed by ``chunk``."""
    return cbor2.dumps([["coord-tree", 3, 0, []], chunk])


def _root_columns(**changes: bytes) -> list[bytes]:
    """The 13 columns of a chunk holding only a root with no children, with ``changes`` by index."""
    columns = [b"\x00"] * 13
    for index, value in changes.items():
        columns[int(index[1:])] = value
    return columns


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        ([b"/", b""], "not enough values"),
        (["/", b"", _root_columns()], "a chunk is not \\[paths, data, columns\\]"),
        ([b"/", b"", _root_columns()[:12]], "a chunk has 12 columns, not 13"),
        ([b"/", b"", [*_root_columns()[:12], "x"]], "a column is not a byte string"),
        ([b"/", b"", _root_columns(c3=b"\x00\x00\x00")], "a column of 3 bytes for 1 nodes"),
        ([b"/", b"", _root_columns(c0=b"\x05")], "the data lengths add up to 5, the chunk holds 0 bytes"),
        ([b"/", b"", _root_columns(c11=b"\x07")], "a node of mode 7"),
        ([b"/\xff", b"", _root_columns()], "malformed chunk in tree image"),
        ([b"/", b"", _root_columns(c9=b"\x01")], "inconsistent"),
    ],
)
def test_from_pieces_rejects_malformed_column_chunks(chunk: object, message: str) -> None:
    assert DataTree.from_bytes(_image_with_chunk([b"/", b"", _root_columns()])).node_count == 1  # the baseline is valid
    with pytest.raises(ValueError, match=message):
        DataTree.from_bytes(_image_with_chunk(chunk))


def _format_2_image(image: TreeImage) -> bytes:
    """The image as the previous format wrote it: each chunk ``[path, node fields, ...]``."""
    paths = sorted(image.nodes)
    sessions = [[sid, record.timeout_ms, record.password] for sid, record in sorted(image.sessions.items())]
    chunks = [
        [item for path in paths[start : start + 1000] for item in (path, list(image.nodes[path]))]
        for start in range(0, len(paths), 1000)
    ]
    return cbor2.dumps([["coord-tree", 2, image.last_zxid, sessions], *chunks])


def test_images_of_the_previous_format_still_load() -> None:
    a = big_sample(2_500)
    restored = DataTree.from_pieces(split(_format_2_image(a.tree.image()), [4096]))
    assert restored.digest() == a.tree.digest()
    assert restored.nodes == a.tree.nodes
    assert restored.get_children("/many") == a.tree.get_children("/many")
    assert restored.ephemerals(1) == ["/app/e"]
    assert restored.cleanup_candidates(30) == ["/box", "/ttl"]


def test_chunks_are_bounded_by_nodes_and_by_data_bytes() -> None:
    a = Applier()
    a.apply(create("/big"))
    for index in range(5):
        a.apply(create(f"/big/n{index}", bytes(400_000)))  # 2 MB of data: more than one chunk holds
    pieces = list(DataTree.image_pieces(a.tree.image()))
    # the head; then the 8 nodes (2 MB) halve to 4 (0.8 MB) and 4 (1.2 MB), which halves again
    assert len(pieces) == 1 + 3 + 1
    assert all(len(piece) < 900_000 for piece in pieces)
    assert DataTree.from_pieces(pieces).digest() == a.tree.digest()
    huge = Applier()
    huge.apply(create("/one", bytes(3_000_000)))  # a node over the bound goes alone
    pieces = list(DataTree.image_pieces(huge.tree.image()))
    assert len(pieces) == 1 + 3 + 1 and b"/one" in pieces[-2] and len(pieces[-3]) < 1000
    assert DataTree.from_pieces(DataTree.image_pieces(huge.tree.image())).nodes == huge.tree.nodes


def test_the_collector_pauses_while_an_image_loads() -> None:
    """A million new nodes would trigger full collections that walk all of them (1.5 s
    of a 4 s load); loading pauses the cyclic collector and restores it, even on error."""
    data = DataTree.serialize_image(big_sample(100).tree.image())
    seen: list[bool] = []

    def pieces(payload: bytes) -> Iterator[bytes]:
        for start in range(0, len(payload), 1000):
            seen.append(gc.isenabled())
            yield payload[start : start + 1000]

    assert gc.isenabled()
    DataTree.from_pieces(pieces(data))
    assert seen and not any(seen)
    assert gc.isenabled()
    with pytest.raises(ValueError):
        DataTree.from_pieces(pieces(data[:-3]))
    assert gc.isenabled()
    gc.disable()
    try:
        DataTree.from_pieces(pieces(data))
        assert not gc.isenabled()  # left as it was found
    finally:
        gc.enable()


def test_equal_ints_of_a_chunk_are_one_object() -> None:
    """A create stores one zxid as czxid, mzxid and pzxid: loaded, they stay one int object."""
    a = Applier()
    a.apply(create("/a"), time_ms=1_700_000_000_000)
    node = DataTree.from_bytes(DataTree.serialize_image(a.tree.image())).nodes["/a"]
    assert node.czxid == 1 << 40 or node.czxid > 0
    assert node.mzxid is node.czxid and node.pzxid is node.czxid and node.mtime is node.ctime


def test_a_frozen_load_leaves_the_tree_to_the_permanent_generation() -> None:
    """A server's tree lives as long as it does: after a load with ``freeze`` no collection
    walks its nodes again, and garbage made before the load was collected, not frozen."""
    data = DataTree.serialize_image(big_sample(100).tree.image())

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    gc.collect()
    frozen_before = gc.get_freeze_count()
    garbage = Cycle()
    alive = weakref.ref(garbage)
    del garbage
    try:
        with collector_paused(freeze=True):
            tree = DataTree.from_bytes(data)
            assert not gc.isenabled()
        assert gc.isenabled()
        assert alive() is None  # collected before the freeze
        assert gc.get_freeze_count() >= frozen_before + len(tree.nodes)
        assert all(gc.is_tracked(node) for node in tree.nodes.values())
    finally:
        gc.unfreeze()
