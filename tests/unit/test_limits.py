"""Server limits as pure-core behaviour: the preparer's size bounds and the pipeline's
backpressure (docs/limits.md). Process-level checks are in tests/integration/test_backpressure.py
and tests/fault/test_hostile.py."""

from __future__ import annotations

import random
from typing import Any

from coord import protocol
from coord.errors import BadArgumentsError, MarshallingError
from coord.pipeline import Pipeline, PipelineConfig, PipelineOutput
from coord.prepare import Preparer, txn_body_bytes
from coord.protocol import (
    AddWatchMode,
    AddWatchRequest,
    ConnectRequest,
    CreateRequest,
    GetDataRequest,
    MultiRequest,
    SetDataRequest,
)
from coord.tree import DataTree
from coord.txn import CreateTxn, ErrorTxn, MultiTxn, Txn, decode_txn, encode_txn

BAD_ARGUMENTS = BadArgumentsError.code


# --- the preparer's bounds ---------------------------------------------------------------


def prepare(preparer: Preparer, request: Any) -> Txn:
    return preparer.prepare(request, session_id=0, xid=1, time_ms=1)


def test_deep_makepath_is_refused_before_anything_is_proposed() -> None:
    """The finding: "/a" * 10000 with makepath became a ~100 MB proposal."""
    tree = DataTree()
    preparer = Preparer(tree)
    txn = prepare(preparer, CreateRequest(path="/a" * 10_000 + "/leaf", makepath=True))
    assert isinstance(txn.body, ErrorTxn) and txn.body.code == BAD_ARGUMENTS
    assert "limits.path_bytes_max" in txn.body.message
    assert len(encode_txn(txn)) < 1_000  # only the small error txn is ordered
    assert preparer.node("/a") is None  # nothing pending


def test_path_depth_and_length_limits_name_the_limit() -> None:
    preparer = Preparer(DataTree(), path_depth_max=4, path_bytes_max=64)
    deep = prepare(preparer, CreateRequest(path="/a/b/c/d/e", makepath=True))
    assert isinstance(deep.body, ErrorTxn) and "limits.path_depth_max" in deep.body.message
    long = prepare(preparer, CreateRequest(path="/" + "x" * 64))
    assert isinstance(long.body, ErrorTxn) and "limits.path_bytes_max" in long.body.message
    # at the limits it works
    ok = prepare(preparer, CreateRequest(path="/a/b/c/d", makepath=True))
    assert isinstance(ok.body, CreateTxn) and ok.body.parents == ("/a", "/a/b", "/a/b/c")
    # a sequential create counts its 10-digit suffix
    seq = prepare(preparer, CreateRequest(path="/" + "s" * 60, mode=protocol.CreateMode.PERSISTENT_SEQUENTIAL))
    assert isinstance(seq.body, ErrorTxn) and "limits.path_bytes_max" in seq.body.message


def test_multibyte_paths_count_utf8_bytes() -> None:
    preparer = Preparer(DataTree(), path_bytes_max=20)
    txn = prepare(preparer, CreateRequest(path="/" + "é" * 10))  # 10 chars, 21 bytes with the slash
    assert isinstance(txn.body, ErrorTxn) and txn.body.code == BAD_ARGUMENTS


def test_a_multi_is_bounded_by_the_sum_of_its_ops() -> None:
    """Each op is small; their makepath parents together are not."""
    preparer = Preparer(DataTree(), txn_bytes_max=1_000_000)
    ops = tuple(CreateRequest(path=f"/m{i}" + "/" + "/".join(["c" * 18] * 150), makepath=True) for i in range(20))
    txn = prepare(preparer, MultiRequest(ops=ops))
    assert isinstance(txn.body, ErrorTxn) and txn.body.code == BAD_ARGUMENTS
    assert txn.body.multi_codes and BAD_ARGUMENTS in txn.body.multi_codes
    assert preparer.node("/m0") is None  # the multi's earlier ops are rolled back too
    # a few of them fit
    few = prepare(preparer, MultiRequest(ops=ops[:2]))
    assert isinstance(few.body, MultiTxn)
    assert len(encode_txn(few)) <= sum(txn_body_bytes(op) for op in few.body.ops) + 64


