"""Recovery: rebuild a server's state from its data directory at start-up.

State = the newest valid snapshot + a replay of every log entry after it. The
rules (docs/correctness.md, rules 4 and 6):

- The log must be contiguous from the snapshot on: a gap means acknowledged
  writes are missing, so the server refuses to start rather than serve a tree
  that silently lacks them.
- A log entry that fails its checksum is acknowledged data damaged: refuse to
  start, loudly, naming the zxid. (LMDB commits are atomic, so there is no torn
  tail to truncate: a write either committed whole or not at all.)
- The epoch comes from the durable meta records, never from file names; a
  standalone server starts a new epoch on every start, like a leader after an
  election, and makes it durable before ordering anything in it.

A damaged data directory (docs/storage.md)
------------------------------------------
Every refusal is one :class:`RecoveryError` whose message is one line naming the
file and saying what to do: restore the data directory from a backup, or delete it
so that the server starts empty and catches up from the ensemble's leader (a
standalone server has no leader: its data would be gone). The cases:

- ``log/data.mdb`` empty, truncated or not an LMDB file (checked against its meta
  pages and free list before LMDB maps it, :mod:`coord.storage.lmdb_check`: a
  truncated file used to kill the process with SIGBUS, an empty one was silently
  re-initialised, losing every write).
- ``log/data.mdb`` missing while ``snapshots/`` holds snapshot files. The log held
  the epochs this server promised (ZAB's accepted and current epoch) and maybe
  acknowledged writes after the newest snapshot; nothing on disk says whether it
  did, so starting from the snapshot could silently lose writes and reuse an epoch.
  Refused. (No log and no snapshots is a new server: it starts empty.)
- The log was purged through a zxid (its ``base``) that no valid snapshot reaches:
  the snapshots that covered the purged entries are damaged or missing, and those
  writes exist nowhere else on this server. (Snapshots missing while the log still
  starts at the beginning lose nothing: the log is replayed from the start.)
- A gap in the log, an entry that fails its checksum or does not decode, a snapshot
  whose tree disagrees with its header.

Errors that are not damage (permissions, I/O errors, a full disk) are raised as
they are (``OSError``, :class:`~coord.errors.StorageError`), and ``coord serve``
explains them in one line too.

Blocking: run it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from coord.errors import DataInconsistencyError
from coord.storage import ACCEPTED_EPOCH, CURRENT_EPOCH, SnapshotStore, TxnLog
from coord.tree import DataTree
from coord.tree_image import collector_paused
from coord.txn import decode_txn
from coord.zxid import counter_of, epoch_of, log_follows

log = logging.getLogger(__name__)


class RecoveryError(Exception):
    """The data directory cannot be recovered without losing acknowledged data."""


def _damaged(data_dir: Path, problem: str) -> RecoveryError:
    """A RecoveryError for ``problem`` (which names the file), with what the operator does."""
    return RecoveryError(
        f"{problem}; restore {data_dir} from a backup, or delete it so that this server starts empty "
        "and catches up from the ensemble's leader (a standalone server has no leader: its data is then lost)"
    )


@dataclass(slots=True)
class Recovered:
    tree: DataTree
    log: TxnLog
    snapshots: SnapshotStore
    epoch: int
    snapshot_zxid: int
    replayed: int
    snapshot_bytes: int = 0  # the size of the snapshot file loaded (0: none)


def recover(data_dir: Path, *, log_map_bytes: int, replay: bool = True) -> Recovered:
    """Open the storage under ``data_dir`` and rebuild the tree.

    Args:
        data_dir: the server's data directory (created if missing).
        log_map_bytes: the LMDB map size of the log.
        replay: apply the log after the snapshot to the tree. A server leaves this
            off: its log may end in proposals that were never committed (a follower
            of a leader that died), so ZAB delivers the log's entries only once
            synchronisation shows they are committed (docs/correctness.md, rule 4). Tools that inspect a
            stopped standalone server's state (where everything logged committed)
            turn it on; the log is verified either way.

    Raises:
        RecoveryError: the data directory is damaged (see the module docstring); the
            message is one line naming the file and the fix.
        StorageError, OSError: the storage cannot be opened (permissions, I/O errors).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    snapshots = SnapshotStore(data_dir / "snapshots")
    log_file = data_dir / "log" / "data.mdb"
    if not log_file.exists():
        names = _snapshot_files(snapshots)
        if names:
            raise _damaged(
                data_dir,
                f"{log_file} is missing but {snapshots.directory} holds {', '.join(names)}: the log's epochs "
                "and any writes after the newest snapshot are gone",
            )
    try:
        txn_log = TxnLog.open(data_dir / "log", map_bytes=log_map_bytes)
    except DataInconsistencyError as error:  # CorruptLogError: empty, truncated, not LMDB, bad keys
        raise _damaged(data_dir, f"{_about(log_file, error)}: the file is damaged") from error
    try:
        with collector_paused(freeze=True):  # a million long-lived nodes: see coord.tree_image
            return _rebuild(data_dir, snapshots, txn_log, log_file, replay=replay)
    except BaseException:
        txn_log.close()
        raise


