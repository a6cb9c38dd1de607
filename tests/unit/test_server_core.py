"""The sans-IO server core driven by hand: a standalone server and a two-server link,
with the disk and the network played by the test (no trio, no sockets, no LMDB).
The seeded whole-server simulator is tests/sim/test_server_sim.py."""

from __future__ import annotations

import random
from typing import Any

from coord import protocol
from coord.pipeline import Mode, Pipeline, PipelineConfig
from coord.protocol import ConnectRequest, CreateRequest, GetDataRequest, SyncRequest
from coord.server.core import SNAPSHOT_MIN_BYTES, CoreOutput, ServerCore
from coord.tree import DataTree
from coord.zab import PeerConfig
from coord.zab.types import EpochRecord, LogEntry, Record, SnapshotRecord, TruncateRecord, Zxid


class MemoryDisk:
    """A DurableState whose writes the test applies when it says the disk flushed."""

    def __init__(self) -> None:
        self.accepted_epoch = 0
        self.current_epoch = 0
        self.log: list[tuple[Zxid, bytes]] = []
        self.tree: DataTree | None = None

    def write(self, record: Record) -> None:
        match record:
            case LogEntry(zxid=zxid, txn=txn):
                self.log.append((zxid, txn))
            case EpochRecord(accepted_epoch=accepted, current_epoch=current):
                self.accepted_epoch = accepted if accepted is not None else self.accepted_epoch
                self.current_epoch = current if current is not None else self.current_epoch
            case TruncateRecord(zxid=zxid):
                self.log = [entry for entry in self.log if entry[0] <= zxid]
            case SnapshotRecord():
                self.log = []

    def last_zxid(self) -> Zxid:
        return self.log[-1][0] if self.log else 0

    def entries_after(self, zxid: Zxid) -> list[tuple[Zxid, bytes]] | None:
        return [entry for entry in self.log if entry[0] > zxid]

    def contains(self, zxid: Zxid) -> bool:
        return zxid == 0 or any(entry[0] == zxid for entry in self.log)

    def applied_zxid(self) -> Zxid:
        return 0

    def snapshot(self) -> tuple[Zxid, bytes]:
        assert self.tree is not None
        return self.tree.last_zxid, DataTree.serialize_image(self.tree.image())


def make_core(server_id: int = 1, voters: tuple[int, ...] = (1,), **limits: Any) -> tuple[ServerCore, MemoryDisk]:
    disk = MemoryDisk()
    pipeline = Pipeline(
        DataTree(),
        PipelineConfig(server_id=server_id, tick_ms=100, min_session_timeout_ms=200, max_session_timeout_ms=5_000),
        rng=random.Random(server_id),
        now_ms=0,
        epoch=0,
        mode=Mode.OFFLINE,
    )
    core = ServerCore(
        pipeline,
        PeerConfig(server_id=server_id, voters=voters),
        disk,
        delivered_zxid=0,
        standalone=len(voters) == 1,
        rng=random.Random(server_id),
        **{"snapshot_every_txns": 3, **limits},
    )
    disk.tree = pipeline.tree
    return core, disk


def flush(core: ServerCore, disk: MemoryDisk, out: CoreOutput, now_ms: int = 0) -> CoreOutput:
    """Make everything the core asked to persist durable, then report it; merged output."""
    merged = out
    while merged.persist:
        records, merged.persist = merged.persist, []
        for record in records:
            disk.write(record)
        core.persisted(records[-1].seq, now_ms)
        more = core.take_output()
        merged.frames += more.frames
        merged.close += more.close
        merged.persist += more.persist
        merged.send += more.send
        merged.snapshot_due = merged.snapshot_due or more.snapshot_due
        merged.serving_changed = merged.serving_changed or more.serving_changed
    return merged


def replies(out: CoreOutput, conn_id: int) -> list[Any]:
    return [protocol.decode_body(frame[4:]) for target, frame in out.frames if target == conn_id]


