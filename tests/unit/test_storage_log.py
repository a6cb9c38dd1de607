"""The durable log: real LMDB in tmp_path, no mocks.

Faults are real too: corruption is written into the LMDB file through lmdb itself, a
full map is a small map, an I/O error is a file-size rlimit, a crash is SIGKILL.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import coord.storage.log as log_module
from coord.errors import DataInconsistencyError, StorageError, StorageFullError
from coord.storage import ACCEPTED_EPOCH, CURRENT_EPOCH, CorruptLogError, LogOrderError, TxnLog, zxid_follows
from coord.zxid import COUNTER_MAX, counter_of, epoch_of, make_zxid

REPO = Path(__file__).resolve().parents[2]


def z(epoch: int, counter: int) -> int:
    return make_zxid(epoch, counter)


def entries(epoch: int, first: int, last: int, size: int = 20) -> list[tuple[int, bytes]]:
    return [
        (z(epoch, counter), f"txn {epoch}:{counter} ".encode().ljust(size, b".")) for counter in range(first, last + 1)
    ]


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "log"


@pytest.fixture
def txn_log(log_dir: Path) -> Iterator[TxnLog]:
    opened = TxnLog.open(log_dir)
    yield opened
    opened.close()


def corrupt_directly(log_dir: Path, edit: Callable[[lmdb.Transaction], object]) -> None:
    """Change the stored records behind the log's back, with lmdb itself."""
    env = lmdb.open(str(log_dir), max_dbs=4)
    try:
        db = env.open_db(b"log")
        with env.begin(db=db, write=True) as txn:
            edit(txn)
    finally:
        env.close()


# --- the basics -----------------------------------------------------------------------


def test_empty_log_has_no_bounds(txn_log: TxnLog) -> None:
    assert (txn_log.first_zxid, txn_log.last_zxid, txn_log.base_zxid) == (0, 0, 0)
    assert list(txn_log.read()) == []
    assert txn_log.get(z(1, 1)) is None
    assert txn_log.verify() == 0
    txn_log.append([])  # nothing to do, not an error
    assert txn_log.stats()["entries"] == 0


def test_append_then_read_round_trip(txn_log: TxnLog) -> None:
    batch = [*entries(1, 1, 3), (z(1, 4), b""), (z(1, 5), bytes(range(256)) * 40)]
    txn_log.append(batch)
    assert list(txn_log.read()) == batch
    assert list(txn_log.read(z(1, 3))) == batch[3:]
    assert list(txn_log.read(z(1, 5))) == []
    assert txn_log.get(z(1, 5)) == bytes(range(256)) * 40
    assert txn_log.get(z(1, 4)) == b""
    assert txn_log.get(z(1, 6)) is None
    assert (txn_log.first_zxid, txn_log.last_zxid) == (z(1, 1), z(1, 5))
    assert txn_log.stats()["entries"] == 5
    assert txn_log.verify() == 5


def test_appends_accumulate_across_batches(txn_log: TxnLog) -> None:
    txn_log.append(entries(1, 1, 2))
    txn_log.append(entries(1, 3, 3))
    txn_log.append(entries(1, 4, 10))
    assert [zxid for zxid, _ in txn_log.read()] == [z(1, counter) for counter in range(1, 11)]
    assert txn_log.first_zxid == z(1, 1)


def test_environment_keeps_durable_defaults(txn_log: TxnLog) -> None:
    assert txn_log.durability_flags() == {"sync": True, "metasync": True, "writemap": False, "map_async": False}


def test_errors_belong_to_their_families() -> None:
    assert issubclass(CorruptLogError, DataInconsistencyError)
    assert issubclass(LogOrderError, ValueError)


# --- order and contiguity (docs/correctness.md, rule 6) --------------------------------


@pytest.mark.parametrize(
    ("previous", "zxid", "follows"),
    [
        (0, z(0, 1), True),
        (0, z(0, 2), False),
        (0, z(1, 1), True),
        (0, z(1, 7), True),
        (z(1, 5), z(1, 6), True),
        (z(1, 5), z(1, 7), False),
        (z(1, 5), z(1, 5), False),
        (z(1, 5), z(1, 4), False),
        (z(1, 5), z(2, 1), True),
        (z(1, 5), z(3, 9), True),
        (z(2, 1), z(1, 9), False),
        (z(1, COUNTER_MAX), z(2, 0), True),
    ],
)
def test_zxid_follows(previous: int, zxid: int, follows: bool) -> None:
    assert zxid_follows(previous, zxid) is follows