def test_the_estimate_bounds_the_encoded_size() -> None:
    preparer = Preparer(DataTree())
    txn = prepare(preparer, CreateRequest(path="/é/" + "p" * 300 + "/q", data=b"v" * 5000, makepath=True))
    assert isinstance(txn.body, CreateTxn)
    assert len(encode_txn(txn)) <= txn_body_bytes(txn.body) + 64


def test_a_set_over_the_txn_limit_is_refused() -> None:
    tree = DataTree()
    preparer = Preparer(tree, data_bytes_max=1 << 20, txn_bytes_max=100_000)
    tree.apply(prepare(preparer, CreateRequest(path="/n")))
    txn = prepare(preparer, SetDataRequest(path="/n", data=b"x" * 200_000))
    assert isinstance(txn.body, ErrorTxn) and "limits.txn_bytes_max" in txn.body.message


def test_error_messages_travel_in_the_txn_and_reply() -> None:
    tree = DataTree()
    preparer = Preparer(tree)
    txn = prepare(preparer, CreateRequest(path="/coord/x"))
    assert isinstance(txn.body, ErrorTxn) and "reserved" in txn.body.message
    again = decode_txn(encode_txn(txn))
    assert again == txn
    result = tree.apply(txn)
    assert result.error == BAD_ARGUMENTS and "reserved" in result.result
    # an error txn without a message (as older logs hold) still decodes
    old = Txn(zxid=2, time_ms=1, session_id=0, xid=1, body=ErrorTxn(code=BAD_ARGUMENTS))
    assert decode_txn(encode_txn(old)) == old


# --- the pipeline's backpressure -------------------------------------------------------------


class Shell:
    """Plays the trio shell: commits every proposal at once, and 'sends' only when told."""

    def __init__(self, **limits: int) -> None:
        self.now_ms = 1_000
        self.pipeline = Pipeline(
            DataTree(),
            PipelineConfig(tick_ms=100, min_session_timeout_ms=200, max_session_timeout_ms=5_000, **limits),
            rng=random.Random(1),
            now_ms=self.now_ms,
            epoch=1,
        )
        self.unsent: dict[int, int] = {}
        self.frames: dict[int, list[Any]] = {}
        self.aborted: list[int] = []
        self.resumed: list[int] = []

    def run(self) -> None:
        while True:
            out: PipelineOutput = self.pipeline.take_output()
            for conn_id, frame in out.frames:
                self.unsent[conn_id] = self.unsent.get(conn_id, 0) + len(frame)
                self.frames.setdefault(conn_id, []).append(protocol.decode_body(frame[4:]))
            self.aborted += out.abort
            self.resumed += out.resume
            if not out.proposals:
                return
            self.pipeline.committed(out.proposals)

    def connect(self, conn_id: int) -> None:
        self.pipeline.open_connection(conn_id, ConnectRequest(timeout_ms=1_000), self.now_ms)
        self.run()

    def send_all(self, conn_id: int) -> None:
        """The socket took everything queued for ``conn_id``."""
        self.pipeline.sent(conn_id, self.unsent.pop(conn_id, 0), self.now_ms)
        self.run()

    def request(self, conn_id: int, xid: int, request: Any, size: int = 20) -> None:
        self.pipeline.request(conn_id, xid, request, self.now_ms, size)
        self.run()

    def replies(self, conn_id: int) -> list[Any]:
        return [frame for frame in self.frames.get(conn_id, []) if type(frame) is list and frame[0] > 0]


