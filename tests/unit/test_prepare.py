"""The preparer: ZooKeeper's checks, the pending state, and determinism of the applied result."""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coord.errors import (
    BadArgumentsError,
    BadVersionError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    SessionExpiredError,
)
from coord.prepare import Preparer, _checked_path
from coord.protocol import (
    CheckRequest,
    CreateMode,
    CreateRequest,
    DeleteRequest,
    ExistsRequest,
    MultiRequest,
    SetDataRequest,
    validate_path,
)
from coord.tree import ApplyResult, DataTree
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
    decode_txn,
    encode_txn,
)

BAD_ARGUMENTS = BadArgumentsError.code
NO_NODE = NoNodeError.code
NODE_EXISTS = NodeExistsError.code
BAD_VERSION = BadVersionError.code
NOT_EMPTY = NotEmptyError.code
NO_CHILDREN_FOR_EPHEMERALS = NoChildrenForEphemeralsError.code
SESSION_EXPIRED = SessionExpiredError.code


class Harness:
    """A tree and its preparer; prepared txns queue up until applied, as in a pipeline."""

    def __init__(self, *, data_bytes_max: int = 1024) -> None:
        self.tree = DataTree()
        self.preparer = Preparer(self.tree, data_bytes_max=data_bytes_max)
        self.queue: deque[Txn] = deque()
        self.time_ms = 1_000

    def prep(self, request: Any, *, session_id: int = 0, xid: int = 1) -> Txn:
        txn = self.preparer.prepare(request, session_id=session_id, xid=xid, time_ms=self.time_ms)
        self.queue.append(txn)
        return txn

    def apply_all(self) -> list[ApplyResult]:
        results = []
        while self.queue:
            txn = self.queue.popleft()
            results.append(self.tree.apply(txn))
            self.preparer.applied(txn)
        return results

    def run(self, request: Any, *, session_id: int = 0) -> Txn:
        txn = self.prep(request, session_id=session_id)
        self.apply_all()
        return txn

    def open_session(self) -> int:
        txn = self.preparer.prepare_create_session(timeout_ms=5_000, password=b"pw", time_ms=self.time_ms)
        self.queue.append(txn)
        self.apply_all()
        return txn.zxid


def error_code(txn: Txn) -> int:
    assert isinstance(txn.body, ErrorTxn), txn.body
    return txn.body.code


# --- zxids and the txn envelope ------------------------------------------------------


def test_zxids_start_after_the_tree_and_every_txn_takes_exactly_one() -> None:
    h = Harness()
    h.run(CreateRequest(path="/a"))
    preparer = Preparer(h.tree)
    assert preparer.next_zxid == 2
    ok = preparer.prepare(CreateRequest(path="/b"), session_id=0, xid=7, time_ms=55)
    failed = preparer.prepare(CreateRequest(path="/b"), session_id=0, xid=8, time_ms=56)
    session = preparer.prepare_create_session(timeout_ms=1, password=b"", time_ms=57)
    closed = preparer.prepare_close_session(session.zxid, session_id=session.zxid, xid=9, time_ms=58)
    assert [ok.zxid, failed.zxid, session.zxid, closed.zxid] == [2, 3, 4, 5]
    assert (ok.session_id, ok.xid, ok.time_ms) == (0, 7, 55)
    assert error_code(failed) == NODE_EXISTS
    assert session.session_id == session.zxid
    assert session.body == CreateSessionTxn(timeout_ms=1, password=b"")
    assert (closed.session_id, closed.xid) == (session.zxid, 9)
    assert preparer.next_zxid == 6
    assert preparer.pending_count == 4


# --- create ---------------------------------------------------------------------------


def test_create_produces_the_txn_and_apply_gives_its_stat() -> None:
    h = Harness()
    txn = h.prep(CreateRequest(path="/a", data=b"x"))
    assert txn.body == CreateTxn(path="/a", data=b"x", mode=CreateMode.PERSISTENT)
    (result,) = h.apply_all()
    assert result.result == ["/a", [1, 1, 1_000, 1_000, 0, 0, 0, 0, 1, 0, 1]]