@pytest.mark.parametrize(
    "bad_batch",
    [
        pytest.param(entries(1, 7, 8), id="gap-after-log"),
        pytest.param([*entries(1, 6, 7), *entries(1, 9, 9)], id="gap-inside-batch"),
        pytest.param(entries(1, 5, 6), id="repeats-last"),
        pytest.param(entries(1, 3, 3), id="goes-backwards"),
        pytest.param([*entries(1, 6, 6), *entries(1, 6, 6)], id="duplicate-in-batch"),
        pytest.param([*entries(2, 1, 2), *entries(1, 6, 6)], id="epoch-goes-backwards"),
        pytest.param([*entries(1, 6, 8), (0, b"zero")], id="zero"),
        pytest.param([(1 << 64, b"too big")], id="past-64-bits"),
    ],
)
def test_out_of_order_append_is_rejected_and_writes_nothing(
    txn_log: TxnLog, bad_batch: list[tuple[int, bytes]]
) -> None:
    txn_log.append(entries(1, 1, 5))
    with pytest.raises(LogOrderError):
        txn_log.append(bad_batch)
    assert [zxid for zxid, _ in txn_log.read()] == [z(1, counter) for counter in range(1, 6)]
    assert txn_log.last_zxid == z(1, 5)
    txn_log.append(entries(1, 6, 6))  # the log is still fine
    assert txn_log.last_zxid == z(1, 6)


def test_new_epoch_may_start_at_counter_one(txn_log: TxnLog) -> None:
    txn_log.append(entries(1, 1, 3))
    txn_log.append([*entries(2, 1, 2), *entries(5, 1, 1)])
    assert [zxid for zxid, _ in txn_log.read()] == [z(1, 1), z(1, 2), z(1, 3), z(2, 1), z(2, 2), z(5, 1)]
    assert txn_log.verify() == 6


def test_new_epoch_may_start_at_any_counter(txn_log: TxnLog) -> None:
    txn_log.append(entries(1, 1, 3))
    txn_log.append(entries(2, 40, 41))
    assert txn_log.last_zxid == z(2, 41)


def test_fresh_log_in_epoch_zero_starts_at_one(txn_log: TxnLog) -> None:
    with pytest.raises(LogOrderError):
        txn_log.append(entries(0, 2, 3))
    txn_log.append(entries(0, 1, 3))
    assert txn_log.last_zxid == z(0, 3)


# --- durability -----------------------------------------------------------------------


def test_data_and_meta_survive_close_and_reopen(log_dir: Path) -> None:
    with TxnLog.open(log_dir) as first:
        first.append(entries(3, 1, 50))
        first.set_meta(ACCEPTED_EPOCH, 4)
        first.set_meta(CURRENT_EPOCH, 3)
        first.purge_through(z(3, 10))
    with TxnLog.open(log_dir) as second:
        assert [zxid for zxid, _ in second.read()] == [z(3, counter) for counter in range(11, 51)]
        assert list(second.read()) == entries(3, 11, 50)
        assert (second.first_zxid, second.last_zxid, second.base_zxid) == (z(3, 11), z(3, 50), z(3, 10))
        assert second.get_meta(ACCEPTED_EPOCH) == 4
        assert second.get_meta(CURRENT_EPOCH) == 3
        assert second.get_meta("never set") is None
        with pytest.raises(LogOrderError):  # contiguity is checked against the reopened log
            second.append(entries(3, 52, 52))
        second.append(entries(3, 51, 51))


