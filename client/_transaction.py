"""Transactions (ZooKeeper's multi), the kazoo way."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

from client._session import CHECK, CREATE, DELETE, SET_DATA
from client._validate import check_path, check_value, check_version, create_mode
from coord.protocol import CheckRequest, CreateRequest, DeleteRequest, MultiOp, MultiRequest, SetDataRequest

if TYPE_CHECKING:
    from client._client import Client


class Transaction:
    """A batch of writes applied all together or not at all.

    Queue ops with :meth:`create`, :meth:`delete`, :meth:`set_data` and :meth:`check`
    (they are checked at once, but nothing is sent), then :meth:`commit`, or use it as
    ``async with zk.transaction() as t:``, which commits when the block ends without
    an exception (and sends nothing if it raised). As in kazoo, a transaction that
    fails does not raise: each op's result tells what happened.

    Attributes:
        results: after the commit, one result per op (see :meth:`commit`), else None.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._ops: list[MultiOp] = []
        self._paths: list[tuple[int, str]] = []
        self.committed = False
        self.results: list[Any] | None = None

    def create(
        self,
        path: str,
        value: bytes = b"",
        *,
        ephemeral: bool = False,
        sequence: bool = False,
        container: bool = False,
        ttl: int = 0,
    ) -> None:
        """Queue a create (arguments as :meth:`Client.create`; parents must exist).

        Raises:
            BadArgumentsError: an invalid path, value or combination of flags.
        """
        self._check_open()
        check_path(path, sequential=sequence)
        check_value(value, self._client._data_bytes_max, path)
        mode = create_mode(ephemeral=ephemeral, sequence=sequence, container=container, ttl=ttl, path=path)
        self._add(CreateRequest(path=path, data=value, mode=mode, ttl_ms=ttl), CREATE, path)  # type: ignore[arg-type]

    def delete(self, path: str, version: int = -1) -> None:
        """Queue a delete of ``path`` (at ``version``, or any with -1).

        Raises:
            BadArgumentsError: an invalid path or version.
        """
        self._check_open()
        check_path(path)
        self._add(DeleteRequest(path=path, version=check_version(version, path)), DELETE, path)

    def set_data(self, path: str, value: bytes, version: int = -1) -> None:
        """Queue setting the value of ``path`` (at ``version``, or any with -1).

        Raises:
            BadArgumentsError: an invalid path, value or version.
        """
        self._check_open()
        check_path(path)
        check_value(value, self._client._data_bytes_max, path)
        self._add(SetDataRequest(path=path, data=value, version=check_version(version, path)), SET_DATA, path)

    def check(self, path: str, version: int) -> None:
        """Queue a check that ``path`` is at ``version`` (fails the transaction if not).

        Raises:
            BadArgumentsError: an invalid path or version.
        """
        self._check_open()
        check_path(path)
        self._add(CheckRequest(path=path, version=check_version(version, path)), CHECK, path)

    async def commit(self) -> list[Any]:
        """Send the transaction and wait for its outcome.

        Returns:
            One result per op, in order. On success: the created path (create), a
            :class:`ZnodeStat` (set_data), ``True`` (delete, check). On failure, as
            kazoo: ``RolledBackError`` for the ops before the failing one, the failing
            op's error (``NoNodeError``, ``BadVersionError``, ...), and
            ``RuntimeInconsistencyError`` for the ops after it, as instances, not raised.
            An empty transaction returns ``[]`` without asking the server.

        Raises:
            ValueError: the transaction was already committed.
            ConnectionLossError: no reply (the transaction may or may not have happened).
            SessionExpiredError: the session is lost.

        Cancellation: if cancelled after sending, the transaction may or may not
        have happened (all or nothing, still).
        """
        self._check_open()
        self.committed = True
        if not self._ops:
            self.results = []
            return self.results
        path = self._paths[0][1] if len(self._paths) == 1 else ""
        request = MultiRequest(ops=tuple(self._ops))
        self.results = await self._client._call(request, path, None, self._paths)
        return self.results

    async def __aenter__(self) -> Transaction:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.commit()

    def __len__(self) -> int:
        return len(self._ops)

    def _check_open(self) -> None:
        if self.committed:
            raise ValueError("the transaction was already committed")

    def _add(self, op: MultiOp, kind: int, path: str) -> None:
        self._ops.append(op)
        self._paths.append((kind, path))


__all__ = ["Transaction"]