def _rebuild(data_dir: Path, snapshots: SnapshotStore, txn_log: TxnLog, log_file: Path, *, replay: bool) -> Recovered:
    """The tree of the newest valid snapshot plus the log after it (see :func:`recover`)."""
    try:
        # One pass over the file: the tree is decoded from the pieces the digest check reads.
        latest = snapshots.load_latest(DataTree.from_pieces)
    except (ValueError, DataInconsistencyError) as error:  # a snapshot that verifies but does not decode
        raise _damaged(data_dir, str(error)) from error
    if latest is None:
        tree = DataTree()
        snapshot_zxid = 0
    else:
        snapshot_zxid, tree = latest
        if tree.last_zxid != snapshot_zxid:
            raise _damaged(
                data_dir,
                f"the snapshot {snapshot_zxid:#x} in {snapshots.directory} holds a tree at {tree.last_zxid:#x}",
            )
    base = txn_log.base_zxid
    if base > snapshot_zxid:
        newest = f"the newest valid one covers {snapshot_zxid:#x}" if latest else "none is valid"
        raise _damaged(
            data_dir,
            f"{log_file} was purged through zxid {base:#x} but no snapshot in {snapshots.directory} reaches it "
            f"({newest}; files: {', '.join(_snapshot_files(snapshots)) or 'none'}): "
            "the writes in between are lost",
        )
    first = txn_log.first_zxid
    if first and first > snapshot_zxid + 1 and not _starts_epoch(first, snapshot_zxid):
        raise _damaged(
            data_dir,
            f"{log_file} starts at zxid {first:#x} but the newest snapshot covers only {snapshot_zxid:#x}: "
            "acknowledged transactions are missing",
        )
    replayed = 0
    previous = snapshot_zxid
    try:
        for zxid, data in txn_log.read(snapshot_zxid, verify=True):
            if previous and not log_follows(previous, zxid):
                raise _damaged(data_dir, f"{log_file} has a gap between zxid {previous:#x} and {zxid:#x}")
            previous = zxid
            txn = decode_txn(data)
            if txn.zxid != zxid:
                raise _damaged(data_dir, f"{log_file}: entry {zxid:#x} holds a txn for zxid {txn.zxid:#x}")
            if replay:
                tree.apply(txn)
                replayed += 1
        epochs = (txn_log.get_meta(CURRENT_EPOCH) or 0, txn_log.get_meta(ACCEPTED_EPOCH) or 0)
    except (ValueError, DataInconsistencyError) as error:  # CorruptLogError and malformed txns
        raise _damaged(data_dir, _about(log_file, error)) from error
    epoch = max(*epochs, epoch_of(tree.last_zxid))
    log.info(
        "recovered snapshot %#x + %d log entries through %#x (%d replayed), epoch %d, %d znodes, %d sessions",
        snapshot_zxid,
        txn_log.stats().get("entries", 0),
        txn_log.last_zxid,
        replayed,
        epoch,
        tree.node_count,
        len(tree.sessions),
    )
    return Recovered(
        tree=tree,
        log=txn_log,
        snapshots=snapshots,
        epoch=epoch,
        snapshot_zxid=snapshot_zxid,
        replayed=replayed,
        snapshot_bytes=_size_of(snapshots, snapshot_zxid) if latest else 0,
    )


def _size_of(snapshots: SnapshotStore, zxid: int) -> int:
    """The size of the snapshot file of ``zxid`` (0 if it cannot be seen now)."""
    for found, path in snapshots.list():
        if found == zxid:
            try:
                return path.stat().st_size
            except OSError:
                return 0
    return 0


def _about(log_file: Path, error: Exception) -> str:
    """``error`` as a sentence that names the log file."""
    if str(log_file) in str(error):
        return str(error)
    return f"{log_file} is damaged: {error}"


def _snapshot_files(snapshots: SnapshotStore) -> list[str]:
    """The names of the snapshot files (valid or not) in the store's directory."""
    try:
        return sorted(path.name for path in snapshots.directory.glob("snapshot.*"))
    except OSError:
        return []


def _starts_epoch(first: int, snapshot_zxid: int) -> bool:
    """A log may begin a new epoch right after the snapshot (counter 1 of a later epoch)."""
    return counter_of(first) == 1 and epoch_of(first) > epoch_of(snapshot_zxid)
