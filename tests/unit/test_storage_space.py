"""Telling a full disk from other write errors (coord/storage/space.py).

The real full disk (a small tmpfs) is in tests/integration/test_storage_full.py;
here the rule's branches, with real error objects and a real roomy directory.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import lmdb
import pytest

from coord.storage import space


@pytest.mark.parametrize(
    "error",
    [
        lmdb.MapFullError("mdb_put: MDB_MAP_FULL: Environment mapsize limit reached"),
        lmdb.DiskError("mdb_txn_commit: No space left on device"),
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)),
        lmdb.Error(f"mdb_txn_commit: {os.strerror(errno.EDQUOT)}"),
    ],
    ids=["map-full", "lmdb-enospc", "enospc", "edquot", "lmdb-edquot"],
)
def test_out_of_space_errors_are_a_full_disk_wherever_they_happen(tmp_path: Path, error: BaseException) -> None:
    assert space.disk_is_full(error, tmp_path)


def test_an_io_error_with_room_on_the_disk_is_not_a_full_disk(tmp_path: Path) -> None:
    free, inodes_left = space.free_bytes(tmp_path)
    if free < 2 * space.FREE_BYTES_FULL or not inodes_left:
        pytest.skip("the temporary directory's filesystem is nearly full itself")
    assert not space.disk_is_full(lmdb.Error("mdb_txn_commit: Input/output error"), tmp_path)
    assert not space.disk_is_full(OSError(errno.EIO, os.strerror(errno.EIO)), tmp_path)
    assert not space.disk_is_full(OSError(errno.EFBIG, os.strerror(errno.EFBIG)), tmp_path)


def test_a_directory_that_cannot_be_asked_is_not_called_full(tmp_path: Path) -> None:
    assert not space.disk_is_full(OSError(errno.EIO, "Input/output error"), tmp_path / "missing")