def test_create_checks_in_zookeepers_order() -> None:
    h = Harness(data_bytes_max=4)
    session = h.open_session()
    h.run(CreateRequest(path="/p"))
    h.run(CreateRequest(path="/e", mode=CreateMode.EPHEMERAL), session_id=session)
    cases = [
        (CreateRequest(path="no-slash"), BAD_ARGUMENTS),
        (CreateRequest(path="/p/"), BAD_ARGUMENTS),
        (CreateRequest(path="/p", data=b"12345"), BAD_ARGUMENTS),
        (CreateRequest(path="/coord"), BAD_ARGUMENTS),
        (CreateRequest(path="/coord/x"), BAD_ARGUMENTS),
        (CreateRequest(path="/coord/", mode=CreateMode.PERSISTENT_SEQUENTIAL), BAD_ARGUMENTS),
        (CreateRequest(path="/t", mode=CreateMode.PERSISTENT_WITH_TTL), BAD_ARGUMENTS),
        (CreateRequest(path="/t", ttl_ms=10), BAD_ARGUMENTS),
        (CreateRequest(path="/t", mode=CreateMode.CONTAINER, ttl_ms=10), BAD_ARGUMENTS),
        (CreateRequest(path="/x/y"), NO_NODE),
        (CreateRequest(path="/p"), NODE_EXISTS),
        (CreateRequest(path="/"), NODE_EXISTS),
        (CreateRequest(path="/e/child"), NO_CHILDREN_FOR_EPHEMERALS),
        (CreateRequest(path="/e/child/deeper", makepath=True), NO_CHILDREN_FOR_EPHEMERALS),
    ]
    for request, code in cases:
        assert error_code(h.run(request, session_id=session)) == code, request
    # ephemerals need a session; the server's own session 0 has none
    assert error_code(h.run(CreateRequest(path="/e0", mode=CreateMode.EPHEMERAL))) == BAD_ARGUMENTS
    # the data limit is inclusive, and "/coord0..." is outside the reserved subtree
    assert isinstance(h.run(CreateRequest(path="/d", data=b"1234")).body, CreateTxn)
    txn = h.run(CreateRequest(path="/coord", mode=CreateMode.PERSISTENT_SEQUENTIAL))
    assert isinstance(txn.body, CreateTxn) and txn.body.path.startswith("/coord0")


def test_create_of_each_kind_records_owner_mode_and_ttl() -> None:
    h = Harness()
    session = h.open_session()
    ephemeral = h.run(CreateRequest(path="/e", mode=CreateMode.EPHEMERAL), session_id=session).body
    ttl = h.run(CreateRequest(path="/t", mode=CreateMode.PERSISTENT_WITH_TTL, ttl_ms=30), session_id=session).body
    container = h.run(CreateRequest(path="/c", mode=CreateMode.CONTAINER), session_id=session).body
    assert ephemeral == CreateTxn(path="/e", data=b"", mode=CreateMode.EPHEMERAL, ephemeral_owner=session)
    assert ttl == CreateTxn(path="/t", data=b"", mode=CreateMode.PERSISTENT_WITH_TTL, ttl_ms=30)
    assert container == CreateTxn(path="/c", data=b"", mode=CreateMode.CONTAINER)
    stat = h.tree.exists("/e")
    assert stat is not None and stat.ephemeral_owner == session
    assert h.tree.exists("/t").ephemeral_owner == 0  # type: ignore[union-attr]


def test_makepath_adds_missing_parents_outermost_first() -> None:
    h = Harness()
    h.run(CreateRequest(path="/a"))
    txn = h.run(CreateRequest(path="/a/b/c/d", data=b"v", makepath=True))
    assert txn.body == CreateTxn(path="/a/b/c/d", data=b"v", mode=CreateMode.PERSISTENT, parents=("/a/b", "/a/b/c"))
    assert h.tree.get_data("/a/b/c/d")[0] == b"v"
    assert h.tree.get_data("/a/b")[0] == b""
    # with the parent there, makepath is a plain create (and an existing node is still an error)
    assert h.run(CreateRequest(path="/a/b/x", makepath=True)).body.parents == ()  # type: ignore[union-attr]
    assert error_code(h.run(CreateRequest(path="/a/b/x", makepath=True))) == NODE_EXISTS


def test_sequential_names_come_from_the_parent_cversion_and_continue_after_deletes() -> None:
    h = Harness()
    h.run(CreateRequest(path="/q"))
    names = []
    for _ in range(3):
        names.append(h.run(CreateRequest(path="/q/item-", mode=CreateMode.PERSISTENT_SEQUENTIAL)).body.path)  # type: ignore[union-attr]
    assert names == ["/q/item-0000000000", "/q/item-0000000001", "/q/item-0000000002"]
    h.run(DeleteRequest(path="/q/item-0000000002"))  # a delete bumps cversion too
    h.run(CreateRequest(path="/q/plain"))  # so does any create
    txn = h.run(CreateRequest(path="/q/", mode=CreateMode.PERSISTENT_SEQUENTIAL))
    assert txn.body.path == "/q/0000000005"  # type: ignore[union-attr]


