"""The data tree: znodes and sessions, changed only by applying committed txns.

Theory of operation
    :meth:`DataTree.apply` is a pure function of ``(tree, txn)``: everything that
    could differ between servers (zxid, time, owner, sequential name, the outcome of
    every check) was decided once by the preparer (:mod:`coord.prepare`) and travels
    in the txn. So every server that applies the same txns in the same order holds
    the same tree, byte for byte, and :meth:`DataTree.digest` agrees across them.
    Because the txn was validated when it was prepared, a violated precondition here
    (parent missing, node already there, children left on delete) is a bug and is
    ``assert``-ed, not answered.

Data layout (chosen for the hot path and for cheap snapshots)
    ``nodes`` maps a path to an immutable :class:`Node`. A change never mutates a
    node: it builds a new one and stores it under the path (a create also replaces
    the parent, whose ``cversion``, ``num_children`` and ``pzxid`` change). Child
    names live in a separate ``dict[str, set[str]]`` holding entries only for nodes
    that have children; it is derived state, not part of the snapshot image, and is
    rebuilt on load. So a snapshot is a shallow ``dict(nodes)`` copy taken in the
    event loop (a few ms for 100k nodes); the worker thread then serializes that
    copy while the tree keeps changing, and the copy stays consistent at its zxid.
    The image is encoded and decoded a chunk of nodes at a time
    (:meth:`DataTree.image_pieces`, :meth:`DataTree.from_pieces`; the format is
    :mod:`coord.tree_image`'s), so a SNAP streams a tree of any size without its
    image ever being whole in memory.
    Indexes of ephemerals per session, of containers and of TTL nodes let
    :meth:`ephemerals` and :meth:`cleanup_candidates` answer without scanning.

Where we differ from ZooKeeper
    - Snapshots are exact (the image of one zxid), not fuzzy; replay after a
      snapshot starts right after its ``last_zxid`` and needs no idempotence tricks.
    - :class:`Node` is a ``NamedTuple`` whose ``mode`` is a plain int (why: :mod:`coord.znode`).
    - The node kind is kept in ``mode`` and ``ttl_ms`` rather than packed into the
      bits of ``ephemeral_owner``; ``ephemeral_owner`` is a plain session id or 0.
    - ``num_children`` is stored in the node (ZooKeeper counts its child set).
    - No ACLs (``aversion`` stays 0) and no quotas. The reserved subtree is
      ``/coord`` (ZooKeeper's is ``/zookeeper``).
    - A session's id is the zxid of its :class:`~coord.txn.CreateSessionTxn`.
    - A TTL node is a cleanup candidate once ``mtime + ttl_ms <= now`` (ZooKeeper
      waits for strictly more than ``ttl`` to elapse; one millisecond apart).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Set
from dataclasses import dataclass
from typing import Any, Final, assert_never

from coord.errors import NoNodeError
from coord.protocol import CreateMode, EventType, Stat, basename, parent_of
from coord.tree_image import decode_image, image_pieces
from coord.txn import (
    CheckTxn,
    CloseSessionTxn,
    CreateSessionTxn,
    CreateTxn,
    DeleteTxn,
    ErrorTxn,
    MultiTxn,
    SetDataTxn,
    Txn,
)
from coord.znode import CONTAINER_MODE, Node, SessionRecord, TreeImage

_PERSISTENT: Final = int(CreateMode.PERSISTENT)
_CONTAINER: Final = CONTAINER_MODE
_CREATED: Final = EventType.NODE_CREATED
_DELETED: Final = EventType.NODE_DELETED
_DATA_CHANGED: Final = EventType.NODE_DATA_CHANGED
_CHILDREN_CHANGED: Final = EventType.NODE_CHILDREN_CHANGED
_NO_CHILDREN: Final[frozenset[str]] = frozenset()
_new_tuple = tuple.__new__


@dataclass(slots=True)
class ApplyResult:
    """What applying one txn produced.

    Attributes:
        error: 0, or the code of an :class:`~coord.txn.ErrorTxn` (not of a failed
            multi: that answers 0 with ``[False, codes]``).
        result: the reply's result: ``[path, stat]`` for a create, a stat for a set,
            ``[True, [per-op result, ...]]`` for a multi, the session id for a
            create-session, else None.
        events: ``(event type, path)`` watch triggers, in the order they happened.
    """

    error: int
    result: Any
    events: list[tuple[EventType, str]]


class DataTree:
    """The replicated state: znodes and sessions.

    Attributes:
        last_zxid: zxid of the last applied txn (0 for a fresh tree).
        nodes: path -> :class:`Node`; read freely, never write.
        sessions: session id -> :class:`SessionRecord`; read freely, never write.
    """

    __slots__ = ("_children", "_containers", "_ephemerals", "_ttls", "last_zxid", "nodes", "sessions")

    def __init__(self) -> None:
        """A fresh tree holding ``/`` and the reserved ``/coord``, both at zxid 0, time 0."""
        self.last_zxid = 0
        self.nodes: dict[str, Node] = {}
        self.sessions: dict[int, SessionRecord] = {}
        self._children: dict[str, set[str]] = {}
        self._ephemerals: dict[int, set[str]] = {}
        self._containers: set[str] = set()
        self._ttls: set[str] = set()
        # the root starts with one child and cversion 0, as ZooKeeper's root with /zookeeper
        self.nodes["/"] = Node(b"", 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, _PERSISTENT, 0)
        self.nodes["/coord"] = Node.created(b"", _PERSISTENT, 0, 0, 0, 0)
        self._children["/"] = {"coord"}

    # --- reads -------------------------------------------------------------------

    @property
    def node_count(self) -> int:
        return len(self.nodes)

    def get_node(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def exists(self, path: str) -> Stat | None:
        node = self.nodes.get(path)
        return None if node is None else node.stat()

    def get_data(self, path: str) -> tuple[bytes, Stat]:
        """Raises:
        NoNodeError: ``path`` does not exist."""
        node = self.nodes.get(path)
        if node is None:
            raise NoNodeError(path)
        return node.data, node.stat()

    def get_children(self, path: str) -> tuple[list[str], Stat]:
        """The child names, sorted, and the node's stat.

        Raises:
            NoNodeError: ``path`` does not exist.
        """
        node = self.nodes.get(path)
        if node is None:
            raise NoNodeError(path)
        return sorted(self._children.get(path, _NO_CHILDREN)), node.stat()

    def child_names(self, path: str) -> Set[str]:
        """The live set of child names (empty if none or no such node). Read only:
        it changes as txns are applied, so copy it before awaiting anything."""
        return self._children.get(path, _NO_CHILDREN)

    def ephemerals(self, session_id: int) -> list[str]:
        """The paths of the ephemeral nodes ``session_id`` owns, sorted."""
        return sorted(self._ephemerals.get(session_id, _NO_CHILDREN))

    def cleanup_candidates(self, now_ms: int) -> list[str]:
        """Containers and TTL nodes that should be deleted now, sorted.

        A container qualifies once it has had a child (``cversion > 0``) and has none
        now; a TTL node once it has no children and ``mtime + ttl_ms <= now_ms``.
        The leader proposes their deletion through the preparer, which re-checks.
        """
        nodes = self.nodes
        found = [path for path in self._containers if not nodes[path].num_children and nodes[path].cversion > 0]
        for path in self._ttls:
            node = nodes[path]
            if not node.num_children and node.mtime + node.ttl_ms <= now_ms:
                found.append(path)
        found.sort()
        return found

    # --- apply -------------------------------------------------------------------

    def apply(self, txn: Txn) -> ApplyResult:
        """Apply one committed txn (zxids strictly increasing).

        Returns:
            the reply's error code and result, and the watch events to fire.
        """
        zxid = txn.zxid
        assert zxid > self.last_zxid, f"txn {zxid:#x} is not after {self.last_zxid:#x}"
        body = txn.body
        events: list[tuple[EventType, str]] = []
        error = 0
        result: Any = None
        match body:
            case SetDataTxn():
                result = self._set_data(body.path, body.data, zxid, txn.time_ms, events).stat_wire()
            case CreateTxn():
                result = self._apply_create(body, zxid, txn.time_ms, events)
            case DeleteTxn():
                self._delete(body.path, zxid, events)
            case MultiTxn():
                result = [True, [self._apply_multi_op(op, zxid, txn.time_ms, events) for op in body.ops]]
            case ErrorTxn():
                if body.multi_codes:
                    result = [False, list(body.multi_codes)]
                else:
                    error = body.code
                    result = body.message or None
            case CheckTxn():
                assert body.path in self.nodes
            case CreateSessionTxn():
                assert zxid not in self.sessions
                self.sessions[zxid] = SessionRecord(zxid, body.timeout_ms, body.password)
                result = zxid
            case CloseSessionTxn():
                for path in self.ephemerals(body.session_id):
                    self._delete(path, zxid, events)
                del self.sessions[body.session_id]
            case _:
                assert_never(body)
        self.last_zxid = zxid
        return ApplyResult(error, result, events)

    def _apply_multi_op(
        self,
        op: CreateTxn | DeleteTxn | SetDataTxn | CheckTxn,
        zxid: int,
        time_ms: int,
        events: list[tuple[EventType, str]],
    ) -> Any:
        match op:
            case CreateTxn():
                return self._apply_create(op, zxid, time_ms, events)
            case DeleteTxn():
                self._delete(op.path, zxid, events)
                return None
            case SetDataTxn():
                return self._set_data(op.path, op.data, zxid, time_ms, events).stat_wire()
            case CheckTxn():
                assert op.path in self.nodes
                return None
            case _:
                assert_never(op)

    def _apply_create(self, body: CreateTxn, zxid: int, time_ms: int, events: list[tuple[EventType, str]]) -> list[Any]:
        for parent in body.parents:
            self._create(parent, b"", _PERSISTENT, 0, 0, zxid, time_ms, events)
        node = self._create(body.path, body.data, body.mode, body.ephemeral_owner, body.ttl_ms, zxid, time_ms, events)
        return [body.path, node.stat_wire()]

    def _create(
        self,
        path: str,
        data: bytes,
        mode: int,
        owner: int,
        ttl_ms: int,
        zxid: int,
        time_ms: int,
        events: list[tuple[EventType, str]],
    ) -> Node:
        nodes = self.nodes
        assert path not in nodes, path
        # parent_of and basename inlined: this runs once per create, a million times in a replay
        slash = path.rfind("/")
        parent_path = path[:slash] if slash > 0 else "/"
        parent = nodes[parent_path]
        assert not parent.ephemeral_owner, parent_path
        nodes[parent_path] = parent.with_child_added(zxid)
        nodes[path] = node = _new_tuple(
            Node, (data, zxid, zxid, time_ms, time_ms, 0, 0, 0, owner, 0, zxid, int(mode), ttl_ms)
        )  # Node.created, inlined
        names = self._children.get(parent_path)
        if names is None:
            self._children[parent_path] = {path[slash + 1 :]}
        else:
            names.add(path[slash + 1 :])
        if owner:
            paths = self._ephemerals.get(owner)
            if paths is None:
                self._ephemerals[owner] = {path}
            else:
                paths.add(path)
        elif ttl_ms:
            self._ttls.add(path)
        elif mode == _CONTAINER:
            self._containers.add(path)
        events.append((_CREATED, path))
        events.append((_CHILDREN_CHANGED, parent_path))
        return node

    def _delete(self, path: str, zxid: int, events: list[tuple[EventType, str]]) -> None:
        nodes = self.nodes
        node = nodes.pop(path)
        assert not node.num_children, path
        parent_path = parent_of(path)
        nodes[parent_path] = nodes[parent_path].with_child_removed(zxid)
        names = self._children[parent_path]
        names.remove(basename(path))
        if not names:
            del self._children[parent_path]
        owner = node.ephemeral_owner
        if owner:
            paths = self._ephemerals[owner]
            paths.remove(path)
            if not paths:
                del self._ephemerals[owner]
        elif node.ttl_ms:
            self._ttls.remove(path)
        elif node.mode == _CONTAINER:
            self._containers.remove(path)
        events.append((_DELETED, path))
        events.append((_CHILDREN_CHANGED, parent_path))

    def _set_data(self, path: str, data: bytes, zxid: int, time_ms: int, events: list[tuple[EventType, str]]) -> Node:
        nodes = self.nodes
        nodes[path] = node = nodes[path].with_data(data, zxid, time_ms)
        events.append((_DATA_CHANGED, path))
        return node

    # --- snapshots ---------------------------------------------------------------

    def image(self) -> TreeImage:
        """The tree as of now, for a snapshot: shallow copies only (nodes are immutable)."""
        return TreeImage(self.last_zxid, dict(self.nodes), dict(self.sessions))

    @staticmethod
    def serialize_image(image: TreeImage) -> bytes:
        """Deterministic bytes of an image (:mod:`coord.tree_image`): equal trees give
        equal bytes. Touches only the image, so it is safe in a worker thread."""
        return b"".join(image_pieces(image))

    @staticmethod
    def image_pieces(image: TreeImage) -> Iterator[bytes]:
        """The bytes of :meth:`serialize_image`, lazily, a chunk of nodes at a time, so
        a SNAP or a snapshot file streams a tree of any size without holding its image."""
        return image_pieces(image)

    @classmethod
    def from_bytes(cls, data: bytes) -> DataTree:
        """Rebuild a tree (and its derived child sets and indexes) from serialized bytes.

        Raises:
            ValueError: the bytes are not a well-formed, self-consistent image.
        """
        return cls.from_pieces([data])

    @classmethod
    def from_pieces(cls, pieces: Iterable[bytes]) -> DataTree:
        """Rebuild a tree from its serialized image given as ``pieces`` of any sizes,
        decoded a chunk at a time (a follower installs a streamed SNAP from disk this way).

        Raises:
            ValueError: the bytes are not a well-formed, self-consistent image (or
                bytes follow it).
        """
        decoded = decode_image(pieces)
        nodes, children = decoded.nodes, decoded.children
        if "/" not in nodes:
            raise ValueError("tree image has no root")
        for path, names in children.items():
            node = nodes.get(path)
            if node is None or node.num_children != len(names):
                raise ValueError(f"tree image is inconsistent at {path!r}")
        if sum(node.num_children for node in nodes.values()) != len(nodes) - 1:
            raise ValueError("tree image is inconsistent: child counts do not add up")
        tree = cls.__new__(cls)
        tree.last_zxid = decoded.last_zxid
        tree.nodes = nodes
        tree.sessions = decoded.sessions
        tree._children = children
        tree._ephemerals = decoded.ephemerals
        tree._containers = decoded.containers
        tree._ttls = decoded.ttls
        return tree

    def digest(self) -> str:
        """SHA-256 (hex) of the serialized image: equal on servers with equal trees."""
        return hashlib.sha256(self.serialize_image(self.image())).hexdigest()

    def __repr__(self) -> str:
        return f"DataTree(last_zxid={self.last_zxid:#x}, nodes={len(self.nodes)}, sessions={len(self.sessions)})"


__all__ = ["ApplyResult", "DataTree", "Node", "SessionRecord", "TreeImage"]