def test_meta_values_are_checked(txn_log: TxnLog) -> None:
    txn_log.set_meta(CURRENT_EPOCH, 0)
    assert txn_log.get_meta(CURRENT_EPOCH) == 0
    txn_log.set_meta(CURRENT_EPOCH, (1 << 64) - 1)
    assert txn_log.get_meta(CURRENT_EPOCH) == (1 << 64) - 1
    with pytest.raises(ValueError):
        txn_log.set_meta(CURRENT_EPOCH, -1)
    with pytest.raises(ValueError):
        txn_log.set_meta(CURRENT_EPOCH, 1 << 64)
    with pytest.raises(ValueError):
        txn_log.set_meta("log.base_zxid", 7)  # the log's own keys are not for callers
    assert txn_log.base_zxid == 0


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from coord.storage import TxnLog

    txn_log = TxnLog.open(Path(sys.argv[1]))
    base = txn_log.last_zxid
    txn_log.append([(base + i, b"entry %d" % (base + i)) for i in range(1, 101)])
    txn_log.append([(base + 101, b"last")])
    txn_log.set_meta("current_epoch", 7)
    print("appended", flush=True)
    if sys.argv[2] == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(0)  # no close, no atexit, no flushing of anything
    """
)


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_entries_survive_a_hard_kill_right_after_append_returns(log_dir: Path, how: str) -> None:
    # A process kill keeps the page cache, so this proves that append leaves nothing
    # behind in user space; surviving a machine crash rests on the durable flags
    # (test_environment_keeps_durable_defaults).
    with TxnLog.open(log_dir) as setup:
        setup.append(entries(1, 1, 1))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(log_dir), how], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.stdout == "appended\n", done.stderr
    assert done.returncode == (-signal.SIGKILL if how == "sigkill" else 0)
    with TxnLog.open(log_dir) as reopened:
        base = z(1, 1)
        got = list(reopened.read())
        assert got[0] == entries(1, 1, 1)[0]
        assert got[1:] == [*((base + i, b"entry %d" % (base + i)) for i in range(1, 101)), (base + 101, b"last")]
        assert reopened.last_zxid == base + 101
        assert reopened.get_meta(CURRENT_EPOCH) == 7
        assert reopened.verify() == 102


# --- truncate and purge -----------------------------------------------------------------


def test_truncate_after_deletes_the_suffix(txn_log: TxnLog) -> None:
    txn_log.append([*entries(1, 1, 5), *entries(2, 1, 4)])
    assert txn_log.truncate_after(z(1, 3)) == 6
    assert txn_log.last_zxid == z(1, 3)
    assert [zxid for zxid, _ in txn_log.read()] == [z(1, 1), z(1, 2), z(1, 3)]
    assert txn_log.truncate_after(z(1, 3)) == 0
    assert txn_log.truncate_after(z(9, 9)) == 0  # past the end: nothing to do
    with pytest.raises(LogOrderError):
        txn_log.append(entries(1, 5, 5))  # the old suffix does not count any more
    txn_log.append(entries(3, 1, 2))  # the new leader's history continues the log
    assert [zxid for zxid, _ in txn_log.read()] == [z(1, 1), z(1, 2), z(1, 3), z(3, 1), z(3, 2)]


def test_truncate_to_zero_empties_the_log(txn_log: TxnLog) -> None:
    txn_log.append(entries(1, 1, 5))
    assert txn_log.truncate_after(0) == 5
    assert (txn_log.first_zxid, txn_log.last_zxid) == (0, 0)
    assert list(txn_log.read()) == []
    txn_log.append(entries(2, 1, 1))
    assert (txn_log.first_zxid, txn_log.last_zxid) == (z(2, 1), z(2, 1))


def test_truncate_survives_reopen(log_dir: Path) -> None:
    with TxnLog.open(log_dir) as first:
        first.append(entries(1, 1, 9))
        first.truncate_after(z(1, 4))
    with TxnLog.open(log_dir) as second:
        assert second.last_zxid == z(1, 4)
        assert second.verify() == 4


def test_purge_through_deletes_the_prefix_and_keeps_contiguity(txn_log: TxnLog) -> None:
    txn_log.append(entries(1, 1, 10))
    assert txn_log.purge_through(z(1, 4)) == 4
    assert (txn_log.first_zxid, txn_log.last_zxid, txn_log.base_zxid) == (z(1, 5), z(1, 10), z(1, 4))
    assert list(txn_log.read()) == entries(1, 5, 10)
    assert txn_log.verify() == 6
    assert txn_log.purge_through(z(1, 4)) == 0
    assert txn_log.purge_through(z(1, 10)) == 6  # everything: the snapshot covers it all
    assert (txn_log.first_zxid, txn_log.last_zxid, txn_log.base_zxid) == (0, 0, z(1, 10))
    with pytest.raises(LogOrderError):
        txn_log.append(entries(1, 12, 12))  # an empty log still continues from its base
    txn_log.append(entries(1, 11, 11))
    assert txn_log.verify() == 1


def test_purge_past_the_end_moves_the_base_for_a_snapshot_sync(txn_log: TxnLog) -> None:
    txn_log.append(entries(1, 1, 3))
    assert txn_log.purge_through(z(2, 50)) == 3  # a snapshot from the leader at 2:50
    assert txn_log.base_zxid == z(2, 50)
    with pytest.raises(LogOrderError):
        txn_log.append(entries(2, 3, 3))
    txn_log.append(entries(2, 51, 52))
    assert txn_log.first_zxid == z(2, 51)


def test_truncate_below_the_purged_prefix_is_refused(txn_log: TxnLog) -> None:
    txn_log.append(entries(1, 1, 10))
    txn_log.purge_through(z(1, 5))
    with pytest.raises(LogOrderError):
        txn_log.truncate_after(z(1, 4))
    assert txn_log.truncate_after(z(1, 5)) == 5  # exactly at the base: fine
    assert (txn_log.first_zxid, txn_log.last_zxid) == (0, 0)
    txn_log.append(entries(1, 6, 6))


def test_large_purge_commits_in_chunks_and_stays_contiguous(log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_module, "_PURGE_CHUNK", 7)
    with TxnLog.open(log_dir) as txn_log:
        txn_log.append(entries(1, 1, 40))
        assert txn_log.purge_through(z(1, 30)) == 30
        assert (txn_log.first_zxid, txn_log.base_zxid) == (z(1, 31), z(1, 30))
        assert txn_log.verify() == 10


# --- corruption -------------------------------------------------------------------------


def test_bad_checksum_is_refused_naming_the_zxid(log_dir: Path) -> None:
    with TxnLog.open(log_dir) as setup:
        setup.append(entries(1, 1, 10))

    def flip_a_bit(txn: lmdb.Transaction) -> None:
        key = z(1, 6).to_bytes(8, "big")
        value = bytearray(txn.get(key))
        value[-1] ^= 0x01
        txn.put(key, bytes(value))

    corrupt_directly(log_dir, flip_a_bit)
    with TxnLog.open(log_dir) as txn_log:
        seen: list[int] = []
        with pytest.raises(CorruptLogError, match="checksum") as caught:
            for zxid, _ in txn_log.read(verify=True):
                seen.append(zxid)
        assert caught.value.zxid == z(1, 6)
        assert hex(z(1, 6)) in str(caught.value)
        assert seen == [z(1, counter) for counter in range(1, 6)]  # what came before was served
        with pytest.raises(CorruptLogError) as caught:
            txn_log.verify()
        assert caught.value.zxid == z(1, 6)
        with pytest.raises(CorruptLogError):
            txn_log.get(z(1, 6))
        assert txn_log.get(z(1, 5)) == entries(1, 5, 5)[0][1]
        # Without verification the damaged bytes are handed out as they are (for forensics).
        assert len(list(txn_log.read(verify=False))) == 10


def test_record_moved_to_another_key_fails_its_checksum(log_dir: Path) -> None:
    with TxnLog.open(log_dir) as setup:
        setup.append(entries(1, 1, 3))

    def swap(txn: lmdb.Transaction) -> None:
        first, second = z(1, 1).to_bytes(8, "big"), z(1, 2).to_bytes(8, "big")
        value_1, value_2 = txn.get(first), txn.get(second)
        txn.put(first, value_2)
        txn.put(second, value_1)

    corrupt_directly(log_dir, swap)
    with TxnLog.open(log_dir) as txn_log, pytest.raises(CorruptLogError) as caught:
        txn_log.verify()
    assert caught.value.zxid == z(1, 1)


def test_truncated_record_is_corrupt(log_dir: Path) -> None:
    with TxnLog.open(log_dir) as setup:
        setup.append(entries(1, 1, 3))
    corrupt_directly(log_dir, lambda txn: txn.put(z(1, 2).to_bytes(8, "big"), b"\x01\x02"))
    with TxnLog.open(log_dir) as txn_log, pytest.raises(CorruptLogError) as caught:
        list(txn_log.read())
    assert caught.value.zxid == z(1, 2)


def test_missing_entry_is_a_gap_that_verify_and_read_refuse(log_dir: Path) -> None:
    with TxnLog.open(log_dir) as setup:
        setup.append(entries(1, 1, 6))
    corrupt_directly(log_dir, lambda txn: txn.delete(z(1, 4).to_bytes(8, "big")))
    with TxnLog.open(log_dir) as txn_log:
        with pytest.raises(CorruptLogError, match="gap") as caught:
            txn_log.verify()
        assert caught.value.zxid == z(1, 5)
        with pytest.raises(CorruptLogError, match="gap"):
            list(txn_log.read())


def test_log_that_does_not_follow_its_base_is_corrupt(log_dir: Path) -> None:
    with TxnLog.open(log_dir) as setup:
        setup.append(entries(1, 1, 6))
        setup.purge_through(z(1, 2))
    corrupt_directly(log_dir, lambda txn: txn.delete(z(1, 3).to_bytes(8, "big")))
    with TxnLog.open(log_dir) as txn_log, pytest.raises(CorruptLogError) as caught:
        txn_log.verify()
    assert caught.value.zxid == z(1, 4)


# --- a full map, and I/O errors ------------------------------------------------------------


def fill(txn_log: TxnLog, batch: int, size: int = 100) -> int:
    """Append batches until the log is full; return the last zxid that made it."""
    with pytest.raises(StorageFullError):
        while True:
            start = (txn_log.last_zxid or z(1, 0)) + 1
            txn_log.append([(start + i, b"f" * size) for i in range(batch)])
    return txn_log.last_zxid


@pytest.mark.parametrize("batch", [1, 25])
def test_full_map_refuses_appends_whole_and_recovers_after_purge(log_dir: Path, batch: int) -> None:
    with TxnLog.open(log_dir, map_bytes=256 << 10) as txn_log:
        last = fill(txn_log, batch)
        count = txn_log.stats()["entries"]
        assert count > 100
        assert count % batch == 0  # no batch was written in part
        # Nothing partial, the log unchanged and readable.
        with pytest.raises(StorageFullError):
            txn_log.append([(last + i, b"x" * 100) for i in range(1, 200)])
        assert txn_log.last_zxid == last
        assert txn_log.stats()["entries"] == count
        assert txn_log.get(last + 1) is None
        assert txn_log.verify() == count
        assert len(list(txn_log.read())) == count
        # Epochs can still be made durable, and a purge frees room for appends.
        txn_log.set_meta(ACCEPTED_EPOCH, 2)
        assert txn_log.purge_through(z(1, count // 2)) == count // 2
        txn_log.append([(last + i, b"y" * 100) for i in range(1, 11)])
        assert txn_log.last_zxid == last + 10
        assert txn_log.verify() == count - count // 2 + 10


def test_full_map_recovers_after_reopening_with_a_larger_map(log_dir: Path) -> None:
    with TxnLog.open(log_dir, map_bytes=256 << 10) as txn_log:
        last = fill(txn_log, 10)
        count = txn_log.stats()["entries"]
    with TxnLog.open(log_dir, map_bytes=4 << 20) as txn_log:
        assert txn_log.stats()["map_bytes"] == 4 << 20
        txn_log.append([(last + i, b"z" * 100) for i in range(1, 1001)])
        assert txn_log.verify() == count + 1000


def test_full_map_can_still_truncate(log_dir: Path) -> None:
    with TxnLog.open(log_dir, map_bytes=256 << 10) as txn_log:
        last = fill(txn_log, 1)
        assert txn_log.truncate_after(last - 100) == 100
        txn_log.append([(last - 99, b"again")])


def test_too_small_map_is_refused(log_dir: Path) -> None:
    with pytest.raises(ValueError):
        TxnLog.open(log_dir, map_bytes=64 << 10)


IO_ERROR_CHILD = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    from coord.errors import StorageError
    from coord.storage import TxnLog

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    txn_log = TxnLog.open(Path(sys.argv[1]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (512 << 10, resource.RLIM_INFINITY))
    zxid = 1 << 32
    try:
        while True:
            txn_log.append([(zxid + i, b"x" * 1000) for i in range(1, 6)])
            zxid += 5
    except StorageError as error:
        print(type(error).__name__, zxid, txn_log.last_zxid, txn_log.verify())
    try:
        txn_log.append([(zxid + 1, b"small")])  # would fit, but the log is fail-stop now
    except StorageError as error:
        print("refused" if "reopen" in str(error) else "other")
    """
)


