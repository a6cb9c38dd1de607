"""ZAB: the replication protocol of coord, as a sans-IO state machine.

See :mod:`coord.zab.peer` for the theory of operation, :mod:`coord.zab.types` for
the contract with the shells, :mod:`coord.zab.messages` for the wire messages.
"""

from coord.zab.codec import decode_message as decode_message
from coord.zab.codec import encode_message as encode_message
from coord.zab.election import Vote as Vote
from coord.zab.messages import MESSAGE_TYPES as MESSAGE_TYPES
from coord.zab.messages import Ack as Ack
from coord.zab.messages import AckEpoch as AckEpoch
from coord.zab.messages import AckNewLeader as AckNewLeader
from coord.zab.messages import AppToFollower as AppToFollower
from coord.zab.messages import AppToLeader as AppToLeader
from coord.zab.messages import Commit as Commit
from coord.zab.messages import Diff as Diff
from coord.zab.messages import FollowerInfo as FollowerInfo
from coord.zab.messages import Message as Message
from coord.zab.messages import NewEpoch as NewEpoch
from coord.zab.messages import NewLeader as NewLeader
from coord.zab.messages import Notification as Notification
from coord.zab.messages import Ping as Ping
from coord.zab.messages import PingAck as PingAck
from coord.zab.messages import Proposal as Proposal
from coord.zab.messages import Snap as Snap
from coord.zab.messages import SnapAck as SnapAck
from coord.zab.messages import SnapChunk as SnapChunk
from coord.zab.messages import SnapEnd as SnapEnd
from coord.zab.messages import SyncEntries as SyncEntries
from coord.zab.messages import Trunc as Trunc
from coord.zab.messages import UpToDate as UpToDate
from coord.zab.peer import Peer as Peer
from coord.zab.peer import RoleTypes as RoleTypes
from coord.zab.quorum import is_quorum as is_quorum
from coord.zab.quorum import quorum_size as quorum_size
from coord.zab.types import DurableState as DurableState
from coord.zab.types import Envelope as Envelope
from coord.zab.types import EpochRecord as EpochRecord
from coord.zab.types import LogEntry as LogEntry
from coord.zab.types import Output as Output
from coord.zab.types import PeerConfig as PeerConfig
from coord.zab.types import Record as Record
from coord.zab.types import Role as Role
from coord.zab.types import RoleChange as RoleChange
from coord.zab.types import SnapshotChunkRecord as SnapshotChunkRecord
from coord.zab.types import SnapshotRecord as SnapshotRecord
from coord.zab.types import TruncateRecord as TruncateRecord
from coord.zab.types import Zxid as Zxid
from coord.zxid import counter_of as counter_of
from coord.zxid import epoch_of as epoch_of
from coord.zxid import format_zxid as format_zxid
from coord.zxid import make_zxid as make_zxid
from coord.zxid import zab_follows as zab_follows

zxid_follows = zab_follows
"""ZAB's rule (:func:`coord.zxid.zab_follows`) under its old name here."""
