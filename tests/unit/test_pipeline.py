"""The request pipeline as a pure state machine: ordering, sessions, watches, failures.

The tests play the shell: they feed inputs, take the output, "persist" proposals by
handing them back as committed (or as failed), and decode the frames sent.
"""

from __future__ import annotations

import random
from typing import Any

from coord import errors, protocol
from coord.pipeline import Mode, Pipeline, PipelineConfig, PipelineOutput
from coord.protocol import (
    CloseSessionRequest,
    ConnectRequest,
    CreateMode,
    CreateRequest,
    EventType,
    ExistsRequest,
    GetDataRequest,
    SetDataRequest,
    SyncRequest,
)
from coord.tree import DataTree
from coord.txn import CloseSessionTxn
from coord.zxid import epoch_of


def decode_frames(out: PipelineOutput, conn_id: int) -> list[Any]:
    return [protocol.decode_body(frame[4:]) for target, frame in out.frames if target == conn_id]


class Harness:
    def __init__(self) -> None:
        self.now_ms = 1_000
        self.tree = DataTree()
        self.pipeline = Pipeline(
            self.tree,
            PipelineConfig(tick_ms=100, min_session_timeout_ms=200, max_session_timeout_ms=5_000),
            rng=random.Random(7),
            now_ms=self.now_ms,
            epoch=1,
        )

    def commit_all(self) -> PipelineOutput:
        """Persist and commit every proposal until none is left; return all output."""
        merged = PipelineOutput()
        while True:
            out = self.pipeline.take_output()
            merged.frames += out.frames
            merged.close += out.close
            if not out.proposals and not out.barriers:
                return merged
            merged.proposals += out.proposals
            self.pipeline.committed(out.proposals)
            for barrier in out.barriers:  # a quorum of one confirms at once
                self.pipeline.barrier_done(*barrier)

    def connect(self, conn_id: int, timeout_ms: int = 1_000) -> int:
        self.pipeline.open_connection(conn_id, ConnectRequest(timeout_ms=timeout_ms), self.now_ms)
        (reply,) = decode_frames(self.commit_all(), conn_id)
        response = protocol.decode_handshake_reply(reply)
        assert isinstance(response, protocol.ConnectResponse)
        return response.session_id

    def request(self, conn_id: int, xid: int, request: protocol.Request) -> None:
        self.pipeline.request(conn_id, xid, request, self.now_ms)


def test_new_session_is_answered_only_once_its_txn_commits() -> None:
    h = Harness()
    h.pipeline.open_connection(1, ConnectRequest(timeout_ms=1_000), h.now_ms)
    out = h.pipeline.take_output()
    assert out.frames == []
    assert len(out.proposals) == 1
    h.pipeline.committed(out.proposals)
    (reply,) = decode_frames(h.pipeline.take_output(), 1)
    response = protocol.decode_handshake_reply(reply)
    assert isinstance(response, protocol.ConnectResponse)
    assert response.session_id == out.proposals[0].zxid
    assert response.session_id in h.tree.sessions
    assert epoch_of(response.session_id) == 1


def test_session_timeout_is_negotiated_into_bounds() -> None:
    h = Harness()
    h.connect(1, timeout_ms=60_000)
    assert h.tree.sessions[h.pipeline.session_of(1)].timeout_ms == 5_000


def test_write_is_answered_after_commit_and_a_later_read_waits_for_it() -> None:
    h = Harness()
    h.connect(1)
    h.request(1, 1, CreateRequest(path="/a", data=b"v"))
    h.request(1, 2, GetDataRequest(path="/a"))
    out = h.pipeline.take_output()
    assert out.frames == []  # the read must not overtake the write
    h.pipeline.committed(out.proposals)
    replies = decode_frames(h.pipeline.take_output(), 1)
    assert [reply[0] for reply in replies] == [1, 2]
    assert replies[0][3][0] == "/a"
    assert replies[1][3][0] == b"v"  # the session reads its own write
    assert replies[0][1] == out.proposals[0].zxid  # a write answers with its own zxid