def test_a_request_behind_the_handshake_waits_for_the_session() -> None:
    shell = Shell()
    shell.pipeline.open_connection(1, ConnectRequest(timeout_ms=1_000), shell.now_ms)
    assert not shell.pipeline.wants_input(1)  # the session is being created
    shell.run()  # committed: the handshake is answered
    assert shell.resumed == [1]
    assert shell.pipeline.wants_input(1)


def test_reads_are_held_while_a_connection_does_not_drain() -> None:
    shell = Shell(connection_outbox_bytes_max=3_000)
    shell.connect(1)
    shell.send_all(1)
    shell.request(1, 1, CreateRequest(path="/big", data=b"x" * 1_000))
    shell.send_all(1)
    for xid in range(2, 12):
        shell.request(1, xid, GetDataRequest(path="/big"))
    # three replies of ~1 KB pass the 3 KB bound; the rest wait, in order
    assert [reply[0] for reply in shell.replies(1)] == [1, 2, 3, 4]
    assert not shell.pipeline.wants_input(1)
    shell.send_all(1)
    assert [reply[0] for reply in shell.replies(1)][-1] == 7
    assert shell.resumed == []  # still over its bound: reading stays paused
    shell.send_all(1)
    shell.send_all(1)
    assert [reply[0] for reply in shell.replies(1)] == list(range(1, 12))
    assert shell.pipeline.status()["unsent_bytes"] == shell.unsent.get(1, 0)


def test_all_connections_together_are_bounded() -> None:
    """Over the server's bound, a connection holding much waits (and the tick sheds the
    largest), while one that drains is still served: slow clients cannot starve others."""
    shell = Shell(connection_outbox_bytes_max=1 << 20, outbox_bytes_total_max=150_000)
    for conn_id in (1, 2, 3):
        shell.connect(conn_id)
        shell.send_all(conn_id)
    shell.request(1, 1, CreateRequest(path="/big", data=b"x" * 90_000))
    shell.send_all(1)
    shell.request(1, 2, GetDataRequest(path="/big"))  # 90 KB unsent on 1
    shell.request(2, 1, GetDataRequest(path="/big"))  # 180 KB in all: over the bound
    shell.request(1, 3, GetDataRequest(path="/big"))  # 1 holds over 64 KiB: its read waits
    assert [reply[0] for reply in shell.replies(1)] == [1, 2]
    shell.request(3, 1, GetDataRequest(path="/big"))  # 3 holds nothing: served
    assert len(shell.replies(3)) == 1
    shell.send_all(2)  # 2 drained, but the total is still over: 1 keeps waiting
    assert [reply[0] for reply in shell.replies(1)] == [1, 2]
    shell.pipeline.tick(shell.now_ms)
    shell.run()
    assert shell.aborted  # the largest backlogs were shed
    assert shell.pipeline.status()["unsent_bytes"] <= 150_000


def test_outstanding_requests_pause_reading() -> None:
    shell = Shell(connection_outstanding_max=3, connection_inflight_bytes_max=1 << 20)
    shell.connect(1)
    shell.send_all(1)
    pipeline = shell.pipeline
    for xid in (1, 2, 3):
        pipeline.request(1, xid, CreateRequest(path=f"/n{xid}"), shell.now_ms, 30)
    assert not pipeline.wants_input(1)
    shell.run()  # committed and answered
    assert shell.resumed == [1] and pipeline.wants_input(1)


def test_inflight_bytes_pause_reading() -> None:
    shell = Shell(connection_inflight_bytes_max=1_000)
    shell.connect(1)
    pipeline = shell.pipeline
    pipeline.request(1, 1, CreateRequest(path="/a", data=b"x" * 900), shell.now_ms, 950)
    assert pipeline.wants_input(1)
    pipeline.request(1, 2, CreateRequest(path="/b", data=b"x" * 900), shell.now_ms, 950)
    assert not pipeline.wants_input(1)
    shell.run()
    assert pipeline.wants_input(1)