def test_a_standalone_core_elects_itself_serves_and_asks_for_snapshots() -> None:
    core, disk = make_core()
    core.start(0)
    out = flush(core, disk, core.take_output())
    assert core.is_serving and core.role == "standalone" and out.serving_changed
    core.open_client(7, ConnectRequest(timeout_ms=1_000), 1)
    out = flush(core, disk, core.take_output())
    (handshake,) = replies(out, 7)
    assert isinstance(protocol.decode_handshake_reply(handshake), protocol.ConnectResponse)
    for xid in (1, 2):
        core.client_request(7, xid, CreateRequest(path=f"/n{xid}", data=b"v"), 2, 30)
    core.client_request(7, 3, GetDataRequest(path="/n2"), 2, 20)  # waits behind the writes
    core.flush()
    out = core.take_output()
    assert replies(out, 7) == []  # nothing is answered before it is durable
    assert len([r for r in out.persist if isinstance(r, LogEntry)]) == 2
    out = flush(core, disk, out)
    answered = replies(out, 7)
    assert [reply[0] for reply in answered] == [1, 2, 3]
    assert answered[2][3][0] == b"v"
    assert out.snapshot_due  # three txns applied (the session's, two creates)
    assert core.tree.last_zxid == disk.log[-1][0]


def test_a_sync_is_answered_after_the_quorum_round() -> None:
    core, disk = make_core()
    core.start(0)
    flush(core, disk, core.take_output())
    core.open_client(1, ConnectRequest(timeout_ms=1_000), 1)
    flush(core, disk, core.take_output())
    core.client_request(1, 1, SyncRequest(path="/"), 2, 10)
    core.flush()
    out = flush(core, disk, core.take_output())
    assert [reply[0] for reply in replies(out, 1)] == [1]


def test_a_peer_message_over_the_frame_limit_drops_only_that_link() -> None:
    """The leader never exits because of one peer: an oversized message drops its link."""
    core2, _disk2 = make_core(2, (1, 2, 3), peer_frame_bytes_max=4)
    core2.start(0)  # its election notifications are 7 bytes: over this (tiny) limit
    out2 = core2.take_output()
    assert out2.send == []
    assert {target for target, _ in out2.disconnect} == {1, 3}
    assert all("peer frame limit" in reason for _, reason in out2.disconnect)


def test_a_malformed_zab_message_raises_protocol_error_for_the_transport() -> None:
    core, _disk = make_core(1, (1, 2, 3))
    try:
        core.peer_message(2, b"\xff\xfe not cbor", 0)
    except protocol.ProtocolError as error:
        assert "malformed ZAB message" in str(error)
    else:
        raise AssertionError("a malformed ZAB message must raise ProtocolError")
    assert core.role == "looking"  # and the core is untouched


def test_the_snapshot_threshold_is_an_eighth_of_the_last_snapshot_within_bounds() -> None:
    """Replaying a byte of log costs about five loading a byte of snapshot: the log a
    restart replays stays a fraction of the tree, however big the tree is."""
    core, _ = make_core(snapshot_every_txns=1_000_000, snapshot_every_bytes=64 << 20)
    assert core.snapshot_threshold == SNAPSHOT_MIN_BYTES  # no snapshot yet: the floor
    core.snapshot_written(200 << 20)
    assert core.snapshot_threshold == 25 << 20
    core.snapshot_written(1 << 30)
    assert core.snapshot_threshold == 64 << 20  # capped by snapshot_every_bytes
    core.snapshot_written(1 << 20)
    assert core.snapshot_threshold == SNAPSHOT_MIN_BYTES
    recovered, _ = make_core(snapshot_every_txns=1_000_000, snapshot_bytes=80 << 20)
    assert recovered.snapshot_threshold == 10 << 20  # from the snapshot it was recovered from


def test_a_snapshot_is_also_due_after_enough_bytes_of_txns() -> None:
    """A multi of many creates is one txn: counting txns alone let the log a restart
    replays grow without bound (1M znodes in multis of 500 never reached 100,000 txns)."""
    core, disk = make_core(snapshot_every_txns=1_000_000, snapshot_every_bytes=10_000)
    core.start(0)
    flush(core, disk, core.take_output())
    core.open_client(7, ConnectRequest(timeout_ms=1_000), 1)
    assert not flush(core, disk, core.take_output()).snapshot_due
    core.client_request(7, 1, CreateRequest(path="/small", data=b"v" * 100), 2, 200)
    core.flush()
    assert not flush(core, disk, core.take_output()).snapshot_due
    core.client_request(7, 2, CreateRequest(path="/big", data=b"v" * 10_000), 3, 10_100)
    core.flush()
    assert flush(core, disk, core.take_output()).snapshot_due
    core.snapshot_taken()
    core.client_request(7, 3, CreateRequest(path="/small2", data=b"v" * 100), 4, 200)
    core.flush()
    assert not flush(core, disk, core.take_output()).snapshot_due