def test_read_with_nothing_pending_is_answered_at_once() -> None:
    h = Harness()
    h.connect(1)
    h.request(1, 5, ExistsRequest(path="/missing"))
    (reply,) = decode_frames(h.pipeline.take_output(), 1)
    assert reply == [5, h.tree.last_zxid, 0, None]


def test_failed_write_is_ordered_and_answered_with_its_code() -> None:
    h = Harness()
    h.connect(1)
    h.request(1, 1, SetDataRequest(path="/nope", data=b""))
    out = h.commit_all()
    (reply,) = decode_frames(out, 1)
    assert reply[2] == errors.NoNodeError.code
    assert len(out.proposals) == 1  # the error txn still went through the log


def test_watch_event_reaches_the_watcher_before_the_reply_to_its_own_later_write() -> None:
    h = Harness()
    h.connect(1)
    h.request(1, 1, CreateRequest(path="/w"))
    h.commit_all()
    h.request(1, 2, GetDataRequest(path="/w", watch=True))
    h.request(1, 3, SetDataRequest(path="/w", data=b"new"))
    replies = decode_frames(h.commit_all(), 1)
    assert [reply[0] for reply in replies] == [2, protocol.WATCH_XID, 3]
    event = protocol.decode_event(replies[1][1], replies[1][3])
    assert (event.type, event.path) == (EventType.NODE_DATA_CHANGED, "/w")
    assert event.zxid == replies[2][1]


def test_watch_fires_once_for_another_sessions_change() -> None:
    h = Harness()
    h.connect(1)
    h.connect(2)
    h.request(1, 1, ExistsRequest(path="/x", watch=True))
    h.commit_all()
    h.request(2, 1, CreateRequest(path="/x"))
    h.request(2, 2, SetDataRequest(path="/x", data=b"1"))
    out = h.commit_all()
    events = [frame for frame in decode_frames(out, 1) if frame[0] == protocol.WATCH_XID]
    assert [protocol.decode_event(f[1], f[3]).type for f in events] == [EventType.NODE_CREATED]


def test_reconnect_to_a_server_that_is_behind_is_refused() -> None:
    h = Harness()
    h.pipeline.open_connection(1, ConnectRequest(last_zxid=h.tree.last_zxid + 10), h.now_ms)
    out = h.pipeline.take_output()
    (reply,) = decode_frames(out, 1)
    assert protocol.decode_handshake_reply(reply)[0] == errors.ServerBehindError.code
    assert out.close == [1]


def test_reconnect_with_a_wrong_password_is_refused_as_expired() -> None:
    h = Harness()
    session_id = h.connect(1)
    h.pipeline.open_connection(2, ConnectRequest(session_id=session_id, password=b"wrong"), h.now_ms)
    (reply,) = decode_frames(h.pipeline.take_output(), 2)
    assert protocol.decode_handshake_reply(reply)[0] == errors.SessionExpiredError.code


def test_reconnect_moves_the_session_and_closes_the_old_connection() -> None:
    h = Harness()
    session_id = h.connect(1)
    password = h.tree.sessions[session_id].password
    h.pipeline.open_connection(2, ConnectRequest(session_id=session_id, password=password), h.now_ms)
    out = h.pipeline.take_output()
    assert 1 in out.close
    response = protocol.decode_handshake_reply(decode_frames(out, 2)[0])
    assert isinstance(response, protocol.ConnectResponse) and response.session_id == session_id


def test_expired_session_loses_its_ephemerals_and_its_connection() -> None:
    h = Harness()
    session_id = h.connect(1, timeout_ms=200)
    h.request(1, 1, CreateRequest(path="/e", mode=CreateMode.EPHEMERAL))
    h.commit_all()
    assert h.tree.get_node("/e") is not None
    h.now_ms += 150
    h.pipeline.tick(h.now_ms)
    assert h.pipeline.take_output().proposals == []  # not yet
    h.now_ms += 200
    h.pipeline.tick(h.now_ms)
    out = h.commit_all()
    assert [type(txn.body) for txn in out.proposals] == [CloseSessionTxn]
    assert h.tree.get_node("/e") is None
    assert session_id not in h.tree.sessions
    assert 1 in out.close