def test_a_watcher_that_never_reads_is_aborted_and_its_session_lives() -> None:
    shell = Shell(connection_outbox_bytes_max=2_000, data_bytes_max=1_000)
    shell.connect(1)  # the watcher: never drains
    shell.connect(2)  # the writer
    shell.request(1, 1, AddWatchRequest(path="/", mode=AddWatchMode.PERSISTENT_RECURSIVE))
    cap = shell.pipeline.config.outbox_abort_bytes
    for i in range(10_000):
        shell.request(2, i + 1, CreateRequest(path=f"/n{i:05}"))
        shell.send_all(2)
        if shell.aborted:
            break
    assert shell.aborted == [1]
    assert len(shell.frames[1]) * 30 > cap  # it got past the abort bound
    assert shell.pipeline.status()["unsent_bytes"] == 0  # its bytes are no longer counted
    assert not shell.pipeline.has_connection(1)
    assert len(shell.pipeline.tree.sessions) == 2  # the session was not closed


def test_a_stalled_connection_is_aborted_after_the_stall_time() -> None:
    shell = Shell(connection_outbox_bytes_max=1_500, connection_stall_ms=500)
    shell.connect(1)
    shell.request(1, 1, CreateRequest(path="/big", data=b"x" * 2_000))
    shell.request(1, 2, GetDataRequest(path="/big"))  # never drained
    shell.pipeline.tick(shell.now_ms + 499)
    shell.run()
    assert shell.aborted == []
    shell.pipeline.tick(shell.now_ms + 500)
    shell.run()
    assert shell.aborted == [1]


def test_progress_resets_the_stall_clock() -> None:
    shell = Shell(connection_outbox_bytes_max=1_500, connection_stall_ms=500)
    shell.connect(1)
    shell.request(1, 1, CreateRequest(path="/big", data=b"x" * 2_000))
    shell.request(1, 2, GetDataRequest(path="/big"))
    shell.now_ms += 400
    shell.pipeline.sent(1, 100, shell.now_ms)  # some went out; still over the bound
    shell.pipeline.tick(shell.now_ms + 400)
    shell.run()
    assert shell.aborted == []


def test_malformed_follower_messages_drop_the_link_not_the_leader() -> None:
    import cbor2

    shell = Shell()
    bad = [
        cbor2.dumps(["s", b"pw", float("inf")]),
        cbor2.dumps(["s", b"pw", 10**30]),
        cbor2.dumps(["w", 1, 2, "junk"]),
        cbor2.dumps(["w", 1, 2, [2, protocol.Op.GET_DATA, "/x", False]]),  # a read is not forwarded
        cbor2.dumps(["t", [2**70]]),
        cbor2.dumps(["y", "a", 1]),
        cbor2.dumps(["q"]),
        cbor2.dumps([]),
        cbor2.dumps({"w": 1}),
        b"\xff\x00garbage",
        cbor2.dumps(["y", 1, 2]) + b"trailing",
    ]
    for payload in bad:
        shell.pipeline.from_follower(2, payload, shell.now_ms)
        out = shell.pipeline.take_output()
        assert out.bad_peers == [2], payload
        assert out.proposals == [] and out.barriers == []
        shell.pipeline.from_leader(1, payload)
        assert shell.pipeline.take_output().bad_peers == [1], payload
    # a good one still works
    shell.pipeline.from_follower(2, cbor2.dumps(["s", b"p" * 16, 1_000]), shell.now_ms)
    assert len(shell.pipeline.take_output().proposals) == 1


def test_over_the_total_a_connection_holding_more_than_its_share_is_shed() -> None:
    shell = Shell(connection_outbox_bytes_max=1 << 20, outbox_bytes_total_max=100_000)
    for conn_id in (1, 2, 3):
        shell.connect(conn_id)
        shell.send_all(conn_id)
    shell.request(3, 1, CreateRequest(path="/big", data=b"x" * 90_000))
    shell.send_all(3)
    shell.request(1, 1, GetDataRequest(path="/big"))  # 90 KB unsent on connection 1
    shell.request(2, 1, GetDataRequest(path="/big"))  # 180 KB in all: over the total
    assert shell.aborted == []  # read replies the gate allowed are never shed
    shell.request(1, 2, CreateRequest(path="/other"))  # its reply cannot be held
    assert shell.aborted == [1]  # it held more than its share when sent one more frame
    assert shell.pipeline.has_connection(3)  # the writer, with nothing unsent, stays