def test_sequential_create_under_makepath_parents_starts_at_zero() -> None:
    h = Harness()
    txn = h.run(CreateRequest(path="/new/parent/n-", mode=CreateMode.PERSISTENT_SEQUENTIAL, makepath=True))
    assert txn.body.path == "/new/parent/n-0000000000"  # type: ignore[union-attr]
    assert h.tree.get_children("/new/parent")[0] == ["n-0000000000"]


# --- delete, set, check ---------------------------------------------------------------


def test_delete_checks_existence_version_then_children() -> None:
    h = Harness()
    h.run(CreateRequest(path="/a"))
    h.run(CreateRequest(path="/a/b"))
    h.run(SetDataRequest(path="/a", data=b"1"))
    assert error_code(h.run(DeleteRequest(path="/zz"))) == NO_NODE
    assert error_code(h.run(DeleteRequest(path="/a", version=0))) == BAD_VERSION
    assert error_code(h.run(DeleteRequest(path="/a", version=1))) == NOT_EMPTY
    assert error_code(h.run(DeleteRequest(path="/"))) == BAD_ARGUMENTS
    assert error_code(h.run(DeleteRequest(path="/coord"))) == BAD_ARGUMENTS
    assert error_code(h.run(DeleteRequest(path="bad"))) == BAD_ARGUMENTS
    assert h.run(DeleteRequest(path="/a/b", version=0)).body == DeleteTxn(path="/a/b")
    assert h.run(DeleteRequest(path="/a", version=-1)).body == DeleteTxn(path="/a")
    assert h.tree.get_node("/a") is None


def test_set_data_checks_existence_and_version() -> None:
    h = Harness(data_bytes_max=3)
    h.run(CreateRequest(path="/a"))
    assert error_code(h.run(SetDataRequest(path="/b", data=b""))) == NO_NODE
    assert error_code(h.run(SetDataRequest(path="/a", data=b"", version=3))) == BAD_VERSION
    assert error_code(h.run(SetDataRequest(path="/a", data=b"1234"))) == BAD_ARGUMENTS
    assert error_code(h.run(SetDataRequest(path="/coord", data=b""))) == BAD_ARGUMENTS
    assert h.run(SetDataRequest(path="/a", data=b"x", version=0)).body == SetDataTxn(path="/a", data=b"x")
    assert h.run(SetDataRequest(path="/a", data=b"y", version=1)).body == SetDataTxn(path="/a", data=b"y")
    assert h.tree.exists("/a").version == 2  # type: ignore[union-attr]


def test_writes_from_a_dead_session_are_answered_session_expired() -> None:
    h = Harness()
    assert error_code(h.run(CreateRequest(path="/a"), session_id=12345)) == SESSION_EXPIRED
    session = h.open_session()
    h.prep(CreateRequest(path="/e", mode=CreateMode.EPHEMERAL), session_id=session)
    h.queue.append(h.preparer.prepare_close_session(session, session_id=session, xid=2, time_ms=1))
    # prepared after the close, before anything is applied: the session is already gone
    late = h.prep(CreateRequest(path="/e2", mode=CreateMode.EPHEMERAL), session_id=session)
    multi = h.prep(MultiRequest(ops=(CreateRequest(path="/m"),)), session_id=session)
    assert error_code(late) == SESSION_EXPIRED
    assert multi.body == ErrorTxn(code=SESSION_EXPIRED, message=f"session {session:#x} has expired")
    h.apply_all()
    assert h.tree.get_node("/e") is None and h.tree.get_node("/e2") is None
    assert session not in h.tree.sessions


# --- multi ------------------------------------------------------------------------------


