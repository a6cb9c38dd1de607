"""A SNAP streamed end to end below the ZAB core: the leader's tree serialised lazily in
pieces, staged on the follower chunk by chunk by write_records, installed by the
snapshot record (the log truncated as for a whole snapshot), and the tree rebuilt from
the file in pieces; plus the piece reader the rebuilding decodes through."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from coord.cbor_pieces import PieceReader, array_items
from coord.durable import LogDurableState, write_records
from coord.errors import StorageError
from coord.protocol import CreateMode
from coord.storage import SnapshotStore, TxnLog
from coord.tree import DataTree
from coord.txn import CreateSessionTxn, CreateTxn, SetDataTxn, Txn, TxnBody
from coord.zab.types import EpochRecord, LogEntry, Record, SnapshotChunkRecord, SnapshotRecord
from coord.zxid import make_zxid

CHUNK_BYTES = 64 << 10


def z(epoch: int, counter: int) -> int:
    return make_zxid(epoch, counter)


def sample_tree(nodes: int = 3_000, *, epoch: int = 2) -> DataTree:
    tree = DataTree()
    counter = 0

    def apply(body: TxnBody) -> None:
        nonlocal counter
        counter += 1
        tree.apply(Txn(zxid=z(epoch, counter), time_ms=counter, session_id=0, xid=0, body=body))

    apply(CreateSessionTxn(timeout_ms=4_000, password=b"pw"))
    apply(CreateTxn(path="/e", data=b"", mode=CreateMode.EPHEMERAL, ephemeral_owner=z(epoch, 1)))
    apply(CreateTxn(path="/d", data=b"", mode=CreateMode.PERSISTENT))
    for index in range(nodes):
        apply(CreateTxn(path=f"/d/n{index:05d}", data=b"%d" % index * 20, mode=CreateMode.PERSISTENT))
    apply(SetDataTxn(path="/d", data=b"done"))
    return tree


def chunk_records(zxid: int, pieces: Iterator[bytes], first_seq: int) -> tuple[list[Record], int, bytes]:
    """What a follower persists of a streamed SNAP: chunks of at most CHUNK_BYTES cut
    from the leader's pieces, whatever their sizes, then the size and the digest."""
    records: list[Record] = []
    hasher = hashlib.sha256()
    offset = 0
    pending = b""
    for piece in pieces:
        pending += piece
        while len(pending) >= CHUNK_BYTES:
            data, pending = pending[:CHUNK_BYTES], pending[CHUNK_BYTES:]
            records.append(SnapshotChunkRecord(seq=first_seq + len(records), zxid=zxid, offset=offset, data=data))
            hasher.update(data)
            offset += len(data)
    if pending or not records:
        records.append(SnapshotChunkRecord(seq=first_seq + len(records), zxid=zxid, offset=offset, data=pending))
        hasher.update(pending)
        offset += len(pending)
    return records, offset, hasher.digest()


@pytest.fixture
def txn_log(tmp_path: Path) -> Iterator[TxnLog]:
    opened = TxnLog.open(tmp_path / "log")
    yield opened
    opened.close()