def test_pings_keep_a_session_alive() -> None:
    h = Harness()
    session_id = h.connect(1, timeout_ms=200)
    for _ in range(10):
        h.now_ms += 100
        h.request(1, 0, protocol.PingRequest())
        h.pipeline.tick(h.now_ms)
    h.commit_all()
    assert session_id in h.tree.sessions


def test_close_session_answers_then_closes() -> None:
    h = Harness()
    session_id = h.connect(1)
    h.request(1, 9, CloseSessionRequest())
    out = h.commit_all()
    assert decode_frames(out, 1) == [[9, out.proposals[0].zxid, 0, None]]
    assert out.close == [1]
    assert session_id not in h.tree.sessions


def test_failed_disk_write_answers_storage_error_and_forgets_the_pending_state() -> None:
    h = Harness()
    h.connect(1)
    h.request(1, 1, CreateRequest(path="/a"))
    h.request(1, 2, CreateRequest(path="/a/b"))  # prepared on top of /a
    h.pipeline.take_output()
    h.pipeline.abort_pending(errors.StorageFullError("disk full"))
    replies = decode_frames(h.pipeline.take_output(), 1)
    assert [(reply[0], reply[2]) for reply in replies] == [
        (1, errors.StorageFullError.code),
        (2, errors.StorageFullError.code),
    ]
    # Nothing of it exists, and the next write is prepared against the real tree.
    h.request(1, 3, CreateRequest(path="/a/b"))
    (reply,) = decode_frames(h.commit_all(), 1)
    assert reply[2] == errors.NoNodeError.code
    assert h.tree.get_node("/a") is None


def test_sync_waits_behind_the_sessions_writes_and_for_a_quorum_round() -> None:
    h = Harness()
    h.connect(1)
    h.request(1, 1, CreateRequest(path="/s"))
    h.request(1, 2, SyncRequest(path="/s"))
    out = h.pipeline.take_output()
    assert out.frames == []  # nothing answered before the write commits
    assert out.barriers == [(1, h.pipeline.session_of(1), 2)]  # the sync asks for a quorum round
    h.pipeline.committed(out.proposals)
    assert [reply[0] for reply in decode_frames(h.pipeline.take_output(), 1)] == [1]  # the write only
    h.pipeline.barrier_done(*out.barriers[0])
    (reply,) = decode_frames(h.pipeline.take_output(), 1)
    assert reply[0] == 2 and reply[3] == "/s"


def test_expire_session_on_demand() -> None:
    h = Harness()
    session_id = h.connect(1)
    assert h.pipeline.expire_session(session_id, h.now_ms)
    h.commit_all()
    assert session_id not in h.tree.sessions
    assert not h.pipeline.expire_session(session_id, h.now_ms)


class Pair:
    """A leader and a follower pipeline wired as ZAB would: every proposal of the
    leader commits on both, in order; application messages go straight across."""

    def __init__(self) -> None:
        self.now_ms = 1_000
        config = PipelineConfig(tick_ms=100, min_session_timeout_ms=200, max_session_timeout_ms=5_000)
        self.leader = Pipeline(DataTree(), config, rng=random.Random(1), now_ms=self.now_ms, epoch=1)
        follower_config = PipelineConfig(
            server_id=2, tick_ms=100, min_session_timeout_ms=200, max_session_timeout_ms=5_000
        )
        self.follower = Pipeline(
            DataTree(), follower_config, rng=random.Random(2), now_ms=self.now_ms, epoch=1, mode=Mode.FOLLOWER
        )
        self.follower_frames: list[tuple[int, bytes]] = []
        self.follower_closed: list[int] = []

    def run(self) -> None:
        for _ in range(100):
            leader_out = self.leader.take_output()
            follower_out = self.follower.take_output()
            self.follower_frames += follower_out.frames
            self.follower_closed += follower_out.close
            for payload in follower_out.to_leader:
                self.leader.from_follower(2, payload, self.now_ms)
            if leader_out.proposals:
                self.leader.committed(leader_out.proposals)
                self.follower.committed(leader_out.proposals)
            for barrier in leader_out.barriers:
                self.leader.barrier_done(*barrier)
            for target, payload in leader_out.to_followers:
                assert target == 2
                self.follower.from_leader(1, payload)
            busy = leader_out.proposals or leader_out.barriers or leader_out.to_followers or follower_out.to_leader
            if not busy and not follower_out.frames:
                return
        raise AssertionError("the pair did not settle")

    def replies(self, conn_id: int) -> list[Any]:
        frames = [protocol.decode_body(frame[4:]) for target, frame in self.follower_frames if target == conn_id]
        self.follower_frames = [(target, frame) for target, frame in self.follower_frames if target != conn_id]
        return frames

    def connect(self, conn_id: int) -> int:
        self.follower.open_connection(conn_id, ConnectRequest(timeout_ms=1_000), self.now_ms)
        self.run()
        (reply,) = self.replies(conn_id)
        response = protocol.decode_handshake_reply(reply)
        assert isinstance(response, protocol.ConnectResponse)
        return response.session_id


