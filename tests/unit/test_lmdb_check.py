"""The LMDB meta-page check that runs before the log is mapped (coord/storage/lmdb_check.py).

Real LMDB files made by the ``lmdb`` package and by :class:`TxnLog`; damage is done
to the files themselves (truncate, overwrite), as an operator or a bad copy would.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest

from coord.errors import StorageFullError
from coord.storage import TxnLog
from coord.storage.lmdb_check import LmdbFileError, LmdbMeta, check_data_file, free_pages, read_meta
from coord.zxid import epoch_of, make_zxid

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def quiet_full_maps() -> Iterator[None]:
    """Full maps are part of the workloads here; their error lines are noise."""
    logger = logging.getLogger("coord.storage.log")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def make_env(directory: Path, records: int = 200, size: int = 3000) -> dict[str, int]:
    """An LMDB environment written by the lmdb package; returns what LMDB says of it."""
    env = lmdb.open(str(directory), map_size=64 << 20)
    try:
        with env.begin(write=True) as txn:
            for n in range(records):
                txn.put(b"%08d" % n, bytes([n % 256]) * size)
        with env.begin(write=True) as txn:  # a second commit: the other meta page is newer
            for n in range(0, records, 2):
                txn.delete(b"%08d" % n)
        info, stat = env.info(), env.stat()
        return {"last_pgno": info["last_pgno"], "last_txnid": info["last_txnid"], "psize": stat["psize"]}
    finally:
        env.close()


def random_log_ops(txn_log: TxnLog, rng: random.Random, steps: int) -> Iterator[None]:
    """Appends, purges, truncations and meta writes as the server makes them; yields after each."""
    zxid = make_zxid(1, 0)
    for _ in range(steps):
        op = rng.random()
        try:
            if op < 0.6:
                count = rng.randint(1, 100)
                size = rng.choice([10, 200, 3000, 9000, 60000])
                txn_log.append([(zxid + i, rng.randbytes(rng.randint(1, size))) for i in range(1, count + 1)])
                zxid += count
            elif op < 0.8 and txn_log.last_zxid:
                txn_log.purge_through(rng.randint(txn_log.first_zxid, txn_log.last_zxid))
            elif op < 0.9 and txn_log.last_zxid:
                txn_log.truncate_after(rng.randint(max(txn_log.first_zxid, txn_log.base_zxid), txn_log.last_zxid))
                zxid = make_zxid(epoch_of(max(txn_log.last_zxid, txn_log.base_zxid)) + 1, 0)
            else:
                txn_log.set_meta("accepted_epoch", rng.randint(0, 99))
        except StorageFullError:
            txn_log.purge_through(txn_log.last_zxid or txn_log.base_zxid)
        yield


def pages_in_trees(path: Path, txn_log: TxnLog, meta: LmdbMeta) -> int:
    """Pages used by every B+tree of the log, the free list's own included, plus the meta pages."""
    import struct

    from coord.storage import lmdb_check

    with open(path, "rb") as file:
        file.seek((meta.txnid % 2) * meta.page_bytes)  # LMDB writes meta page txnid % 2
        fields = lmdb_check._META.unpack_from(file.read(lmdb_check._READ_BYTES), lmdb_check._META_OFFSET)
    assert fields[-1] == meta.txnid, struct.error("not the newest meta page")
    free_db, main_db = sum(fields[7:10]), sum(fields[15:18])
    with txn_log._env.begin() as txn:
        named = sum(
            txn.stat(db)["branch_pages"] + txn.stat(db)["leaf_pages"] + txn.stat(db)["overflow_pages"]
            for db in (txn_log._log_db, txn_log._meta_db)
        )
    return 2 + free_db + main_db + named


def test_the_meta_page_read_from_the_file_is_what_lmdb_reports(tmp_path: Path) -> None:
    reported = make_env(tmp_path)
    meta, size = read_meta(tmp_path / "data.mdb")
    assert meta.page_bytes == reported["psize"]
    assert meta.last_page == reported["last_pgno"]
    assert meta.txnid == reported["last_txnid"] == 2
    assert size == (tmp_path / "data.mdb").stat().st_size
    assert check_data_file(tmp_path / "data.mdb") == meta


def test_a_fresh_environment_has_just_its_meta_pages(tmp_path: Path) -> None:
    lmdb.open(str(tmp_path), map_size=1 << 20).close()
    meta, size = read_meta(tmp_path / "data.mdb")
    assert (meta.last_page, meta.txnid) == (1, 0)
    assert size == meta.needed_bytes == 2 * meta.page_bytes
    with open(tmp_path / "data.mdb", "rb") as file:
        assert free_pages(file, meta, size) == set()