def test_multi_ops_see_earlier_ops_of_the_same_multi() -> None:
    h = Harness()
    txn = h.prep(
        MultiRequest(
            ops=(
                CreateRequest(path="/m", data=b"a"),
                SetDataRequest(path="/m", data=b"b", version=0),
                CheckRequest(path="/m", version=1),
                CreateRequest(path="/m/s-", mode=CreateMode.PERSISTENT_SEQUENTIAL),
                CreateRequest(path="/m/s-", mode=CreateMode.PERSISTENT_SEQUENTIAL),
                DeleteRequest(path="/m/s-0000000000"),
            )
        )
    )
    assert txn.body == MultiTxn(
        ops=(
            CreateTxn(path="/m", data=b"a", mode=CreateMode.PERSISTENT),
            SetDataTxn(path="/m", data=b"b"),
            CheckTxn(path="/m"),
            CreateTxn(path="/m/s-0000000000", data=b"", mode=CreateMode.PERSISTENT_SEQUENTIAL),
            CreateTxn(path="/m/s-0000000001", data=b"", mode=CreateMode.PERSISTENT_SEQUENTIAL),
            DeleteTxn(path="/m/s-0000000000"),
        )
    )
    (result,) = h.apply_all()
    assert result.error == 0 and result.result[0] is True
    assert h.tree.get_children("/m")[0] == ["s-0000000001"]
    assert h.tree.get_data("/m")[0] == b"b"


def test_failed_multi_reports_each_ops_code_and_leaves_no_trace() -> None:
    h = Harness()
    h.run(CreateRequest(path="/x"))
    txn = h.prep(
        MultiRequest(
            ops=(
                CreateRequest(path="/new"),
                SetDataRequest(path="/x", data=b"v"),
                CheckRequest(path="/x", version=5),
                DeleteRequest(path="/x"),
            )
        )
    )
    assert txn.body == ErrorTxn(code=BAD_VERSION, multi_codes=(0, 0, BAD_VERSION, -2))
    # the pending view does not hold the rolled back ops: /new can be created, /x is still at version 0
    assert isinstance(h.prep(CreateRequest(path="/new")).body, CreateTxn)
    assert isinstance(h.prep(SetDataRequest(path="/x", data=b"w", version=0)).body, SetDataTxn)
    results = h.apply_all()
    assert (results[0].error, results[0].result) == (0, [False, [0, 0, BAD_VERSION, -2]])
    assert h.tree.get_data("/x")[0] == b"w"


def test_multi_failing_on_its_first_or_last_op() -> None:
    h = Harness()
    first = h.run(MultiRequest(ops=(DeleteRequest(path="/none"), CreateRequest(path="/a"))))
    assert first.body == ErrorTxn(code=NO_NODE, multi_codes=(NO_NODE, -2))
    last = h.run(MultiRequest(ops=(CreateRequest(path="/a"), CreateRequest(path="/a"))))
    assert last.body == ErrorTxn(code=NODE_EXISTS, multi_codes=(0, NODE_EXISTS))
    check = h.run(MultiRequest(ops=(CheckRequest(path="/none", version=-1),)))
    assert check.body == ErrorTxn(code=NO_NODE, multi_codes=(NO_NODE,))
    assert h.tree.get_node("/a") is None


def test_empty_multi_is_a_valid_multi() -> None:
    h = Harness()
    txn = h.prep(MultiRequest(ops=()))
    assert txn.body == MultiTxn(ops=())
    (result,) = h.apply_all()
    assert (result.error, result.result, result.events) == (0, [True, []], [])


# --- the pending state ------------------------------------------------------------------


def test_second_pending_create_of_a_path_is_node_exists() -> None:
    h = Harness()
    first = h.prep(CreateRequest(path="/a"))
    second = h.prep(CreateRequest(path="/a"))
    assert isinstance(first.body, CreateTxn)
    assert error_code(second) == NODE_EXISTS
    results = h.apply_all()
    assert [r.error for r in results] == [0, NODE_EXISTS]


def test_pending_children_block_deletion_and_pending_parents_allow_creation() -> None:
    h = Harness()
    h.prep(CreateRequest(path="/p"))
    assert isinstance(h.prep(CreateRequest(path="/p/c")).body, CreateTxn)
    assert error_code(h.prep(DeleteRequest(path="/p"))) == NOT_EMPTY
    assert error_code(h.prep(SetDataRequest(path="/p", data=b"", version=1))) == BAD_VERSION
    h.prep(SetDataRequest(path="/p", data=b"", version=0))
    assert isinstance(h.prep(SetDataRequest(path="/p", data=b"", version=1)).body, SetDataTxn)
    h.apply_all()
    assert h.tree.exists("/p").version == 2  # type: ignore[union-attr]


