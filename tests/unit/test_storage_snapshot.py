"""Snapshots on a real file system in tmp_path: atomic writes, header truth, damage, purge,
and streamed snapshots (staged in chunks, committed, read back in pieces)."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from coord.errors import StorageError, StorageFullError
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


# --- streamed snapshots: stage, commit, read back in pieces --------------------------


def stage_in_chunks(store: SnapshotStore, zxid: int, payload: bytes, chunk: int) -> None:
    for offset in range(0, len(payload), chunk):
        store.stage(zxid, offset, payload[offset : offset + chunk])


def temp_files(store: SnapshotStore) -> list[str]:
    return sorted(name for name in os.listdir(store.directory) if name.startswith("."))


def test_staged_snapshot_is_the_file_write_makes(store: SnapshotStore, tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    stage_in_chunks(store, z(3, 7), payload, 65_536)
    assert store.latest() is None  # nothing counts before the commit
    assert len(temp_files(store)) == 1
    path = store.commit_staged(z(3, 7), len(payload), hashlib.sha256(payload).digest())
    written = SnapshotStore(tmp_path / "other").write(z(3, 7), payload)
    assert path == store.directory / written.name
    assert path.read_bytes() == written.read_bytes()
    assert path.stat().st_mode == written.stat().st_mode
    assert temp_files(store) == []
    assert store.latest() == (z(3, 7), payload)
    assert b"".join(store.read_pieces(z(3, 7))) == payload


def test_staging_an_empty_payload(store: SnapshotStore) -> None:
    store.stage(0, 0, b"")
    store.commit_staged(0, 0, hashlib.sha256(b"").digest())
    assert store.latest() == (0, b"")
    assert list(store.read_pieces(0)) == []


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        ("size", "18 bytes as staged, but 19 were announced"),
        ("digest", "does not match the announced sha256"),
        ("zxid", "the staging is of 0x200000002"),
    ],
)
def test_a_commit_that_does_not_match_discards_the_staging(store: SnapshotStore, wrong: str, message: str) -> None:
    store.write(z(1, 1), b"older")
    payload = b"the staged payload"
    stage_in_chunks(store, z(2, 2), payload, 5)
    size, digest, zxid = len(payload), hashlib.sha256(payload).digest(), z(2, 2)
    if wrong == "size":
        size += 1
    elif wrong == "digest":
        digest = hashlib.sha256(b"something else").digest()
    else:
        zxid = z(2, 3)
    with pytest.raises(StorageError, match=message):
        store.commit_staged(zxid, size, digest)
    assert temp_files(store) == []
    assert [found for found, _ in store.list()] == [z(1, 1)]
    assert store.latest() == (z(1, 1), b"older")
    with pytest.raises(StorageError, match="nothing is staged"):  # the staging is gone
        store.commit_staged(z(2, 2), len(payload), hashlib.sha256(payload).digest())


def test_a_chunk_that_does_not_follow_is_refused_and_writes_nothing(store: SnapshotStore) -> None:
    with pytest.raises(StorageError, match="nothing is staged"):
        store.stage(z(1, 1), 10, b"late")
    store.stage(z(1, 1), 0, b"0123456789")
    (staging,) = temp_files(store)
    size = (store.directory / staging).stat().st_size
    for zxid, offset in [(z(1, 1), 9), (z(1, 1), 11), (z(1, 2), 10)]:
        with pytest.raises(StorageError, match="10 bytes are staged of 0x100000001"):
            store.stage(zxid, offset, b"X")
    assert (store.directory / staging).stat().st_size == size
    store.stage(z(1, 1), 10, b"abc")  # the staging itself is intact
    payload = b"0123456789abc"
    store.commit_staged(z(1, 1), len(payload), hashlib.sha256(payload).digest())
    assert store.latest() == (z(1, 1), payload)


def test_offset_zero_starts_over_whatever_was_staged(store: SnapshotStore) -> None:
    store.stage(z(1, 1), 0, b"first attempt, never finished")
    store.stage(z(1, 2), 0, b"second")
    assert len(temp_files(store)) == 1
    store.stage(z(1, 2), 0, b"third")  # the same zxid from the start again
    store.stage(z(1, 2), 5, b"!")
    assert len(temp_files(store)) == 1
    store.commit_staged(z(1, 2), 6, hashlib.sha256(b"third!").digest())
    assert store.latest() == (z(1, 2), b"third!")


def test_discard_staged_is_idempotent(store: SnapshotStore) -> None:
    store.discard_staged()
    store.stage(z(1, 1), 0, b"abc")
    store.discard_staged()
    store.discard_staged()
    assert temp_files(store) == []
    with pytest.raises(StorageError):
        store.stage(z(1, 1), 3, b"def")


def test_a_staging_left_by_a_crash_is_removed_and_the_older_snapshot_stays(tmp_path: Path) -> None:
    directory = tmp_path / "snapshots"
    before = SnapshotStore(directory)
    before.write(z(1, 10), b"older state")
    before.stage(z(2, 1), 0, b"half of a")
    before.stage(z(2, 1), 9, b" snapshot")
    # the process dies here; a new one starts on the same directory
    after = SnapshotStore(directory)
    assert after.latest() == (z(1, 10), b"older state")
    assert [zxid for zxid, _ in after.list()] == [z(1, 10)]
    assert len(temp_files(after)) == 1
    assert after.purge(keep=1) == []
    assert temp_files(after) == []
    assert after.latest() == (z(1, 10), b"older state")
    with pytest.raises(StorageError, match="nothing is staged"):
        after.commit_staged(z(2, 1), 18, hashlib.sha256(b"half of a snapshot").digest())


def test_purge_leaves_the_staging_in_progress_alone(store: SnapshotStore) -> None:
    store.write(z(1, 10), b"a")
    store.stage(z(2, 1), 0, b"in progress")
    assert store.purge(keep=1) == []
    assert len(temp_files(store)) == 1
    store.commit_staged(z(2, 1), 11, hashlib.sha256(b"in progress").digest())
    assert store.purge(keep=1) == [z(1, 10)]


def test_each_stage_is_fsynced(store: SnapshotStore, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    store.stage(z(1, 1), 0, b"a")
    first = len(synced)
    assert first >= 1
    store.stage(z(1, 1), 1, b"b")
    assert len(synced) == first + 1


@pytest.mark.parametrize(("code", "error"), [(errno.ENOSPC, StorageFullError), (errno.EIO, StorageError)])
def test_a_failed_stage_is_a_storage_error_and_discards_the_staging(
    store: SnapshotStore, monkeypatch: pytest.MonkeyPatch, code: int, error: type[Exception]
) -> None:
    store.stage(z(1, 1), 0, b"abc")

    def failing_pwrite(fd: int, data: object, offset: int) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "pwrite", failing_pwrite)
    with pytest.raises(error) as raised:
        store.stage(z(1, 1), 3, b"def")
    assert type(raised.value) is error
    assert temp_files(store) == []
    monkeypatch.undo()
    with pytest.raises(StorageError, match="nothing is staged"):
        store.stage(z(1, 1), 3, b"def")


def test_stage_refuses_an_out_of_range_zxid(store: SnapshotStore) -> None:
    with pytest.raises(ValueError):
        store.stage(1 << 64, 0, b"")


@pytest.mark.parametrize("piece_bytes", [1, 1000, 4096, 1 << 20])
def test_read_pieces_yields_bounded_pieces_of_the_payload(store: SnapshotStore, piece_bytes: int) -> None:
    payload = os.urandom(50_000)
    store.write(z(1, 1), b"another snapshot")
    store.write(z(1, 2), payload)
    pieces = list(store.read_pieces(z(1, 2), piece_bytes))
    assert b"".join(pieces) == payload
    assert max(len(piece) for piece in pieces) <= piece_bytes
    assert b"".join(store.read_pieces(z(1, 1))) == b"another snapshot"


def test_read_pieces_needs_a_valid_snapshot_of_that_zxid(store: SnapshotStore) -> None:
    store.write(z(1, 1), b"good")
    damaged = store.write(z(1, 2), b"damaged")
    flip_byte(damaged, HEADER_BYTES + 1)
    pieces = store.read_pieces(z(1, 2))  # lazy: nothing happens until the first piece
    with pytest.raises(StorageError, match="no valid snapshot 0x100000002"):
        next(pieces)
    with pytest.raises(StorageError, match="no valid snapshot 0x100000003"):
        list(store.read_pieces(z(1, 3)))
    with pytest.raises(ValueError):
        list(store.read_pieces(z(1, 1), 0))


def test_read_pieces_verifies_before_yielding(store: SnapshotStore) -> None:
    payload = os.urandom(3 << 20)
    path = store.write(z(1, 1), payload)
    flip_byte(path, HEADER_BYTES + len(payload) - 1)  # the last byte: found only at the end
    yielded: list[bytes] = []
    with pytest.raises(StorageError):
        for piece in store.read_pieces(z(1, 1)):
            yielded.append(piece)
    assert yielded == []


def test_read_pieces_keeps_reading_the_file_it_verified(store: SnapshotStore) -> None:
    store.write(z(1, 1), b"a" * 5000)
    pieces = store.read_pieces(z(1, 1), 1000)
    first = next(pieces)
    store.write(z(1, 1), b"b" * 5000)  # rewritten (renamed over) meanwhile
    assert first + b"".join(pieces) == b"a" * 5000


# --- decoding while verifying (recovery and a SNAP install read each file once) ------


def strict_load(pieces: Iterator[bytes]) -> bytes:
    """A loader that refuses payloads starting with b"bad", after reading them whole."""
    payload = b"".join(pieces)
    if payload.startswith(b"bad"):
        raise ValueError("not a payload this loader reads")
    return payload


def test_load_latest_decodes_in_the_pass_that_verifies(store: SnapshotStore) -> None:
    payload = os.urandom(3 << 20)  # several pieces
    store.write(z(1, 5), payload)
    seen: list[int] = []

    def load(pieces: Iterator[bytes]) -> int:
        for piece in pieces:
            seen.append(len(piece))
        return len(seen)

    assert store.load_latest(load) == (z(1, 5), 3)
    assert seen == [1 << 20] * 3  # bounded pieces, never the whole payload
    assert store.load_latest(strict_load) == (z(1, 5), payload)


def test_load_latest_counts_a_result_only_once_the_digest_matched(
    store: SnapshotStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.write(z(1, 10), b"older state")
    newest = store.write(z(1, 20), b"newer state")
    flip_byte(newest, HEADER_BYTES + 8)  # the loader accepts the damaged bytes; the digest does not
    with caplog.at_level(logging.WARNING, logger="coord.storage.snapshot"):
        assert store.load_latest(strict_load) == (z(1, 10), b"older state")
    assert "digest mismatch" in caplog.text


def test_load_latest_skips_a_damaged_file_the_loader_refused_first(store: SnapshotStore) -> None:
    store.write(z(1, 10), b"older state")
    newest = store.write(z(1, 20), b"bad and damaged")
    flip_byte(newest, HEADER_BYTES + 10)  # damaged: the loader's refusal is not the file's fault
    assert store.load_latest(strict_load) == (z(1, 10), b"older state")


def test_load_latest_raises_for_a_file_that_verifies_but_does_not_decode(store: SnapshotStore) -> None:
    store.write(z(1, 10), b"older state")
    store.write(z(1, 20), b"bad payload, written as it is")
    with pytest.raises(ValueError, match=r"the snapshot 0x100000014 in .* does not decode: not a payload"):
        store.load_latest(strict_load)


def test_commit_staged_with_a_loader_that_refuses_installs_nothing(store: SnapshotStore) -> None:
    store.write(z(1, 10), b"older state")
    payload = b"bad image from a leader"
    store.stage(z(2, 1), 0, payload)
    with pytest.raises(StorageError, match="as staged does not decode: not a payload"):
        store.commit_staged(z(2, 1), len(payload), hashlib.sha256(payload).digest(), load=strict_load)
    assert store.latest() == (z(1, 10), b"older state")
    assert [name for name in os.listdir(store.directory) if name.startswith(".")] == []  # staging gone
    loaded: list[bytes] = []
    good = b"good image"
    store.stage(z(2, 1), 0, good)
    store.commit_staged(z(2, 1), len(good), hashlib.sha256(good).digest(), load=lambda p: loaded.append(b"".join(p)))
    assert loaded == [good]
    assert store.latest() == (z(2, 1), good)
