"""Durable storage of one server: the transaction log (LMDB) and snapshots of the tree.

Blocking code: the trio shell calls it through ``trio.to_thread.run_sync``.
"""

from coord.storage.log import ACCEPTED_EPOCH as ACCEPTED_EPOCH
from coord.storage.log import CURRENT_EPOCH as CURRENT_EPOCH
from coord.storage.log import CorruptLogError as CorruptLogError
from coord.storage.log import LogOrderError as LogOrderError
from coord.storage.log import TxnLog as TxnLog
from coord.storage.log import zxid_follows as zxid_follows
from coord.storage.snapshot import SnapshotStore as SnapshotStore