def test_delete_then_create_of_a_path_back_to_back() -> None:
    h = Harness()
    h.run(CreateRequest(path="/a", data=b"old"))
    assert h.prep(DeleteRequest(path="/a")).body == DeleteTxn(path="/a")
    assert error_code(h.prep(DeleteRequest(path="/a"))) == NO_NODE
    assert isinstance(h.prep(CreateRequest(path="/a", data=b"new")).body, CreateTxn)
    assert [result.error for result in h.apply_all()] == [0, NO_NODE, 0]
    data, stat = h.tree.get_data("/a")
    assert (data, stat.czxid) == (b"new", 4)


def test_pending_sequential_creates_get_distinct_names() -> None:
    h = Harness()
    h.run(CreateRequest(path="/q"))
    paths = [
        h.prep(CreateRequest(path="/q/n-", mode=CreateMode.PERSISTENT_SEQUENTIAL)).body.path  # type: ignore[union-attr]
        for _ in range(3)
    ]
    assert paths == ["/q/n-0000000000", "/q/n-0000000001", "/q/n-0000000002"]
    assert [r.error for r in h.apply_all()] == [0, 0, 0]


def test_reset_drops_pending_changes_and_restores_the_applied_view() -> None:
    h = Harness()
    h.run(CreateRequest(path="/kept"))
    session = h.open_session()
    h.prep(CreateRequest(path="/lost"))
    h.prep(DeleteRequest(path="/kept"))
    h.queue.append(h.preparer.prepare_close_session(session, session_id=0, xid=0, time_ms=1))
    h.queue.append(h.preparer.prepare_create_session(timeout_ms=1, password=b"", time_ms=1))
    assert h.preparer.pending_count == 4
    h.queue.clear()  # the disk refused them: they will never be applied
    h.preparer.reset(100)
    assert h.preparer.pending_count == 0
    assert h.preparer.next_zxid == 100
    assert h.preparer.node("/lost") is None and h.preparer.node("/kept") is not None
    assert h.preparer.session_exists(session) and not h.preparer.session_exists(6)
    again = h.run(CreateRequest(path="/lost"))
    assert again.zxid == 100 and isinstance(again.body, CreateTxn)
    assert error_code(h.run(CreateRequest(path="/kept"))) == NODE_EXISTS


def test_applied_drops_only_the_records_it_covers() -> None:
    h = Harness()
    first = h.prep(CreateRequest(path="/a", data=b"1"))
    second = h.prep(SetDataRequest(path="/a", data=b"2"))
    third = h.prep(CreateRequest(path="/b"))
    assert h.preparer.pending_count == 3
    h.tree.apply(first)
    h.preparer.applied(first)
    assert h.preparer.pending_count == 2
    assert h.preparer.node("/a").data == b"2"  # type: ignore[union-attr]  # the newer record stays
    assert h.preparer._changes["/a"][0] == second.zxid
    h.tree.apply(second)
    h.tree.apply(third)
    h.preparer.applied(third)  # covers the second as well
    assert h.preparer.pending_count == 0
    assert h.preparer._changes == {} and h.preparer._ephemerals == {} and h.preparer._sessions == {}
    assert h.preparer.node("/a") == h.tree.get_node("/a")


# --- sessions -----------------------------------------------------------------------------


def test_pending_session_can_write_before_its_creation_is_applied() -> None:
    h = Harness()
    txn = h.preparer.prepare_create_session(timeout_ms=1, password=b"", time_ms=1)
    h.queue.append(txn)
    assert h.preparer.session_exists(txn.zxid) and txn.zxid not in h.tree.sessions
    create = h.prep(CreateRequest(path="/e", mode=CreateMode.EPHEMERAL), session_id=txn.zxid)
    assert isinstance(create.body, CreateTxn)
    h.apply_all()
    assert h.tree.ephemerals(txn.zxid) == ["/e"]


