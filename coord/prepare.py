"""The preparer: turns write requests into txns (ZooKeeper's PrepRequestProcessor).

Theory of operation
    The server that orders writes prepares each request once, against the *pending
    state*: the applied :class:`~coord.tree.DataTree` plus every txn prepared but
    not yet applied (it may still be on its way through the log and the quorum).
    Preparing resolves everything that must not differ between servers - the zxid,
    the sequential name, the parents a ``makepath`` create adds, the owner of an
    ephemeral, whether each check passes - and records it in the txn. A request that
    fails a check becomes an :class:`~coord.txn.ErrorTxn` that still takes a zxid
    and is logged, so its answer is ordered like any write.

    The pending state is an overlay of change records keyed by path, as ZooKeeper's
    ``outstandingChanges``: each holds the zxid of the txn that produced it and the
    :class:`~coord.tree.Node` that txn will leave at the path (None: deleted). The
    node is built with the very transitions the tree applies (``Node.created``,
    ``with_child_added``, ...), so once a txn is applied the tree holds exactly what
    its records said. :meth:`Preparer.applied` then drops the records of every txn
    up to that zxid (a record replaced by a later txn's stays until that one is
    applied). Beside the overlay it keeps the sessions created or closed by pending
    txns and, per session, the ephemerals created by pending txns, so a close
    deletes exactly the ephemerals the session will own when the close is applied.

    A multi is prepared op by op in a scratch layer over the overlay, so later ops
    see earlier ones; on the first failure the layer is dropped and the pending state
    is as before. Every txn this class returns consumes exactly one zxid.

    Ordering contract with the caller: every txn prepared here is applied to the tree
    in zxid order, and no other txn is applied in between. After a failed disk write
    or an election, :meth:`Preparer.reset` drops all pending changes; the caller
    must first apply everything committed, so the tree is the pending state again.

Where we differ from ZooKeeper
    - A write from a session that is not alive in the pending view (closed, closing
      or never created) is answered SessionExpired, as ZooKeeper's ``checkSession``;
      session 0 is the server itself and always allowed. There is no SessionMoved:
      we do not track which server owns a session here.
    - ``makepath`` is done here, atomically (kazoo's ``ensure_path`` is client
      side); the parents are plain persistent nodes.
    - Creating ``/`` answers NodeExists; writing in ``/coord`` or deleting ``/``
      answers BadArguments; data over ``data_bytes_max`` answers BadArguments
      (ZooKeeper refuses it at the jute buffer limit).
    - TTL nodes are always enabled; any ``ttl_ms > 0`` is accepted.
    - A container/TTL cleanup that is no longer due returns None (no zxid taken)
      instead of ordering an error txn.
    - A failed session check on a multi answers the plain error (not per-op codes).
    - Size limits are explicit (docs/limits.md): a created path may be at most
      ``path_bytes_max`` UTF-8 bytes and ``path_depth_max`` components, and the txn a
      request becomes (its values, paths and the parents a ``makepath`` adds, summed
      over a multi's ops) at most ``txn_bytes_max``. ZooKeeper has only jute.maxbuffer,
      checked on the *request*; we check the txn, because ``makepath`` makes the txn
      grow with the square of the depth (a 20 KB request became a 100 MB proposal that
      no peer frame could carry). Every refusal is BadArguments with a message saying
      which limit, and nothing is proposed but the small error txn.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Final

from coord.errors import (
    BadArgumentsError,
    BadVersionError,
    CoordError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RuntimeInconsistencyError,
    SessionExpiredError,
)
from coord.protocol import (
    DATA_BYTES_MAX_DEFAULT,
    CheckRequest,
    CreateMode,
    CreateRequest,
    DeleteRequest,
    MultiRequest,
    SetDataRequest,
    is_reserved,
    parent_of,
    validate_path,
)
from coord.tree import DataTree, Node
from coord.txn import (
    CheckTxn,
    CloseSessionTxn,
    CreateSessionTxn,
    CreateTxn,
    DeleteTxn,
    ErrorTxn,
    MultiTxn,
    MultiTxnOp,
    SetDataTxn,
    Txn,
    TxnBody,
)

PATH_BYTES_MAX_DEFAULT: Final = 4096
PATH_DEPTH_MAX_DEFAULT: Final = 256
TXN_BYTES_MAX_DEFAULT: Final = 2 << 20
_TXN_FIELD_BYTES: Final = 32
"""An allowance per op for its kind, mode, owner, TTL and CBOR headers."""

_MISSING: Final = object()
_PERSISTENT: Final = CreateMode.PERSISTENT

# CreateMode's is_* properties cost ~0.5 us each (enum equality in Python); these lists,
# indexed by the mode's number, answer the same questions at list-index speed.
_IS_SEQUENTIAL: Final = [mode.is_sequential for mode in sorted(CreateMode)]
_IS_EPHEMERAL: Final = [mode.is_ephemeral for mode in sorted(CreateMode)]
_IS_TTL: Final = [mode.is_ttl for mode in sorted(CreateMode)]
assert [int(mode) for mode in sorted(CreateMode)] == list(range(len(CreateMode)))

# A fast path for the common path shape: ASCII name characters only, no empty, "." or ".."
# component. Everything it accepts, validate_path accepts too (a test checks this); all
# else goes through validate_path, which also words the error.
_PLAIN_PATH: Final = re.compile(r"(?:/(?!\.\.?(?:/|\Z))[\w.:@+=,\-]+)+", re.ASCII)


def _checked_path(path: str, *, sequential: bool = False) -> str:
    if type(path) is str and _PLAIN_PATH.fullmatch(path + "1" if sequential else path):
        return path
    return validate_path(path, sequential=sequential)


_CONTAINER: Final = CreateMode.CONTAINER
_ROLLED_BACK: Final = 0
_NOT_RUN: Final = RuntimeInconsistencyError.code

Writes = dict[str, Node | None]
"""A layer of pending changes: path -> the node a txn leaves there (None: deleted)."""


class Preparer:
    """Prepares write requests into txns against the pending state. Pure: no I/O, no clock."""

    __slots__ = (
        "_changes",
        "_data_bytes_max",
        "_ephemerals",
        "_next_zxid",
        "_outstanding",
        "_path_bytes_max",
        "_path_depth_max",
        "_sessions",
        "_tree",
        "_txn_bytes_max",
    )

    def __init__(
        self,
        tree: DataTree,
        *,
        data_bytes_max: int = DATA_BYTES_MAX_DEFAULT,
        txn_bytes_max: int = TXN_BYTES_MAX_DEFAULT,
        path_bytes_max: int = PATH_BYTES_MAX_DEFAULT,
        path_depth_max: int = PATH_DEPTH_MAX_DEFAULT,
    ) -> None:
        """Args:
        tree: the applied tree; read here, never written.
        data_bytes_max: the largest znode value accepted.
        txn_bytes_max: the largest txn (estimated by :func:`txn_body_bytes`) a request may become.
        path_bytes_max, path_depth_max: the longest and deepest path a create may make."""
        self._tree = tree
        self._data_bytes_max = data_bytes_max
        self._txn_bytes_max = txn_bytes_max
        self._path_bytes_max = path_bytes_max
        self._path_depth_max = path_depth_max
        self._next_zxid = tree.last_zxid + 1
        # path -> (zxid, node or None): the latest pending change of each path
        self._changes: dict[str, tuple[int, Node | None]] = {}
        # session id -> {path: zxid}: ephemerals written by pending txns (a superset;
        # a later pending delete is seen through _changes)
        self._ephemerals: dict[int, dict[str, int]] = {}
        # session id -> (zxid, alive): sessions created or closed by pending txns
        self._sessions: dict[int, tuple[int, bool]] = {}
        # per prepared txn, in zxid order: what applied() must drop
        # (zxid, paths written, (owner, path) ephemerals written, session created/closed or 0)
        self._outstanding: deque[tuple[int, tuple[str, ...], tuple[tuple[int, str], ...], int]] = deque()

    # --- state ---------------------------------------------------------------------

    @property
    def next_zxid(self) -> int:
        """The zxid the next prepared txn gets."""
        return self._next_zxid

    @property
    def pending_count(self) -> int:
        """Txns prepared and not yet reported applied."""
        return len(self._outstanding)

    def reset(self, next_zxid: int) -> None:
        """Drop all pending changes: the pending view is the applied tree again.

        Call after a failed disk write or an election, once the tree holds every
        committed txn; ``next_zxid`` is where numbering continues (a new epoch's).
        """
        assert next_zxid > self._tree.last_zxid, "the next zxid must follow the applied tree"
        self._next_zxid = next_zxid
        self._changes.clear()
        self._ephemerals.clear()
        self._sessions.clear()
        self._outstanding.clear()

    def applied(self, txn: Txn) -> None:
        """The tree has applied ``txn`` (and so everything before it): drop the pending
        records it and earlier txns produced, as the tree now reflects them."""
        zxid = txn.zxid
        outstanding = self._outstanding
        changes = self._changes
        while outstanding and outstanding[0][0] <= zxid:
            done, paths, ephemerals, session_id = outstanding.popleft()
            for path in paths:
                change = changes.get(path)
                if change is not None and change[0] == done:
                    del changes[path]
            for owner, path in ephemerals:
                pending = self._ephemerals.get(owner)
                if pending is not None and pending.get(path) == done:
                    del pending[path]
                    if not pending:
                        del self._ephemerals[owner]
            if session_id:
                session = self._sessions.get(session_id)
                if session is not None and session[0] == done:
                    del self._sessions[session_id]

    def session_exists(self, session_id: int) -> bool:
        """Whether ``session_id`` is alive in the pending view."""
        session = self._sessions.get(session_id)
        if session is not None:
            return session[1]
        return session_id in self._tree.sessions

    def node(self, path: str) -> Node | None:
        """The node at ``path`` in the pending view (None: absent)."""
        change = self._changes.get(path)
        if change is not None:
            return change[1]
        return self._tree.nodes.get(path)

    # --- preparing -------------------------------------------------------------------

    def prepare(
        self,
        request: CreateRequest | DeleteRequest | SetDataRequest | MultiRequest,
        *,
        session_id: int,
        xid: int,
        time_ms: int,
    ) -> Txn:
        """Turn one write request into the txn that carries it out (or its error).

        Args:
            request: the write.
            session_id: the session that sent it (0: the server itself).
            xid: the request's xid, carried in the txn for the reply.
            time_ms: the time to stamp on it (the leader's clock).

        Returns:
            the txn, at :attr:`next_zxid` (which then moves on by one).

        Raises:
            TypeError: ``request`` is not a write (nothing is consumed).
        """
        zxid = self._next_zxid
        body: TxnBody
        writes: Writes = {}
        if session_id and not self.session_exists(session_id):
            body = ErrorTxn(code=SessionExpiredError.code, message=f"session {session_id:#x} has expired")
        elif type(request) is MultiRequest:
            body = self._prepare_multi(request, session_id, zxid, time_ms, writes)
        else:
            try:
                assert not isinstance(request, MultiRequest)
                body = self._prepare_op(request, session_id, zxid, time_ms, writes)
                self._check_txn_bytes(txn_body_bytes(body))
            except CoordError as error:
                writes.clear()
                body = ErrorTxn(code=error.code, message=str(error))
        # only now, so that a caller's bug (a read request: TypeError) leaves no zxid gap
        self._next_zxid = zxid + 1
        self._commit(zxid, writes, 0)
        return Txn(zxid=zxid, time_ms=time_ms, session_id=session_id, xid=xid, body=body)

    def prepare_create_session(self, *, timeout_ms: int, password: bytes, time_ms: int, xid: int = 0) -> Txn:
        """A txn opening a session. Its id is the txn's zxid, also put in the txn's
        ``session_id`` (as ZooKeeper's header carries the new session's id)."""
        zxid = self._next_zxid
        self._next_zxid = zxid + 1
        self._sessions[zxid] = (zxid, True)
        self._commit(zxid, {}, zxid)
        return Txn(
            zxid=zxid,
            time_ms=time_ms,
            session_id=zxid,
            xid=xid,
            body=CreateSessionTxn(timeout_ms=timeout_ms, password=password),
        )

    def prepare_close_session(self, closing_session_id: int, *, session_id: int, xid: int, time_ms: int) -> Txn:
        """A txn closing ``closing_session_id`` and deleting its ephemerals.

        Args:
            closing_session_id: the session to close.
            session_id: who asked (the session itself, or 0 for expiry by the server).

        Returns:
            a :class:`~coord.txn.CloseSessionTxn`, or an ErrorTxn(SessionExpired) when
            the session is not alive in the pending view.
        """
        zxid = self._next_zxid
        self._next_zxid = zxid + 1
        body: TxnBody
        writes: Writes = {}
        if self.session_exists(closing_session_id):
            for path in self._pending_ephemerals(closing_session_id):
                self._write_delete(path, zxid, writes)
            self._sessions[closing_session_id] = (zxid, False)
            self._commit(zxid, writes, closing_session_id)
            body = CloseSessionTxn(session_id=closing_session_id)
        else:
            self._commit(zxid, writes, 0)
            body = ErrorTxn(code=SessionExpiredError.code, message=f"session {closing_session_id:#x} has expired")
        return Txn(zxid=zxid, time_ms=time_ms, session_id=session_id, xid=xid, body=body)

    def prepare_cleanup(self, path: str, *, time_ms: int) -> Txn | None:
        """A txn deleting a container or TTL node, if it is still due in the pending view.

        Due: it exists, has no children, and is a container that has had a child
        (``cversion > 0``) or a TTL node with ``mtime + ttl_ms <= time_ms``.

        Returns:
            the DeleteTxn (session 0, xid 0), or None (no zxid consumed).
        """
        node = self.node(path)
        if node is None or node.num_children:
            return None
        used_container = node.mode == _CONTAINER and node.cversion > 0
        expired_ttl = node.ttl_ms > 0 and node.mtime + node.ttl_ms <= time_ms
        if not (used_container or expired_ttl):
            return None
        zxid = self._next_zxid
        self._next_zxid = zxid + 1
        writes: Writes = {}
        self._write_delete(path, zxid, writes)
        self._commit(zxid, writes, 0)
        return Txn(zxid=zxid, time_ms=time_ms, session_id=0, xid=0, body=DeleteTxn(path=path))

    # --- internals -------------------------------------------------------------------

    def _commit(self, zxid: int, writes: Writes, session_id: int) -> None:
        """Make a prepared txn's writes part of the pending view."""
        changes = self._changes
        ephemerals: list[tuple[int, str]] = []
        for path, node in writes.items():
            changes[path] = (zxid, node)
            if node is not None and node.ephemeral_owner:
                owner = node.ephemeral_owner
                pending = self._ephemerals.get(owner)
                if pending is None:
                    self._ephemerals[owner] = {path: zxid}
                else:
                    pending[path] = zxid
                ephemerals.append((owner, path))
        self._outstanding.append((zxid, tuple(writes), tuple(ephemerals), session_id))

    def _lookup(self, path: str, writes: Writes) -> Node | None:
        """The node at ``path`` as the txn being prepared sees it."""
        node = writes.get(path, _MISSING)
        if node is not _MISSING:
            return node  # type: ignore[return-value]
        change = self._changes.get(path)
        if change is not None:
            return change[1]
        return self._tree.nodes.get(path)

    def _pending_ephemerals(self, session_id: int) -> list[str]:
        """The ephemerals ``session_id`` owns in the pending view, sorted."""
        candidates = set(self._tree.ephemerals(session_id))
        candidates.update(self._ephemerals.get(session_id, ()))
        owned = []
        for path in candidates:
            node = self.node(path)
            if node is not None and node.ephemeral_owner == session_id:
                owned.append(path)
        owned.sort()
        return owned

    def _prepare_multi(
        self, request: MultiRequest, session_id: int, zxid: int, time_ms: int, writes: Writes
    ) -> MultiTxn | ErrorTxn:
        ops: list[MultiTxnOp] = []
        count = len(request.ops)
        total = 0
        for index, op in enumerate(request.ops):
            try:
                prepared = self._prepare_op(op, session_id, zxid, time_ms, writes)
                total += txn_body_bytes(prepared)
                self._check_txn_bytes(total)
                ops.append(prepared)
            except CoordError as error:
                writes.clear()
                codes = (_ROLLED_BACK,) * index + (error.code,) + (_NOT_RUN,) * (count - index - 1)
                return ErrorTxn(code=error.code, multi_codes=codes)
        return MultiTxn(ops=tuple(ops))

    def _check_txn_bytes(self, size: int) -> None:
        if size > self._txn_bytes_max:
            raise BadArgumentsError(
                f"the request would make a txn of about {size} bytes, over the limit of {self._txn_bytes_max} "
                "(limits.txn_bytes_max; makepath adds every missing parent's full path)"
            )

    def _check_created_path(self, path: str) -> None:
        size = len(path) if path.isascii() else len(path.encode())
        if size > self._path_bytes_max:
            raise BadArgumentsError(
                f"path of {size} bytes is over the limit of {self._path_bytes_max} (limits.path_bytes_max)"
            )
        depth = path.count("/")
        if depth > self._path_depth_max:
            raise BadArgumentsError(
                f"path of depth {depth} is over the limit of {self._path_depth_max} (limits.path_depth_max)"
            )

    def _prepare_op(
        self,
        request: CreateRequest | DeleteRequest | SetDataRequest | CheckRequest,
        session_id: int,
        zxid: int,
        time_ms: int,
        writes: Writes,
    ) -> MultiTxnOp:
        """Check one op against the pending view plus ``writes`` and record its effect
        in ``writes``. Raises the CoordError to answer with (``writes`` then holds
        partial effects of this op only if a multi discards them)."""
        match request:
            case SetDataRequest():
                return self._prepare_set_data(request, zxid, time_ms, writes)
            case CreateRequest():
                return self._prepare_create(request, session_id, zxid, time_ms, writes)
            case DeleteRequest():
                return self._prepare_delete(request, zxid, writes)
            case CheckRequest():
                path = _checked_path(request.path)
                node = self._lookup(path, writes)
                if node is None:
                    raise NoNodeError(path)
                _check_version(node, request.version, path)
                return CheckTxn(path=path)
        raise TypeError(f"not a write request: {request!r:.80}")

    def _prepare_create(
        self, request: CreateRequest, session_id: int, zxid: int, time_ms: int, writes: Writes
    ) -> CreateTxn:
        mode = request.mode
        sequential = _IS_SEQUENTIAL[mode]
        path = _checked_path(request.path, sequential=sequential)
        # before the walk up a makepath's missing parents, which is quadratic in the depth
        self._check_created_path(path + "0000000000" if sequential else path)
        if _IS_TTL[mode]:
            if request.ttl_ms <= 0:
                raise BadArgumentsError(f"a TTL node needs ttl_ms > 0, not {request.ttl_ms}")
        elif request.ttl_ms != 0:
            raise BadArgumentsError(f"ttl_ms is only for TTL nodes, not {mode.name}")
        if len(request.data) > self._data_bytes_max:
            raise BadArgumentsError(f"data of {len(request.data)} bytes is over the limit of {self._data_bytes_max}")
        owner = 0
        if _IS_EPHEMERAL[mode]:
            if not session_id:
                raise BadArgumentsError("an ephemeral node needs a session")
            owner = session_id
        # the final name of a sequential create is path + digits: check that it is not reserved
        if is_reserved(path + "0" if sequential else path):
            raise BadArgumentsError(f"{path} is in the reserved subtree")
        if path == "/" and not sequential:
            raise NodeExistsError(path)
        parent_path = parent_of(path)
        parent = self._lookup(parent_path, writes)
        parents: tuple[str, ...] = ()
        if parent is None:
            if not request.makepath:
                raise NoNodeError(parent_path)
            missing = [parent_path]
            ancestor_path = parent_of(parent_path)
            while (ancestor := self._lookup(ancestor_path, writes)) is None:
                missing.append(ancestor_path)
                ancestor_path = parent_of(ancestor_path)
            if ancestor.ephemeral_owner:
                raise NoChildrenForEphemeralsError(ancestor_path)
            parents = tuple(reversed(missing))
            cversion = 0  # the parent will be created by this txn
        else:
            cversion = parent.cversion
        if sequential:
            path = f"{path}{cversion:010d}"
        if parent is not None:
            if self._lookup(path, writes) is not None:
                raise NodeExistsError(path)
            if parent.ephemeral_owner:
                raise NoChildrenForEphemeralsError(path)
        for created in parents:
            self._write_create(created, b"", _PERSISTENT, 0, 0, zxid, time_ms, writes)
        self._write_create(path, request.data, mode, owner, request.ttl_ms, zxid, time_ms, writes)
        return CreateTxn(
            path=path, data=request.data, mode=mode, ephemeral_owner=owner, ttl_ms=request.ttl_ms, parents=parents
        )

    def _prepare_delete(self, request: DeleteRequest, zxid: int, writes: Writes) -> DeleteTxn:
        path = _checked_path(request.path)
        if path == "/" or is_reserved(path):
            raise BadArgumentsError(f"{path} cannot be deleted")
        node = self._lookup(path, writes)
        if node is None:
            raise NoNodeError(path)
        _check_version(node, request.version, path)
        if node.num_children:
            raise NotEmptyError(path)
        self._write_delete(path, zxid, writes)
        return DeleteTxn(path=path)

    def _prepare_set_data(self, request: SetDataRequest, zxid: int, time_ms: int, writes: Writes) -> SetDataTxn:
        path = _checked_path(request.path)
        if is_reserved(path):
            raise BadArgumentsError(f"{path} is in the reserved subtree")
        if len(request.data) > self._data_bytes_max:
            raise BadArgumentsError(f"data of {len(request.data)} bytes is over the limit of {self._data_bytes_max}")
        node = self._lookup(path, writes)
        if node is None:
            raise NoNodeError(path)
        _check_version(node, request.version, path)
        writes[path] = node.with_data(request.data, zxid, time_ms)
        return SetDataTxn(path=path, data=request.data)

    def _write_create(
        self,
        path: str,
        data: bytes,
        mode: CreateMode,
        owner: int,
        ttl_ms: int,
        zxid: int,
        time_ms: int,
        writes: Writes,
    ) -> None:
        """Record a create's effect exactly as :meth:`DataTree.apply` will make it."""
        parent_path = parent_of(path)
        parent = self._lookup(parent_path, writes)
        assert parent is not None
        writes[parent_path] = parent.with_child_added(zxid)
        writes[path] = Node.created(data, mode, owner, ttl_ms, zxid, time_ms)

    def _write_delete(self, path: str, zxid: int, writes: Writes) -> None:
        """Record a delete's effect exactly as :meth:`DataTree.apply` will make it."""
        parent_path = parent_of(path)
        parent = self._lookup(parent_path, writes)
        assert parent is not None
        writes[parent_path] = parent.with_child_removed(zxid)
        writes[path] = None


def _str_bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def txn_body_bytes(body: MultiTxnOp) -> int:
    """An upper estimate of one op's encoded size, cheap enough for every write."""
    match body:
        case CreateTxn():
            size = len(body.data) + _str_bytes(body.path) + _TXN_FIELD_BYTES
            for parent in body.parents:
                size += _str_bytes(parent) + 8
            return size
        case SetDataTxn():
            return len(body.data) + _str_bytes(body.path) + _TXN_FIELD_BYTES
        case _:
            return _str_bytes(body.path) + _TXN_FIELD_BYTES


def _check_version(node: Node, expected: int, path: str) -> None:
    if expected != -1 and expected != node.version:
        raise BadVersionError(f"{path}: version is {node.version}, not {expected}")


__all__ = ["PATH_BYTES_MAX_DEFAULT", "PATH_DEPTH_MAX_DEFAULT", "TXN_BYTES_MAX_DEFAULT", "Preparer", "txn_body_bytes"]