@pytest.mark.parametrize("seed", range(4))
def test_the_free_list_read_from_the_file_accounts_for_every_page(tmp_path: Path, seed: int) -> None:
    """Every page up to mm_last_pg is in a B+tree or on the free list: a strong check of
    the free-list reader, through small records and free lists big enough for overflow pages."""
    rng = random.Random(seed)
    directory = tmp_path / "log"
    with TxnLog.open(directory, map_bytes=rng.choice([1 << 20, 16 << 20])) as txn_log:
        for _ in random_log_ops(txn_log, rng, 120):
            meta, size = read_meta(directory / "data.mdb")
            assert meta.last_page == txn_log._env.info()["last_pgno"]
            with open(directory / "data.mdb", "rb") as file:
                free = free_pages(file, meta, max(size, meta.needed_bytes))
            assert free is not None
            assert len(free) == meta.last_page + 1 - pages_in_trees(directory / "data.mdb", txn_log, meta)
            assert max(free, default=0) <= meta.last_page


@pytest.mark.parametrize("seed", range(6))
def test_healthy_logs_always_pass_although_lmdb_leaves_some_a_page_short(tmp_path: Path, seed: int) -> None:
    """LMDB does not write pages it freed in the same transaction ("loose" pages): a
    healthy file may be shorter than its meta page says. The check must not refuse it."""
    rng = random.Random(seed)
    directory = tmp_path / "log"
    with TxnLog.open(directory, map_bytes=rng.choice([1 << 20, 8 << 20])) as txn_log:
        for _ in random_log_ops(txn_log, rng, 150):
            check_data_file(directory / "data.mdb")
    check_data_file(directory / "data.mdb")
    with TxnLog.open(directory) as reopened:
        reopened.verify()


def test_a_file_lmdb_left_short_opens_as_it_is_and_works(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    rng = random.Random(0)  # this workload leaves the file a page short within a few steps
    short = 0
    with TxnLog.open(directory, map_bytes=8 << 20) as txn_log:
        for _ in random_log_ops(txn_log, rng, 400):
            meta, size = read_meta(directory / "data.mdb")
            short = meta.needed_bytes - size
            if short:
                break
        entries, last = txn_log.stats()["entries"], txn_log.last_zxid
    if not short:
        pytest.skip("this LMDB left no file short of its meta pages in 400 operations")
    assert check_data_file(directory / "data.mdb") == meta
    assert (directory / "data.mdb").stat().st_size == size  # not touched
    with TxnLog.open(directory) as reopened:
        assert reopened.verify() == entries
        reopened.append([(make_zxid(epoch_of(last) + 1, 1), b"after")])
    with TxnLog.open(directory) as again:
        assert again.verify() == entries + 1


Cut = Callable[[LmdbMeta], int]

OPEN_CHILD = """
import sys
from pathlib import Path
from coord.storage import CorruptLogError, TxnLog

try:
    TxnLog.open(Path(sys.argv[1])).close()
except CorruptLogError as error:
    print("CorruptLogError", error)
else:
    print("opened")
"""


def open_in_child(directory: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", OPEN_CHILD, str(directory)], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, f"TxnLog.open died (status {done.returncode}): {done.stderr[-2000:]}"
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("cut", "expected"),
    [
        (lambda meta: 0, "is empty (0 bytes)"),
        (lambda meta: 100, "is truncated (100 bytes)"),
        (lambda meta: meta.page_bytes + 100, "two meta pages alone need"),
        (lambda meta: meta.needed_bytes // 2, "is truncated"),
        (lambda meta: meta.needed_bytes - meta.page_bytes, "is truncated"),
        (lambda meta: meta.needed_bytes - 1, "is truncated"),
    ],
    ids=["empty", "inside-meta-0", "inside-meta-1", "half", "last-page", "last-byte"],
)
def test_a_cut_file_is_refused_with_one_line_naming_it(tmp_path: Path, cut: Cut, expected: str) -> None:
    make_env(tmp_path)
    path = tmp_path / "data.mdb"
    meta, _ = read_meta(path)
    os.truncate(path, cut(meta))
    with pytest.raises(LmdbFileError) as caught:
        check_data_file(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message
    # TxnLog.open refuses it the same way, before LMDB maps it (no SIGBUS, no silent
    # re-initialisation); in a child process, as without the check it dies of SIGBUS.
    assert open_in_child(tmp_path).startswith(f"CorruptLogError {path} is ")
    assert path.stat().st_size == cut(meta)  # refused files are left as they are (evidence)


def test_a_cut_that_reaches_the_free_list_itself_is_refused(tmp_path: Path) -> None:
    make_env(tmp_path)
    path = tmp_path / "data.mdb"
    meta, _ = read_meta(path)
    assert meta.free_root > 1  # the delete left a free list
    os.truncate(path, meta.free_root * meta.page_bytes)
    with pytest.raises(LmdbFileError, match="its free list is cut too"):
        check_data_file(path)


@pytest.mark.parametrize("page", [0, 1])
def test_a_meta_page_that_is_not_lmdb_is_refused(tmp_path: Path, page: int) -> None:
    make_env(tmp_path)
    path = tmp_path / "data.mdb"
    meta, _ = read_meta(path)
    with open(path, "r+b") as file:
        file.seek(page * meta.page_bytes + 16)  # mm_magic
        file.write(b"\0\0\0\0")
    with pytest.raises(LmdbFileError, match=f"{'first' if page == 0 else 'second'} meta page is not"):
        check_data_file(path)