# --- the limits as configuration -----------------------------------------------------------


def test_limits_are_configurable_and_checked() -> None:
    import pytest

    from coord.config import ConfigError, load_config

    config = load_config(
        overrides={
            "limits.txn_bytes_max": "3000000",
            "limits.path_depth_max": "32",
            "limits.connection_outbox_bytes_max": "65536",
            "limits.connection_stall_ms": "5000",
        }
    )
    assert (config.txn_bytes_max, config.path_depth_max) == (3_000_000, 32)
    assert (config.connection_outbox_bytes_max, config.connection_stall_ms) == (65_536, 5_000)
    defaults = load_config()
    assert defaults.txn_bytes_max >= defaults.data_bytes_max + protocol.FRAME_OVERHEAD_BYTES
    with pytest.raises(ConfigError, match=r"^limits.txn_bytes_max: .*limits.data_bytes_max"):
        load_config(overrides={"limits.txn_bytes_max": "1000000"})
    with pytest.raises(ConfigError, match=r"^limits.data_bytes_max: "):
        load_config(overrides={"limits.data_bytes_max": str(8 << 20)})
    with pytest.raises(ConfigError, match=r"^limits.path_depth_max: "):
        load_config(overrides={"limits.path_depth_max": "0"})
    with pytest.raises(ConfigError, match=r"^limits.connection_outstanding_max: "):
        load_config(overrides={"limits.connection_outstanding_max": "-1"})


def test_a_reply_over_the_frame_limit_is_a_typed_error_not_a_cut_connection() -> None:
    """2,400 children with 4,000-byte names: a get_children reply no client could read."""
    shell = Shell(data_bytes_max=64 * 1024)
    shell.connect(1)
    shell.send_all(1)
    shell.request(1, 1, CreateRequest(path="/p"))
    for i in range(40):
        shell.request(1, 2 + i, CreateRequest(path=f"/p/{i:04}" + "n" * 4_000))
        shell.send_all(1)
    shell.request(1, 100, protocol.GetChildrenRequest(path="/p"))
    reply = shell.replies(1)[-1]
    assert reply[0] == 100 and reply[2] == MarshallingError.code
    assert "over the frame limit" in reply[3]
    assert shell.aborted == []


def test_at_twice_the_total_every_read_waits_for_the_tick() -> None:
    """The hard bound: readers that drain are served over the bound only up to twice it;
    the tick sheds the largest backlogs and then serves the reads that waited."""
    shell = Shell(connection_outbox_bytes_max=1 << 20, outbox_bytes_total_max=100_000)
    for conn_id in range(1, 6):
        shell.connect(conn_id)
        shell.send_all(conn_id)
    shell.request(1, 1, CreateRequest(path="/big", data=b"x" * 70_000))
    shell.send_all(1)
    for conn_id in range(1, 6):  # none drains
        shell.request(conn_id, 2, GetDataRequest(path="/big"))
    served = [conn_id for conn_id in range(1, 6) if any(r[0] == 2 for r in shell.replies(conn_id))]
    assert served == [1, 2, 3]  # 210 KB >= 2 x 100 KB: the others wait
    shell.pipeline.tick(shell.now_ms)
    shell.run()
    assert len(shell.aborted) == 2  # the tick shed backlogs down to the bound...
    assert all(any(r[0] == 2 for r in shell.replies(c)) for c in (4, 5))  # ...then served the waiting
    assert shell.pipeline.status()["unsent_bytes"] < 2 * 100_000 + 71_000