@pytest.fixture
def snapshots(tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(tmp_path / "snapshots")


def entries(epoch: int, first: int, last: int) -> list[tuple[int, bytes]]:
    return [(z(epoch, counter), b"txn %d" % counter) for counter in range(first, last + 1)]


# --- the leader's side --------------------------------------------------------------


def test_the_leaders_snapshot_is_lazy_and_taken_at_call_time(txn_log: TxnLog, snapshots: SnapshotStore) -> None:
    tree = sample_tree()
    durable = LogDurableState(txn_log, 0, lambda: tree, snapshots=snapshots)
    digest = tree.digest()
    zxid, pieces = durable.snapshot()
    assert zxid == tree.last_zxid
    assert isinstance(pieces, Iterator)
    tree.apply(Txn(zxid=zxid + 1, time_ms=0, session_id=0, xid=0, body=SetDataTxn(path="/d", data=b"later")))
    assert hashlib.sha256(b"".join(pieces)).hexdigest() == digest  # the tree as it was at the call


# --- the follower's side ------------------------------------------------------------


def test_chunks_then_the_snapshot_record_install_it_and_replace_the_log(
    txn_log: TxnLog, snapshots: SnapshotStore
) -> None:
    leader_tree = sample_tree(epoch=2)
    zxid, pieces = LogDurableState(txn_log, 0, lambda: leader_tree, snapshots=snapshots).snapshot()
    txn_log.append(entries(1, 1, 5))  # the follower's own history, with a suffix the leader lacks
    records: list[Record] = [LogEntry(seq=1, zxid=z(1, 6), txn=b"txn 6"), EpochRecord(seq=2, accepted_epoch=2)]
    chunks, size, digest = chunk_records(zxid, pieces, first_seq=3)
    assert len(chunks) > 3
    assert all(len(record.data) <= CHUNK_BYTES for record in chunks if isinstance(record, SnapshotChunkRecord))
    records += chunks
    records.append(SnapshotRecord(seq=3 + len(chunks), zxid=zxid, size=size, digest=digest))
    installed = write_records(txn_log, snapshots, records)
    assert installed is not None and installed.digest() == leader_tree.digest()  # decoded as it was installed
    # the snapshot is the history now: the log holds nothing, its base is the snapshot
    assert (txn_log.first_zxid, txn_log.last_zxid, txn_log.base_zxid) == (0, 0, zxid)
    assert list(txn_log.read()) == []
    assert snapshots.list()[-1][0] == zxid
    assert [name for name in snapshots.directory.iterdir() if name.name.startswith(".")] == []
    # the server built on it loads the same tree, from the file in pieces
    durable = LogDurableState(txn_log, zxid, lambda: leader_tree, snapshots=snapshots)
    loaded = durable.load_tree(zxid)
    assert loaded.digest() == leader_tree.digest()
    assert loaded.last_zxid == zxid == durable.last_zxid()
    txn_log.append([(zxid + 1, b"next")])  # and appends follow the snapshot


def test_a_snapshot_behind_the_log_keeps_nothing_of_it(txn_log: TxnLog, snapshots: SnapshotStore) -> None:
    tree = sample_tree(50, epoch=1)  # at z(1, 54)
    txn_log.append(entries(1, 1, 60))
    chunks, size, digest = chunk_records(tree.last_zxid, DataTree.image_pieces(tree.image()), first_seq=1)
    write_records(txn_log, snapshots, [*chunks, SnapshotRecord(seq=99, zxid=tree.last_zxid, size=size, digest=digest)])
    assert (txn_log.first_zxid, txn_log.last_zxid, txn_log.base_zxid) == (0, 0, tree.last_zxid)


def test_a_snapshot_that_does_not_match_leaves_the_log_alone(txn_log: TxnLog, snapshots: SnapshotStore) -> None:
    tree = sample_tree(50)
    txn_log.append(entries(1, 1, 5))
    chunks, size, _ = chunk_records(tree.last_zxid, DataTree.image_pieces(tree.image()), first_seq=2)
    records: list[Record] = [LogEntry(seq=1, zxid=z(1, 6), txn=b"txn 6"), *chunks]
    records.append(SnapshotRecord(seq=50, zxid=tree.last_zxid, size=size, digest=bytes(32)))
    records.append(LogEntry(seq=51, zxid=z(1, 7), txn=b"txn 7"))
    with pytest.raises(StorageError, match="sha256"):
        write_records(txn_log, snapshots, records)
    assert txn_log.last_zxid == z(1, 6)  # the records before the failing one are durable, none after
    assert (txn_log.first_zxid, txn_log.base_zxid) == (z(1, 1), 0)
    assert snapshots.list() == []
    assert [path.name for path in snapshots.directory.iterdir()] == []


@pytest.mark.parametrize("problem", ["not an image", "the tree of another zxid"])
def test_a_snap_whose_image_does_not_decode_installs_nothing(
    txn_log: TxnLog, snapshots: SnapshotStore, problem: str
) -> None:
    """A leader's bug (or a hostile peer) sends an image that verifies but does not decode:
    the follower's old snapshot and log stay as they were, and it says why."""
    old = sample_tree(20, epoch=1)
    snapshots.write(old.last_zxid, DataTree.serialize_image(old.image()))
    txn_log.append([(old.last_zxid + 1, b"a later txn")])
    tree = sample_tree(50, epoch=2)
    payload = b"\x82\x01\x02" if problem == "not an image" else DataTree.serialize_image(tree.image())
    zxid = tree.last_zxid + (problem != "not an image")
    chunks, size, digest = chunk_records(zxid, iter([payload]), first_seq=1)
    with pytest.raises(StorageError, match="as staged does not decode"):
        write_records(txn_log, snapshots, [*chunks, SnapshotRecord(seq=9, zxid=zxid, size=size, digest=digest)])
    assert [found for found, _ in snapshots.list()] == [old.last_zxid]
    assert (txn_log.first_zxid, txn_log.last_zxid) == (old.last_zxid + 1, old.last_zxid + 1)
    assert [path.name for path in snapshots.directory.iterdir() if path.name.startswith(".")] == []


def test_load_tree_takes_the_tree_held_from_the_install(txn_log: TxnLog, snapshots: SnapshotStore) -> None:
    tree = sample_tree(10)
    durable = LogDurableState(txn_log, 0, lambda: tree, snapshots=snapshots)
    durable.hold_tree(tree)
    assert durable.load_tree(tree.last_zxid) is tree  # no second read of the file
    with pytest.raises(StorageError, match="no valid snapshot"):
        durable.load_tree(tree.last_zxid)  # held once only; and no file was written here


def test_load_tree_needs_that_snapshot(txn_log: TxnLog, snapshots: SnapshotStore) -> None:
    tree = sample_tree(10)
    snapshots.write(tree.last_zxid, DataTree.serialize_image(tree.image()))
    durable = LogDurableState(txn_log, tree.last_zxid, lambda: tree, snapshots=snapshots)
    assert durable.load_tree(tree.last_zxid).digest() == tree.digest()
    with pytest.raises(StorageError, match="no valid snapshot"):
        durable.load_tree(tree.last_zxid + 1)
    snapshots.write(z(9, 9), b"\x81\x01")  # valid as a file, not as a tree
    with pytest.raises(ValueError, match="malformed tree image"):
        durable.load_tree(z(9, 9))


# --- the piece reader ---------------------------------------------------------------


def test_piece_reader_reads_across_pieces_and_seeks_back_within_its_last_read() -> None:
    reader = PieceReader([b"ab", b"", b"cdefg", b"h", b"ijkl"])
    assert reader.seekable() and reader.readable()
    assert reader.read(3) == b"abc"
    assert reader.read(4) == b"defg"
    assert reader.tell() == 7
    assert reader.seek(-2, io.SEEK_CUR) == 5
    assert reader.read(2) == b"fg"
    with pytest.raises(io.UnsupportedOperation):
        reader.seek(-3, io.SEEK_CUR)  # before the last read's bytes
    assert reader.seek(6) == 6
    assert reader.read(100) == b"ghijkl"
    assert reader.read(1) == b""
    assert PieceReader([b"ab", b"cd"]).read() == b"abcd"


def test_array_items_decode_lazily_from_any_pieces() -> None:
    items = [{"a": 1}, b"x" * 100_000, [1, [2, 3]], "text", None, 7]
    data = cbor2.dumps(items)
    for size in (1, 3, 1000, len(data)):
        assert list(array_items(data[at : at + size] for at in range(0, len(data), size))) == items
    pulled: list[int] = []

    def pieces() -> Iterator[bytes]:
        for at in range(0, len(data), 1000):
            pulled.append(at)
            yield data[at : at + 1000]

    decoded = array_items(pieces())
    assert next(decoded) == {"a": 1}
    assert len(pulled) < 100  # read ahead a little, not the 100 KB item after it
    assert list(decoded) == items[1:]


def test_array_items_of_an_indefinite_length_array() -> None:
    """A writer that does not know how many elements it will stream ends them with a break."""
    items = [{"a": 1}, b"x" * 100_000, [1, [2, 3]], "text", None, 7, b"\xff"]
    data = b"\x9f" + b"".join(cbor2.dumps(item) for item in items) + b"\xff"
    for size in (1, 3, 1000, len(data)):
        assert list(array_items(data[at : at + size] for at in range(0, len(data), size))) == items
    assert list(array_items([b"\x9f\xff"])) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "ends inside the array head"),
        (b"\x98", "ends inside the array head"),
        (b"\xa0", "not a CBOR array"),
        (b"\x9c", "not a well-formed CBOR array head"),
        (b"\x82\x01", "premature end"),
        (b"\x81\x01\x02", "bytes remain after the last of the array's 1 elements"),
        (b"\x9f\x01\x02", "the stream ends inside the array, after 2 elements"),
        (b"\x9f\x01\xff\x00", "bytes remain after the last of the array's 1 elements"),
        (b"\x9f\x82\x01", "premature end"),
    ],
)
def test_array_items_refuse_what_is_not_one_array(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        list(array_items([data]))


def test_write_pieces_makes_the_file_write_makes_and_leaves_nothing_when_the_pieces_fail(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 40
    pieces = [payload[start : start + 777] for start in range(0, len(payload), 777)]
    one, two = SnapshotStore(tmp_path / "one"), SnapshotStore(tmp_path / "two")
    path = one.write(0x105, payload)
    assert two.write_pieces(0x105, iter(pieces)).name == path.name
    assert (tmp_path / "two" / path.name).read_bytes() == path.read_bytes()
    assert two.latest() == (0x105, payload)

    def broken() -> Iterator[bytes]:
        yield pieces[0]
        raise ValueError("the image could not be serialised")

    with pytest.raises(ValueError, match="serialised"):
        two.write_pieces(0x106, broken())
    assert sorted(entry.name for entry in (tmp_path / "two").iterdir()) == [path.name]
    assert two.latest() == (0x105, payload)
