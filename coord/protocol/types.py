"""The protocol's vocabulary: op codes, znode kinds, watch kinds and the znode Stat.

These are the numbers and records both ends must agree on. They are ZooKeeper's
numbers (and its ``Stat``, field for field) so that its documentation still
applies; the server's tree, sessions and watches use them too, which is why they
live apart from the codec that puts them on the wire.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from coord.protocol.shapes import ProtocolError

# --- enums -----------------------------------------------------------------------


class Op(enum.IntEnum):
    """Request op codes (ZooKeeper's numbers where ZooKeeper has the op)."""

    CREATE = 1
    DELETE = 2
    EXISTS = 3
    GET_DATA = 4
    SET_DATA = 5
    GET_CHILDREN = 8
    SYNC = 9
    PING = 11
    CHECK = 13
    MULTI = 14
    REMOVE_WATCHES = 18
    SET_WATCHES = 101
    ADD_WATCH = 106
    CLOSE_SESSION = -11


class CreateMode(enum.IntEnum):
    """Kinds of znode, with ZooKeeper's numbers."""

    PERSISTENT = 0
    EPHEMERAL = 1
    PERSISTENT_SEQUENTIAL = 2
    EPHEMERAL_SEQUENTIAL = 3
    CONTAINER = 4
    PERSISTENT_WITH_TTL = 5
    PERSISTENT_SEQUENTIAL_WITH_TTL = 6

    @property
    def is_ephemeral(self) -> bool:
        return self in (CreateMode.EPHEMERAL, CreateMode.EPHEMERAL_SEQUENTIAL)

    @property
    def is_sequential(self) -> bool:
        return self in (
            CreateMode.PERSISTENT_SEQUENTIAL,
            CreateMode.EPHEMERAL_SEQUENTIAL,
            CreateMode.PERSISTENT_SEQUENTIAL_WITH_TTL,
        )

    @property
    def is_ttl(self) -> bool:
        return self in (CreateMode.PERSISTENT_WITH_TTL, CreateMode.PERSISTENT_SEQUENTIAL_WITH_TTL)

    @property
    def is_container(self) -> bool:
        return self is CreateMode.CONTAINER


class EventType(enum.IntEnum):
    """Watch event types (ZooKeeper's numbers)."""

    NODE_CREATED = 1
    NODE_DELETED = 2
    NODE_DATA_CHANGED = 3
    NODE_CHILDREN_CHANGED = 4
    DATA_WATCH_REMOVED = 5
    CHILD_WATCH_REMOVED = 6
    PERSISTENT_WATCH_REMOVED = 7


class WatcherType(enum.IntEnum):
    """Which watches ``remove_watches`` removes (ZooKeeper's numbers)."""

    CHILDREN = 1
    DATA = 2
    ANY = 3
    PERSISTENT = 4
    PERSISTENT_RECURSIVE = 5


class AddWatchMode(enum.IntEnum):
    """Modes of ``add_watch`` (ZooKeeper 3.6's numbers)."""

    PERSISTENT = 0
    PERSISTENT_RECURSIVE = 1


# --- stat ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stat:
    """A znode's metadata, field for field ZooKeeper's ``Stat`` (in its order).

    On the wire it is an array of these 11 integers. Times are milliseconds since
    the epoch, as decided by the server that ordered the write.
    """

    czxid: int
    mzxid: int
    ctime: int
    mtime: int
    version: int
    cversion: int
    aversion: int
    ephemeral_owner: int
    data_length: int
    num_children: int
    pzxid: int

    def to_wire(self) -> list[int]:
        return [
            self.czxid,
            self.mzxid,
            self.ctime,
            self.mtime,
            self.version,
            self.cversion,
            self.aversion,
            self.ephemeral_owner,
            self.data_length,
            self.num_children,
            self.pzxid,
        ]

    @classmethod
    def from_wire(cls, value: Any) -> Stat:
        if not isinstance(value, list) or len(value) != 11 or not all(type(v) is int for v in value):
            raise ProtocolError(f"bad stat: {value!r:.80}")
        return cls(*value)

    # kazoo's friendly names, so kazoo users feel at home
    @property
    def created(self) -> float:
        """Creation time in seconds since the epoch."""
        return self.ctime / 1000.0

    @property
    def last_modified(self) -> float:
        """Last modification time in seconds since the epoch."""
        return self.mtime / 1000.0

    @property
    def owner_session_id(self) -> int | None:
        """The session owning this ephemeral node, or None for a persistent one."""
        return self.ephemeral_owner or None

    @property
    def children_count(self) -> int:
        return self.num_children

    @property
    def children_version(self) -> int:
        return self.cversion

    @property
    def acl_version(self) -> int:
        return self.aversion

    @property
    def creation_transaction_id(self) -> int:
        return self.czxid

    @property
    def last_modified_transaction_id(self) -> int:
        return self.mzxid
