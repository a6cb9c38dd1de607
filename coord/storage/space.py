"""Telling "the disk is full" from other write errors.

A write that fails because the disk is full must reach the client as
:class:`~coord.errors.StorageFullError` (free space and writes work again), any other
I/O error as :class:`~coord.errors.StorageError`. The errno alone does not say which:
LMDB reports ``ENOSPC`` when ``pwrite`` finds no space at all, but when the disk fills
up *during* a write, ``pwrite`` writes part of it and LMDB turns the short count into
``EIO`` (``mdb_page_flush``: "short write, filesystem full?"); that is what a full
tmpfs gives in ``tests/integration/test_storage_full.py``. A filesystem that allocates
late (delayed allocation, thin provisioning, network filesystems) may also fail only
the ``fdatasync``, with ``EIO``. The rule, applied after a write failed:

1. ``ENOSPC`` or ``EDQUOT`` (an ``OSError``, LMDB's ``DiskError``, or an LMDB error
   whose message is that errno's text), or LMDB's ``MDB_MAP_FULL``: full.
2. Otherwise the filesystem holding the data is asked (``os.statvfs``): less than
   :data:`FREE_BYTES_FULL` free (the space root may use, or an unprivileged user,
   whichever this process is) or no free inodes: full.
3. Anything else: an I/O error.

Step 2 can call an I/O error on a nearly full disk "full"; the server does the same
for both (it refuses the write and rebuilds its state from disk), only the error
the client sees and the operator reads differs, and a nearly full disk needs space
anyway.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Final

import lmdb

__all__ = ["FREE_BYTES_FULL", "disk_is_full", "free_bytes"]

FREE_BYTES_FULL: Final = 8 << 20
"""Less free space than this on the data's filesystem counts as a full disk."""

_FULL_ERRNOS: Final = (errno.ENOSPC, errno.EDQUOT)
_FULL_MESSAGES: Final = tuple(os.strerror(code) for code in _FULL_ERRNOS)


def free_bytes(directory: Path) -> tuple[int, bool]:
    """Bytes this process may still write under ``directory``, and whether inodes are left.

    Raises:
        OSError: the filesystem cannot be asked.
    """
    stat = os.statvfs(directory)
    blocks = stat.f_bfree if os.geteuid() == 0 else stat.f_bavail
    inodes_left = stat.f_files == 0 or (stat.f_ffree if os.geteuid() == 0 else stat.f_favail) > 0
    return blocks * stat.f_frsize, inodes_left


def disk_is_full(error: BaseException, directory: Path) -> bool:
    """Whether a failed write under ``directory`` failed because the disk is full (see the rules above)."""
    if isinstance(error, lmdb.MapFullError | lmdb.DiskError):
        return True
    if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
        return True
    if isinstance(error, lmdb.Error) and str(error).endswith(_FULL_MESSAGES):
        return True
    try:
        free, inodes_left = free_bytes(directory)
    except OSError:
        return False
    return free < FREE_BYTES_FULL or not inodes_left