def test_io_error_fails_the_write_whole_and_stops_writes_until_reopened(log_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", IO_ERROR_CHILD, str(log_dir)], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    first_line, second_line = done.stdout.splitlines()
    kind, last_tried, last_zxid, verified = first_line.split()
    assert kind == "StorageError"
    assert int(last_zxid) == int(last_tried)  # the failed batch left nothing behind
    assert second_line == "refused"
    with TxnLog.open(log_dir) as reopened:
        assert reopened.last_zxid == int(last_zxid)
        assert reopened.verify() == int(verified) > 0
        reopened.append([(int(last_zxid) + 1, b"after the restart")])


def test_closed_log_refuses_writes(log_dir: Path) -> None:
    txn_log = TxnLog.open(log_dir)
    txn_log.close()
    txn_log.close()  # idempotent
    with pytest.raises(StorageError):
        txn_log.append(entries(1, 1, 1))


# --- threads -----------------------------------------------------------------------------


def test_reads_from_another_thread_see_committed_prefixes(txn_log: TxnLog) -> None:
    batches = [entries(1, start, start + 4) for start in range(1, 500, 5)]
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            for batch in batches:
                txn_log.append(batch)
        except BaseException as error:  # pragma: no cover - reported below
            failures.append(error)

    thread = threading.Thread(target=writer)
    thread.start()
    while thread.is_alive():
        reported = txn_log.last_zxid  # updated after the commit: always already readable
        seen = [zxid for zxid, _ in txn_log.read()]
        assert len(seen) % 5 == 0  # whole batches only
        assert seen == [z(1, counter) for counter in range(1, len(seen) + 1)]
        assert (seen[-1] if seen else 0) >= reported
    thread.join()
    assert not failures
    assert txn_log.last_zxid == z(1, 500)


# --- a model -----------------------------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 8), st.booleans()),
        st.tuples(st.just("truncate"), st.integers(0, 40), st.booleans()),
        st.tuples(st.just("purge"), st.integers(0, 40), st.booleans()),
        st.tuples(st.just("reopen"), st.just(0), st.just(False)),
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(ops=operations, seed=st.integers(0, 2**32))
def test_log_matches_a_model_of_itself(ops: list[tuple[str, int, bool]], seed: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(dir=Path(tempfile.gettempdir())) as tmp:
        directory = Path(tmp) / "log"
        txn_log = TxnLog.open(directory)
        model: list[tuple[int, bytes]] = []
        base = 0
        try:
            for op, amount, new_epoch in ops:
                previous = model[-1][0] if model else base
                if op == "append":
                    epoch = epoch_of(previous) + (1 if new_epoch or previous == 0 else 0)
                    first = 1 if epoch != epoch_of(previous) else counter_of(previous) + 1
                    batch = [(z(epoch, first + i), rng.randbytes(rng.randrange(50))) for i in range(amount)]
                    txn_log.append(batch)
                    model.extend(batch)
                elif op == "truncate":
                    target = model[amount % len(model)][0] if model and not new_epoch else previous
                    if target < base:
                        continue
                    assert txn_log.truncate_after(target) == sum(1 for zxid, _ in model if zxid > target)
                    model = [entry for entry in model if entry[0] <= target]
                elif op == "purge":
                    target = model[amount % len(model)][0] if model else base + amount
                    assert txn_log.purge_through(target) == sum(1 for zxid, _ in model if zxid <= target)
                    model = [entry for entry in model if entry[0] > target]
                    base = max(base, target)
                else:
                    txn_log.close()
                    txn_log = TxnLog.open(directory)
                assert list(txn_log.read()) == model
                assert txn_log.last_zxid == (model[-1][0] if model else 0)
                assert txn_log.first_zxid == (model[0][0] if model else 0)
                assert txn_log.base_zxid == base
                assert txn_log.verify() == len(model)
        finally:
            txn_log.close()
