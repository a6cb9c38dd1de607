"""The values the data tree holds: a znode (:class:`Node`), a session, a tree's image.

They live apart from :mod:`coord.tree` (which changes them by applying txns) because
the snapshot format (:mod:`coord.tree_image`) builds and reads them too, and the
preparer builds the nodes of its pending view with the same transition methods.

Why :class:`Node` is a ``NamedTuple`` and not a frozen dataclass: on CPython 3.11 a
frozen slotted dataclass with 13 fields costs ~3.5 us to construct (every field goes
through ``object.__setattr__``), a tuple ~0.5 us, and a write builds one or two. It
is just as immutable, and cbor2 encodes it as an array. Its ``mode`` is the plain
``int`` of a :class:`~coord.protocol.CreateMode`, never the enum member: a tuple
holding only strings, bytes and ints is *untracked* by the cyclic garbage collector,
so a million nodes cost the collector nothing (with an enum member in every node,
every full collection walked all of them: 1.5 s of a 4 s restart at a million).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NamedTuple

from coord.protocol import CreateMode, Stat

_new_tuple = tuple.__new__

CONTAINER_MODE: Final = int(CreateMode.CONTAINER)
"""``Node.mode`` of a container (modes are plain ints in a node)."""


class Node(NamedTuple):
    """One znode: its data and stat fields. Immutable; a change builds a new one.

    The transition methods below are shared with the preparer, so the pending view
    it keeps is built by exactly the code that will later apply the txn.
    """

    data: bytes
    czxid: int
    mzxid: int
    ctime: int
    mtime: int
    version: int
    cversion: int
    aversion: int
    ephemeral_owner: int
    num_children: int
    pzxid: int
    mode: int  # a CreateMode's number (see the module docstring)
    ttl_ms: int

    # Each method unpacks all 13 fields and builds the tuple at once: about 4x faster
    # than NamedTuple._replace. Short local names, in field order: data, czxid, mzxid,
    # ctime, mtime, version, cversion, aversion, owner, num_children, pzxid, mode, ttl.

    def stat(self) -> Stat:
        """The node's :class:`~coord.protocol.Stat` (``data_length`` is ``len(data)``)."""
        (data, cz, mz, ct, mt, v, cv, av, owner, nc, pz, _, _) = self
        return Stat(cz, mz, ct, mt, v, cv, av, owner, len(data), nc, pz)

    def stat_wire(self) -> list[int]:
        """``self.stat().to_wire()`` without building the Stat (the reply hot path)."""
        (data, cz, mz, ct, mt, v, cv, av, owner, nc, pz, _, _) = self
        return [cz, mz, ct, mt, v, cv, av, owner, len(data), nc, pz]

    @staticmethod
    def created(data: bytes, mode: int, ephemeral_owner: int, ttl_ms: int, zxid: int, time_ms: int) -> Node:
        """A node as a create at ``zxid`` leaves it (``mode`` stored as a plain int)."""
        return _new_tuple(
            Node, (data, zxid, zxid, time_ms, time_ms, 0, 0, 0, ephemeral_owner, 0, zxid, int(mode), ttl_ms)
        )

    def with_child_added(self, zxid: int) -> Node:
        """The parent after a child was created at ``zxid``."""
        (data, cz, mz, ct, mt, v, cv, av, owner, nc, _, mode, ttl) = self
        return _new_tuple(Node, (data, cz, mz, ct, mt, v, cv + 1, av, owner, nc + 1, zxid, mode, ttl))

    def with_child_removed(self, zxid: int) -> Node:
        """The parent after a child was deleted at ``zxid``."""
        (data, cz, mz, ct, mt, v, cv, av, owner, nc, _, mode, ttl) = self
        return _new_tuple(Node, (data, cz, mz, ct, mt, v, cv + 1, av, owner, nc - 1, zxid, mode, ttl))

    def with_data(self, data: bytes, zxid: int, time_ms: int) -> Node:
        """The node after its data was set at ``zxid``."""
        (_, cz, _, ct, _, v, cv, av, owner, nc, pz, mode, ttl) = self
        return _new_tuple(Node, (data, cz, zxid, ct, time_ms, v + 1, cv, av, owner, nc, pz, mode, ttl))


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session as the replicated state knows it (expiry is the leader's business)."""

    session_id: int
    timeout_ms: int
    password: bytes


@dataclass(frozen=True, slots=True)
class TreeImage:
    """What a snapshot captures: the tree as of ``last_zxid``. Cheap to take (shallow
    copies of immutable values), so it can be serialized in a worker thread."""

    last_zxid: int
    nodes: dict[str, Node]
    sessions: dict[int, SessionRecord]


__all__ = ["CONTAINER_MODE", "Node", "SessionRecord", "TreeImage"]