def test_close_session_deletes_exactly_the_pending_views_ephemerals() -> None:
    h = Harness()
    mine, other = h.open_session(), h.open_session()
    for path in ("/applied", "/deleted-later", "/taken-over"):
        h.run(CreateRequest(path=path, mode=CreateMode.EPHEMERAL), session_id=mine)
    h.run(CreateRequest(path="/theirs", mode=CreateMode.EPHEMERAL), session_id=other)
    h.prep(CreateRequest(path="/pending", mode=CreateMode.EPHEMERAL), session_id=mine)
    h.prep(DeleteRequest(path="/deleted-later"), session_id=mine)
    h.prep(DeleteRequest(path="/taken-over"), session_id=mine)
    h.prep(CreateRequest(path="/taken-over", mode=CreateMode.EPHEMERAL), session_id=other)
    h.prep(CreateRequest(path="/created-and-gone", mode=CreateMode.EPHEMERAL), session_id=mine)
    h.prep(DeleteRequest(path="/created-and-gone"), session_id=other)
    close = h.preparer.prepare_close_session(mine, session_id=mine, xid=3, time_ms=1)
    h.queue.append(close)
    assert close.body == CloseSessionTxn(session_id=mine)
    assert h.preparer._pending_ephemerals(mine) == []
    assert not h.preparer.session_exists(mine)
    # the path it once owned and another session took over (both pending) survives the close
    taken_over = h.preparer.node("/taken-over")
    assert taken_over is not None and taken_over.ephemeral_owner == other
    # after the close, in the pending view, a new node can take a deleted ephemeral's path
    assert isinstance(h.prep(CreateRequest(path="/pending")).body, CreateTxn)
    results = h.apply_all()
    assert results[-2].events[0::2] == [(2, "/applied"), (2, "/pending")]
    assert h.tree.get_node("/pending").ephemeral_owner == 0  # type: ignore[union-attr]
    assert h.tree.ephemerals(other) == ["/taken-over", "/theirs"]
    assert mine not in h.tree.sessions


def test_closing_an_unknown_or_closed_session_is_session_expired() -> None:
    h = Harness()
    assert error_code(h.preparer.prepare_close_session(77, session_id=0, xid=0, time_ms=1)) == SESSION_EXPIRED
    session = h.open_session()
    first = h.preparer.prepare_close_session(session, session_id=0, xid=0, time_ms=1)
    second = h.preparer.prepare_close_session(session, session_id=0, xid=0, time_ms=1)
    assert isinstance(first.body, CloseSessionTxn)
    assert error_code(second) == SESSION_EXPIRED
    for txn in (first, second):
        h.tree.apply(txn)
        h.preparer.applied(txn)
    assert not h.preparer.session_exists(session)


# --- cleanup ----------------------------------------------------------------------------


def test_cleanup_of_a_container_only_once_used_and_empty_in_the_pending_view() -> None:
    h = Harness()
    h.run(CreateRequest(path="/c", mode=CreateMode.CONTAINER))
    zxid = h.preparer.next_zxid
    assert h.preparer.prepare_cleanup("/c", time_ms=10**12) is None  # never had a child
    assert h.preparer.prepare_cleanup("/missing", time_ms=0) is None
    assert h.preparer.next_zxid == zxid  # no zxid consumed
    h.run(CreateRequest(path="/c/x"))
    h.run(DeleteRequest(path="/c/x"))
    assert h.tree.cleanup_candidates(0) == ["/c"]
    h.prep(CreateRequest(path="/c/y"))  # a pending child makes it not due any more
    assert h.preparer.prepare_cleanup("/c", time_ms=0) is None
    h.prep(DeleteRequest(path="/c/y"))
    txn = h.preparer.prepare_cleanup("/c", time_ms=5)
    assert txn is not None and txn.body == DeleteTxn(path="/c") and (txn.session_id, txn.xid) == (0, 0)
    h.queue.append(txn)
    assert h.preparer.prepare_cleanup("/c", time_ms=5) is None  # already pending
    h.apply_all()
    assert h.tree.get_node("/c") is None


def test_cleanup_of_a_ttl_node_only_once_expired_by_pending_mtime() -> None:
    h = Harness()
    h.run(CreateRequest(path="/t", mode=CreateMode.PERSISTENT_WITH_TTL, ttl_ms=100))  # mtime 1000
    assert h.preparer.prepare_cleanup("/t", time_ms=1_099) is None
    h.time_ms = 1_050
    h.prep(SetDataRequest(path="/t", data=b"touch"))  # pending: mtime 1050
    assert h.preparer.prepare_cleanup("/t", time_ms=1_100) is None
    txn = h.preparer.prepare_cleanup("/t", time_ms=1_150)
    assert txn is not None and txn.body == DeleteTxn(path="/t")
    h.queue.append(txn)
    h.apply_all()
    assert h.tree.get_node("/t") is None


# --- determinism: random request sequences -----------------------------------------------