def test_follower_forwards_session_creation_and_writes_to_the_leader() -> None:
    pair = Pair()
    session_id = pair.connect(1)
    assert session_id in pair.leader.tree.sessions and session_id in pair.follower.tree.sessions
    pair.follower.request(1, 1, CreateRequest(path="/f", data=b"x", mode=CreateMode.EPHEMERAL), pair.now_ms)
    pair.follower.request(1, 2, GetDataRequest(path="/f"), pair.now_ms)
    pair.run()
    create, get = pair.replies(1)
    assert create[0] == 1 and create[2] == 0 and create[3][0] == "/f"
    assert get[0] == 2 and get[3][0] == b"x"  # read-your-writes on the follower
    assert pair.leader.tree.get_node("/f").ephemeral_owner == session_id
    assert pair.leader.tree.digest() == pair.follower.tree.digest()


def test_sync_on_a_follower_waits_for_the_leaders_quorum_round() -> None:
    pair = Pair()
    pair.connect(1)
    pair.follower.request(1, 5, SyncRequest(path="/"), pair.now_ms)
    out = pair.follower.take_output()
    assert out.frames == [] and len(out.to_leader) == 1
    pair.leader.from_follower(2, out.to_leader[0], pair.now_ms)
    leader_out = pair.leader.take_output()
    assert leader_out.barriers == [(2, pair.follower.session_of(1), 5)]
    pair.leader.barrier_done(*leader_out.barriers[0])
    ((_target, payload),) = pair.leader.take_output().to_followers
    pair.follower.from_leader(1, payload)
    (reply,) = decode_frames(pair.follower.take_output(), 1)
    assert reply[0] == 5 and reply[3] == "/"


def test_session_activity_on_a_follower_keeps_it_alive_on_the_leader() -> None:
    pair = Pair()
    session_id = pair.connect(1)
    for _ in range(20):
        pair.now_ms += 100
        pair.follower.request(1, 0, protocol.PingRequest(), pair.now_ms)
        pair.follower.tick(pair.now_ms)
        pair.leader.tick(pair.now_ms)
        pair.run()
    assert session_id in pair.leader.tree.sessions
    # Silence: the leader expires it, and the follower drops the connection.
    for _ in range(30):
        pair.now_ms += 100
        pair.follower.tick(pair.now_ms)
        pair.leader.tick(pair.now_ms)
        pair.run()
    assert session_id not in pair.leader.tree.sessions
    assert session_id not in pair.follower.tree.sessions
    assert 1 in pair.follower_closed


def test_losing_the_leader_fails_what_is_in_flight_and_disconnects_clients() -> None:
    pair = Pair()
    pair.connect(1)
    pair.follower.request(1, 7, CreateRequest(path="/lost"), pair.now_ms)
    pair.follower.take_output()  # forwarded, never committed
    pair.follower.go_offline(errors.ConnectionLossError("leader lost"))
    out = pair.follower.take_output()
    (reply,) = decode_frames(out, 1)
    assert reply[0] == 7 and reply[2] == errors.ConnectionLossError.code
    assert 1 in out.close
    pair.follower.open_connection(2, ConnectRequest(), pair.now_ms)
    (refusal,) = decode_frames(pair.follower.take_output(), 2)
    assert protocol.decode_handshake_reply(refusal)[0] == errors.NotLeaderError.code
