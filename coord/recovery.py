"""Recovery: rebuild a server's state from its data directory at start-up.

State = the newest valid snapshot + a replay of every log entry after it. The
rules (CORRECTNESS 4 and 6):

- The log must be contiguous from the snapshot on: a gap means acknowledged
  writes are missing, so the server refuses to start rather than serve a tree
  that silently lacks them.
- A log entry that fails its checksum is acknowledged data damaged: refuse to
  start, loudly, naming the zxid. (LMDB commits are atomic, so there is no torn
  tail to truncate: a write either committed whole or not at all.)
- The epoch comes from the durable meta records, never from file names; a
  standalone server starts a new epoch on every start, like a leader after an
  election, and makes it durable before ordering anything in it.

Blocking: run it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from coord.errors import DataInconsistencyError
from coord.storage import ACCEPTED_EPOCH, CURRENT_EPOCH, SnapshotStore, TxnLog
from coord.tree import DataTree
from coord.txn import counter_of, decode_txn, epoch_of

log = logging.getLogger(__name__)


class RecoveryError(Exception):
    """The data directory cannot be recovered without losing acknowledged data."""


@dataclass(slots=True)
class Recovered:
    tree: DataTree
    log: TxnLog
    snapshots: SnapshotStore
    epoch: int
    snapshot_zxid: int
    replayed: int


def recover(data_dir: Path, *, log_map_bytes: int, replay: bool = True) -> Recovered:
    """Open the storage under ``data_dir`` and rebuild the tree.

    Args:
        data_dir: the server's data directory (created if missing).
        log_map_bytes: the LMDB map size of the log.
        replay: apply the log after the snapshot to the tree. A server leaves this
            off: its log may end in proposals that were never committed (a follower
            of a leader that died), so ZAB delivers the log's entries only once
            synchronisation shows they are committed (rule 4). Tools that inspect a
            stopped standalone server's state (where everything logged committed)
            turn it on; the log is verified either way.

    Raises:
        RecoveryError: the log has a gap after the snapshot or a corrupt entry.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    snapshots = SnapshotStore(data_dir / "snapshots")
    txn_log = TxnLog.open(data_dir / "log", map_bytes=log_map_bytes)
    try:
        latest = snapshots.latest()
        if latest is None:
            tree = DataTree()
            snapshot_zxid = 0
        else:
            snapshot_zxid, payload = latest
            tree = DataTree.from_bytes(payload)
            if tree.last_zxid != snapshot_zxid:
                raise RecoveryError(
                    f"snapshot header says zxid {snapshot_zxid:#x} but its tree is at {tree.last_zxid:#x}"
                )
        first = txn_log.first_zxid
        if first and first > snapshot_zxid + 1 and not _starts_epoch(first, snapshot_zxid):
            raise RecoveryError(
                f"the log starts at zxid {first:#x} but the newest snapshot covers only {snapshot_zxid:#x}: "
                "acknowledged transactions are missing"
            )
        replayed = 0
        previous = snapshot_zxid
        try:
            for zxid, data in txn_log.read(snapshot_zxid, verify=True):
                if previous and zxid != previous + 1 and epoch_of(zxid) <= epoch_of(previous):
                    raise RecoveryError(f"the log has a gap between zxid {previous:#x} and {zxid:#x}")
                previous = zxid
                txn = decode_txn(data)
                if txn.zxid != zxid:
                    raise RecoveryError(f"log entry {zxid:#x} holds a txn for zxid {txn.zxid:#x}")
                if replay:
                    tree.apply(txn)
                    replayed += 1
        except (ValueError, DataInconsistencyError) as error:  # CorruptLogError and malformed txns
            raise RecoveryError(f"the log is corrupt: {error}") from error
        epoch = max(
            txn_log.get_meta(CURRENT_EPOCH) or 0,
            txn_log.get_meta(ACCEPTED_EPOCH) or 0,
            epoch_of(tree.last_zxid),
        )
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
            tree=tree, log=txn_log, snapshots=snapshots, epoch=epoch, snapshot_zxid=snapshot_zxid, replayed=replayed
        )
    except BaseException:
        txn_log.close()
        raise


def _starts_epoch(first: int, snapshot_zxid: int) -> bool:
    """A log may begin a new epoch right after the snapshot (counter 1 of a later epoch)."""
    return counter_of(first) == 1 and epoch_of(first) > epoch_of(snapshot_zxid)