# Paths are fixed ones, or "@k[/name]": the k-th path created so far (mod count) and maybe a
# child of it, so deletes and sets hit nodes that exist and trees grow deep.
FIXED_PATHS = ["/", "/a", "/a/b", "/b", "/coord/x", "bad"]
REFERENCES = st.integers(0, 30).map(lambda k: f"@{k}")
PATHS = st.one_of(st.sampled_from(FIXED_PATHS), REFERENCES, REFERENCES)
CREATE_PATHS = st.one_of(
    st.sampled_from([*FIXED_PATHS, "/a/", "/b/s-"]),
    st.tuples(REFERENCES, st.sampled_from(["n", "m", "s-"])).map(lambda pair: f"{pair[0]}/{pair[1]}"),
)
VERSIONS = st.sampled_from([-1, -1, 0, 1])
DATA = st.sampled_from([b"", b"x", b"yz", b"w", b"", b"ab", b"q", b"r", b"s", b"big"])  # the test's limit is 2 bytes


@st.composite
def creates(draw: st.DrawFn) -> CreateRequest:
    mode = draw(st.sampled_from(list(CreateMode)))
    ttl_ms = 20 if mode.is_ttl else 0
    if draw(st.integers(0, 9)) == 0:
        ttl_ms = 20 - ttl_ms  # now and then, a wrong ttl for the mode
    return CreateRequest(
        path=draw(CREATE_PATHS),
        data=draw(DATA),
        mode=mode,
        ttl_ms=ttl_ms,
        makepath=draw(st.sampled_from([False, True, True])),
    )


deletes = st.builds(DeleteRequest, path=PATHS, version=VERSIONS)
sets = st.builds(SetDataRequest, path=PATHS, data=DATA, version=VERSIONS)
checks = st.builds(CheckRequest, path=PATHS, version=VERSIONS)
multis = st.builds(MultiRequest, ops=st.lists(st.one_of(creates(), deletes, sets, checks), max_size=4).map(tuple))
# who writes: 0 is the server, -1 a session that never existed, k > 0 the k-th live session
# (mod count, the server if none; every script starts by opening two)
writers = st.sampled_from([0, -1, 1, 1, 2, 2, 3])


