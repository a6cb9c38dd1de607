"""Snapshots on a real file system in tmp_path: atomic writes, header truth, damage, purge."""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import pytest

from coord.storage import SnapshotStore
from coord.storage.snapshot import MAGIC
from coord.zxid import make_zxid

HEADER_BYTES = 8 + 1 + 8 + 8 + 32
ZXID_OFFSET = 9


def z(epoch: int, counter: int) -> int:
    return make_zxid(epoch, counter)


@pytest.fixture
def store(tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(tmp_path / "data" / "snapshots")


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0xFF]))


def test_directory_is_created(tmp_path: Path) -> None:
    SnapshotStore(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()


def test_empty_store_has_no_snapshot(store: SnapshotStore) -> None:
    assert store.latest() is None
    assert store.list() == []
    assert store.purge(keep=2) == []


def test_write_then_latest_round_trip(store: SnapshotStore) -> None:
    payload = os.urandom(100_000)
    path = store.write(z(2, 17), payload)
    assert path == store.directory / "snapshot.0000000200000011"
    assert store.latest() == (z(2, 17), payload)
    assert store.list() == [(z(2, 17), path)]
    assert [name for name in os.listdir(store.directory)] == [path.name]  # no temp file left


def test_file_format_is_as_documented(store: SnapshotStore) -> None:
    path = store.write(z(1, 5), b"tree bytes")
    raw = path.read_bytes()
    magic, version, zxid, length = struct.unpack(">8sBQQ", raw[:25])
    assert (magic, version, zxid, length) == (MAGIC, 1, z(1, 5), 10)
    assert len(raw) == HEADER_BYTES + 10
    assert raw[HEADER_BYTES:] == b"tree bytes"


def test_empty_payload_and_zxid_zero(store: SnapshotStore) -> None:
    store.write(0, b"")
    assert store.latest() == (0, b"")


def test_latest_is_the_newest_by_header_zxid(store: SnapshotStore) -> None:
    for zxid in (z(1, 9), z(3, 1), z(1, 200), z(2, 5)):
        store.write(zxid, f"at {zxid}".encode())
    assert store.latest() == (z(3, 1), f"at {z(3, 1)}".encode())
    assert [zxid for zxid, _ in store.list()] == [z(1, 9), z(1, 200), z(2, 5), z(3, 1)]


def test_rewriting_a_zxid_replaces_the_file(store: SnapshotStore) -> None:
    store.write(z(1, 1), b"first")
    store.write(z(1, 1), b"second")
    assert store.latest() == (z(1, 1), b"second")
    assert len(store.list()) == 1


def test_corrupt_newest_snapshot_falls_back_to_the_older_one(
    store: SnapshotStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.write(z(1, 10), b"older state")
    newest = store.write(z(1, 20), b"newer state")
    flip_byte(newest, HEADER_BYTES + 3)
    with caplog.at_level(logging.WARNING, logger="coord.storage.snapshot"):
        assert store.latest() == (z(1, 10), b"older state")
    assert "digest" in caplog.text
    assert newest.name in caplog.text


def test_torn_newest_snapshot_falls_back_to_the_older_one(store: SnapshotStore) -> None:
    store.write(z(1, 10), b"older state")
    newest = store.write(z(1, 20), b"newer state" * 100)
    with open(newest, "r+b") as file:
        file.truncate(HEADER_BYTES + 50)
    assert store.latest() == (z(1, 10), b"older state")
    assert [zxid for zxid, _ in store.list()] == [z(1, 10)]  # a wrong length does not even look valid
    with open(newest, "r+b") as file:
        file.truncate(20)  # torn inside the header
    assert store.latest() == (z(1, 10), b"older state")


def test_damaged_header_zxid_is_caught_by_the_digest(store: SnapshotStore) -> None:
    store.write(z(1, 10), b"older state")
    newest = store.write(z(1, 20), b"newer state")
    flip_byte(newest, ZXID_OFFSET + 7)  # header now claims another zxid
    assert store.latest() == (z(1, 10), b"older state")


def test_bad_magic_and_garbage_files_are_ignored(store: SnapshotStore) -> None:
    store.write(z(1, 10), b"good")
    (store.directory / "snapshot.00000001000000ff").write_bytes(b"not a snapshot at all, but long enough" * 3)
    (store.directory / "snapshot.junk").write_bytes(b"")
    (store.directory / "unrelated.txt").write_bytes(b"hello")
    assert store.latest() == (z(1, 10), b"good")
    assert [zxid for zxid, _ in store.list()] == [z(1, 10)]


def test_huge_length_in_a_damaged_header_is_not_allocated(store: SnapshotStore) -> None:
    store.write(z(1, 10), b"good")
    path = store.write(z(1, 20), b"newer")
    with open(path, "r+b") as file:
        file.seek(17)
        file.write(struct.pack(">Q", 1 << 62))
    assert store.latest() == (z(1, 10), b"good")


def test_header_zxid_is_trusted_over_the_file_name(store: SnapshotStore) -> None:
    path = store.write(z(1, 5), b"state at 1:5")
    misleading = store.directory / "snapshot.00000009ffffffff"
    path.rename(misleading)
    assert store.latest() == (z(1, 5), b"state at 1:5")
    assert store.list() == [(z(1, 5), misleading)]
    # A newer snapshot whose name looks older still wins on its header.
    newer = store.write(z(2, 1), b"state at 2:1")
    newer.rename(store.directory / "snapshot.0000000000000001")
    assert store.latest() == (z(2, 1), b"state at 2:1")


def test_purge_keeps_the_newest_k(store: SnapshotStore) -> None:
    for counter in range(1, 7):
        store.write(z(1, counter * 10), b"state %d" % counter)
    assert store.purge(keep=2) == [z(1, 10), z(1, 20), z(1, 30), z(1, 40)]
    assert [zxid for zxid, _ in store.list()] == [z(1, 50), z(1, 60)]
    assert store.latest() == (z(1, 60), b"state 6")
    assert store.purge(keep=2) == []
    assert store.purge(keep=1) == [z(1, 50)]


def test_purge_counts_only_snapshots_that_verify(store: SnapshotStore) -> None:
    store.write(z(1, 10), b"a")
    store.write(z(1, 20), b"b")
    damaged = store.write(z(1, 30), b"c")
    flip_byte(damaged, HEADER_BYTES)
    # keep=2 must keep 1:10 and 1:20 (the two valid ones), not the damaged 1:30 and 1:20.
    assert store.purge(keep=2) == []
    assert [zxid for zxid, _ in store.list()] == [z(1, 10), z(1, 20), z(1, 30)]
    assert store.purge(keep=1) == [z(1, 10)]
    assert damaged.exists()  # newer than the kept one: left as evidence
    store.write(z(1, 40), b"d")
    assert store.purge(keep=1) == [z(1, 20), z(1, 30)]  # now it is old
    assert store.latest() == (z(1, 40), b"d")


def test_purge_deletes_nothing_when_fewer_valid_than_keep(store: SnapshotStore) -> None:
    store.write(z(1, 10), b"a")
    damaged = store.write(z(1, 20), b"b")
    flip_byte(damaged, HEADER_BYTES)
    assert store.purge(keep=2) == []
    assert store.latest() == (z(1, 10), b"a")


def test_purge_removes_stale_temp_files(store: SnapshotStore) -> None:
    store.write(z(1, 10), b"a")
    stale = store.directory / ".snapshot.0000000100000014.999.0.tmp"
    stale.write_bytes(b"half a snapshot")
    assert [zxid for zxid, _ in store.list()] == [z(1, 10)]  # never a candidate
    assert store.purge(keep=1) == []
    assert not stale.exists()


def test_purge_needs_to_keep_one(store: SnapshotStore) -> None:
    with pytest.raises(ValueError):
        store.purge(keep=0)


def test_out_of_range_zxid_is_refused(store: SnapshotStore) -> None:
    with pytest.raises(ValueError):
        store.write(1 << 64, b"")
    with pytest.raises(ValueError):
        store.write(-1, b"")


def test_snapshots_survive_a_new_store_object(tmp_path: Path) -> None:
    SnapshotStore(tmp_path / "s").write(z(4, 4), b"kept")
    assert SnapshotStore(tmp_path / "s").latest() == (z(4, 4), b"kept")
