"""The LMDB environment under the durable log: opened with durable settings, its map budgeted.

How the environment is opened decides whether a commit survives a power cut, and how
its map is budgeted decides whether a full log can still be purged. Both are settings
of LMDB rather than behaviour of :class:`~coord.storage.log.TxnLog`, so they live
here, spelled out once, where nobody "tunes" them by accident.

**Durable defaults, on purpose.** The environment is opened with ``sync=True``,
``metasync=True``, no ``writemap`` and no ``map_async`` (docs/correctness.md, rule 5). Any of
the "fast" settings can undo the last commit on a machine crash - an entry that a
follower already ACKed, lost on every server at once after a power cut.

**A damaged data file.** :func:`open_environment` checks ``data.mdb`` against its meta
pages before LMDB maps it (:mod:`coord.storage.lmdb_check`; a truncated file would
kill the process with SIGBUS): an empty or truncated one is a :class:`CorruptLogError`.

**The reserve.** LMDB cannot delete from a map that is completely full (a delete copies
the pages it changes), so appends may fill the map only up to
:func:`append_limit_pages`: the rest, 1/32 of the map, between 16 pages and 8 MiB,
stays for purges and truncations. :func:`pages_in_use` is what is compared with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Final

import lmdb

from coord.errors import StorageError
from coord.storage.lmdb_check import LmdbFileError, check_data_file
from coord.storage.log_format import _FORMAT, _META_FORMAT, _U64, CorruptLogError

_META_PAGES: Final = 2
_MAP_BYTES_MIN: Final = 128 << 10
_RESERVE_FRACTION: Final = 32  # appends leave 1/32 of the map for deletes ...
_RESERVE_PAGES_MIN: Final = 16  # ... but at least this many pages ...
_RESERVE_BYTES_MAX: Final = 8 << 20  # ... and no more than this


def open_environment(directory: Path, map_bytes: int) -> lmdb.Environment:
    """Open (creating if needed) the environment in ``directory``, with the durable settings.

    Raises:
        ValueError: ``map_bytes`` is below the minimum.
        CorruptLogError: ``data.mdb`` is empty, truncated or not an LMDB file.
        StorageError: the environment cannot be opened.
    """
    if map_bytes < _MAP_BYTES_MIN:
        raise ValueError(f"map_bytes={map_bytes} is below the minimum of {_MAP_BYTES_MIN}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data_file = directory / "data.mdb"
    try:
        if data_file.exists():
            check_data_file(data_file)  # before LMDB maps it (SIGBUS past its end)
    except LmdbFileError as exc:
        raise CorruptLogError(str(exc)) from exc
    except OSError as exc:
        raise StorageError(f"cannot check {data_file}: {exc}") from exc
    try:
        return lmdb.open(
            str(directory),
            map_size=map_bytes,
            subdir=True,
            # Durable defaults, spelled out so that nobody "tunes" them (docs/correctness.md, rule 5).
            sync=True,
            metasync=True,
            writemap=False,
            map_async=False,
            lock=True,
            max_dbs=4,
            max_readers=126,
            mode=0o600,  # txns carry session passwords
        )
    except lmdb.Error as exc:
        raise StorageError(f"cannot open the log in {directory}: {exc}") from exc


def open_databases(env: lmdb.Environment, directory: Path) -> tuple[lmdb._Database, lmdb._Database]:
    """Open the ``log`` and ``meta`` databases: a new log gets the format, an unknown one is refused.

    LMDB's own errors propagate: the caller maps them and closes ``env``.

    Raises:
        StorageError: the log in ``directory`` has an unknown format.
    """
    log_db = env.open_db(b"log")
    meta_db = env.open_db(b"meta")
    with env.begin(db=meta_db) as txn:
        raw = txn.get(_META_FORMAT)
    if raw is None:
        with env.begin(db=meta_db, write=True) as txn:
            txn.put(_META_FORMAT, _U64.pack(_FORMAT))
    elif raw != _U64.pack(_FORMAT):
        raise StorageError(f"the log in {directory} has unknown format {raw.hex()}, expected {_FORMAT}")
    return log_db, meta_db


def append_limit_pages(env: lmdb.Environment, page_bytes: int) -> int:
    """How many pages appends may fill: the map less the reserve kept for deletes."""
    map_pages = env.info()["map_size"] // page_bytes
    reserve_pages = min(max(map_pages // _RESERVE_FRACTION, _RESERVE_PAGES_MIN), _RESERVE_BYTES_MAX // page_bytes)
    return map_pages - reserve_pages


def pages_in_use(txn: lmdb.Transaction, dbs: Iterable[lmdb._Database]) -> int:
    """Pages of the live B+trees as this transaction sees them, plus the meta pages.

    The free-list's own pages are not counted; the reserve covers them.
    """
    used = _META_PAGES
    for db in dbs:
        stat = txn.stat(db)
        used += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
    return used