def writes(requests: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.tuples(st.just("write"), requests, writers)


# half the steps are writes, most of those creates (one_of picks its branches evenly)
steps = st.lists(
    st.one_of(
        writes(creates()),
        writes(creates()),
        writes(deletes),
        writes(sets),
        writes(multis),
        st.tuples(st.just("open")),
        st.tuples(st.just("close"), writers),
        st.tuples(st.just("cleanup"), PATHS),
        st.tuples(st.just("apply"), st.integers(1, 5)),
        st.tuples(st.just("time"), st.integers(0, 40)),
    ),
    min_size=10,
    max_size=60,
)


def run_steps(script: list[tuple[Any, ...]], *, apply_eagerly: bool) -> tuple[list[Txn], DataTree]:
    """Prepare the script's requests; apply when it says so (or only at the end). When
    applying eagerly, check after every step that the pending view is the tree plus the
    queued txns, and after each apply that the tree holds what the preparer predicted.

    Everything the script resolves (paths, sessions) depends only on what was prepared,
    so the same script prepares the same txns however applies interleave.
    """
    tree = DataTree()
    preparer = Preparer(tree, data_bytes_max=2)
    queue: deque[Txn] = deque()
    prepared: list[Txn] = []
    sessions: list[int] = []
    created: dict[str, None] = {"/": None}  # every path ever created, in order
    time_ms = 1_000

    def session_at(index: int) -> int:
        if index <= 0:
            return 0 if index == 0 else 999_999
        live = [session_id for session_id in sessions if preparer.session_exists(session_id)]
        return live[(index - 1) % len(live)] if live else 0

    def resolve(path: str) -> str:
        if not path.startswith("@"):
            return path
        index, slash, name = path[1:].partition("/")
        paths = list(created)
        base = paths[int(index) % len(paths)]
        if not slash:
            return base
        return base + name if base == "/" else f"{base}/{name}"

    def resolved(request: Any) -> Any:
        if isinstance(request, MultiRequest):
            return MultiRequest(ops=tuple(resolved(op) for op in request.ops))
        return replace(request, path=resolve(request.path))

    def remember(body: Any) -> None:
        if isinstance(body, MultiTxn):
            for op in body.ops:
                remember(op)
        elif isinstance(body, CreateTxn):
            created.update(dict.fromkeys([*body.parents, body.path]))

    def check_pending_view() -> None:
        """The pending view must be the applied tree plus every queued txn, exactly."""
        future = DataTree.from_bytes(DataTree.serialize_image(tree.image()))
        for txn in queue:
            future.apply(txn)
        for path in future.nodes.keys() | preparer._changes.keys():
            assert preparer.node(path) == future.get_node(path), path
        for session_id in [*sessions, 999_999]:
            assert preparer.session_exists(session_id) == (session_id in future.sessions)
            if session_id in future.sessions:
                assert preparer._pending_ephemerals(session_id) == future.ephemerals(session_id)
        assert preparer.pending_count == len(queue)

    def apply(count: int) -> None:
        for _ in range(min(count, len(queue))):
            txn = queue.popleft()
            predicted = {path: node for path, (zxid, node) in preparer._changes.items() if zxid == txn.zxid}
            tree.apply(txn)  # asserts the preconditions the preparer promised
            for path, node in predicted.items():
                assert tree.get_node(path) == node, (txn, path)
            preparer.applied(txn)

    for step in [("open",), ("open",), *script]:
        txn: Txn | None = None
        match step:
            case ("write", request, index):
                txn = preparer.prepare(
                    resolved(request), session_id=session_at(index), xid=len(prepared), time_ms=time_ms
                )
            case ("open",):
                txn = preparer.prepare_create_session(timeout_ms=10, password=bytes([len(sessions)]), time_ms=time_ms)
                sessions.append(txn.zxid)
            case ("close", index):
                txn = preparer.prepare_close_session(session_at(index), session_id=0, xid=0, time_ms=time_ms)
            case ("cleanup", path):
                txn = preparer.prepare_cleanup(resolve(path), time_ms=time_ms)
            case ("apply", count):
                if apply_eagerly:
                    apply(count)
            case ("time", delta):
                time_ms += delta
        if txn is not None:
            assert txn.zxid == len(prepared) + 1
            remember(txn.body)
            prepared.append(txn)
            queue.append(txn)
        if apply_eagerly:
            check_pending_view()
    apply(len(queue))
    assert preparer.pending_count == 0
    assert preparer._changes == {} and preparer._ephemerals == {} and preparer._sessions == {}
    for session_id in [*sessions, 999_999]:
        assert preparer.session_exists(session_id) == (session_id in tree.sessions)
    return prepared, tree


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=steps)
def test_random_requests_apply_deterministically_and_survive_encoding_and_snapshots(
    script: list[tuple[Any, ...]],
) -> None:
    txns, tree = run_steps(script, apply_eagerly=True)
    # when the txns are applied does not change what is prepared: the pending view is exact
    lazily, _ = run_steps(script, apply_eagerly=False)
    assert lazily == txns
    # a follower applying the txns as they come off the wire ends with the same tree
    follower = DataTree()
    for txn in txns:
        follower.apply(decode_txn(encode_txn(txn)))
    assert follower.digest() == tree.digest()
    image = DataTree.serialize_image(tree.image())
    assert DataTree.serialize_image(follower.image()) == image
    # and so does one restored from a snapshot
    restored = DataTree.from_bytes(image)
    assert restored.digest() == tree.digest()
    assert restored.cleanup_candidates(10**9) == tree.cleanup_candidates(10**9)
    for session_id in tree.sessions:
        assert restored.ephemerals(session_id) == tree.ephemerals(session_id)
    for path in tree.nodes:
        assert restored.child_names(path) == tree.child_names(path)


@settings(max_examples=300, deadline=None)
@given(
    path=st.one_of(
        st.text(alphabet="/.a-_:é\x00\x7f", max_size=8),
        st.lists(st.sampled_from(["a", ".", "..", "", "b.", ".c", "\ud800"]), max_size=4).map(
            lambda p: "/" + "/".join(p)
        ),
    ),
    sequential=st.booleans(),
)
def test_fast_path_check_agrees_with_validate_path(path: str, sequential: bool) -> None:
    try:
        expected: str | None = validate_path(path, sequential=sequential)
    except BadArgumentsError:
        expected = None
    try:
        got: str | None = _checked_path(path, sequential=sequential)
    except BadArgumentsError:
        got = None
    assert got == expected


def test_a_read_request_is_refused_without_consuming_a_zxid() -> None:
    h = Harness()
    with pytest.raises(TypeError):
        h.preparer.prepare(ExistsRequest(path="/"), session_id=0, xid=1, time_ms=1)  # type: ignore[arg-type]
    assert (h.preparer.next_zxid, h.preparer.pending_count) == (1, 0)
