"""The public client: ``async with client.connect(hosts) as zk:``.

The methods are kazoo's (``create``, ``get``, ``set``, ``delete``, ``exists``,
``get_children``, ``ensure_path``, ``sync``, ``transaction``), with kazoo's keyword
arguments, made async. What kazoo does with callbacks is awaited here: a one-shot
watch is a :class:`~client.Watch` (``await watch.wait()``), a persistent watch an
async iterator (``async with zk.add_watch(path) as events``), the connection state an
async iterator too (``zk.states()``).

Every call checks its arguments before anything is sent (``BadArgumentsError``),
then may run concurrently with any number of others: requests are pipelined on one
connection and their replies come back in order (see :mod:`client._connection`).

Where we differ from kazoo, and why
    - No callbacks anywhere: ``watch=`` takes a :class:`~client.Watch`, not a function.
    - ``create``'s flags are keyword-only: kazoo's third positional parameter is
      ``acl``, which coord does not have, so a positional call could silently mean
      something else.
    - ``LOST`` is final. kazoo opens a new session behind the caller's back after
      an expiry; here the client stays lost (every call raises
      ``SessionExpiredError``) and the program decides, typically by leaving the
      ``connect`` block and opening a new one.
    - While ``SUSPENDED``, new calls wait for the reconnect (as kazoo queues them);
      only calls that were in flight on the dropped connection raise
      ``ConnectionLossError``.
    - :class:`~client.Retry` raises the last real error when it gives up, not
      ``RetryFailedError``.
    - ``delete`` and ``ensure_path`` return None rather than ``True``.
    - No ACLs, auth, chroot or read-only mode (the service has none of them).
"""

from __future__ import annotations

import contextlib
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal, NoReturn, ParamSpec, TypeVar, overload

import trio

from client._connection import Connection, OpenStream, open_tcp, parse_hosts
from client._retry import Retry
from client._state import ConnectionState, StateStream
from client._tls import client_context, tls_opener
from client._transaction import Transaction
from client._validate import check_path, check_value, check_version, create_mode
from client._watch import Watch, WatchStream
from coord.errors import BadArgumentsError, CoordError, NodeExistsError, NoNodeError
from coord.protocol import (
    DATA_BYTES_MAX_DEFAULT,
    AddWatchMode,
    AddWatchRequest,
    CreateRequest,
    DeleteRequest,
    ExistsRequest,
    GetChildrenRequest,
    GetDataRequest,
    RemoveWatchesRequest,
    SetDataRequest,
    Stat,
    SyncRequest,
    WatcherType,
    is_reserved,
    join,
)

P = ParamSpec("P")
T = TypeVar("T")

REMOVE_WATCH_TIMEOUT_S = 2.0
"""How long leaving an ``add_watch`` block waits for the server to drop the watch."""


def _check_watch(watch: Any) -> None:
    if type(watch) is not Watch:
        raise BadArgumentsError(f"watch must be a client.Watch, not {type(watch).__name__} (callbacks are not used)")
    if watch.is_fired:
        raise BadArgumentsError("this Watch already fired; a watch is one-shot, make a new one")


class Client:
    """A session with a coord ensemble. Made by :func:`connect`, not directly.

    All methods are safe to call from many tasks at once. Each raises
    ``ConnectionLossError`` if the connection drops while its request is in flight
    (the operation may or may not have happened: retry idempotent ones, see
    :class:`Retry`), and ``SessionExpiredError`` once the session is lost. While the
    client reconnects (state ``SUSPENDED``), new calls wait for the reconnect.
    """

    def __init__(self, connection: Connection, *, data_bytes_max: int) -> None:
        self._connection = connection
        self._core = connection.core
        self._call = connection.call
        self._data_bytes_max = data_bytes_max
        self._retry = Retry()

    # --- session --------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The connection state: CONNECTED, SUSPENDED or LOST."""
        return self._connection.state

    @property
    def connected(self) -> bool:
        """Whether the state is CONNECTED (kazoo's property)."""
        return self._connection.state is ConnectionState.CONNECTED

    @property
    def session_id(self) -> int:
        """The session's id (kept across reconnects)."""
        return self._core.session_id

    @property
    def client_id(self) -> tuple[int, bytes]:
        """``(session_id, password)``, as kazoo."""
        return self._core.session_id, self._core.password

    @property
    def session_timeout(self) -> float:
        """The session timeout the server granted, in seconds."""
        return self._core.timeout_ms / 1000

    @property
    def last_zxid(self) -> int:
        """The highest zxid seen from the ensemble (replies and events)."""
        return self._core.last_zxid

    @property
    def server_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of the server of the current (or last) connection."""
        return self._connection.address

    async def wait_connected(self) -> None:
        """Wait until the state is CONNECTED (returns at once if it is).

        Raises:
            SessionExpiredError: the session is lost or the client closed.

        Cancellation: safe.
        """
        await self._connection.wait_connected()

    def states(self) -> StateStream:
        """The connection state as an async iterator: ``async for state in zk.states()``.

        Yields the current state first, then every change, in order; ends after LOST.
        """
        return self._connection.states()

    async def close(self) -> None:
        """End the session: ephemeral nodes go at once, watches fail.

        Done when the ``connect`` block is left, so only needed to end earlier.
        Idempotent. Waits at most 2 s for the server (shielded from cancellation).
        """
        await self._connection.close()

    # --- reads and writes -------------------------------------------------------------

    @overload
    async def create(
        self,
        path: str,
        value: bytes = ...,
        *,
        ephemeral: bool = ...,
        sequence: bool = ...,
        makepath: bool = ...,
        container: bool = ...,
        ttl: int = ...,
        include_data: Literal[False] = ...,
    ) -> str: ...

    @overload
    async def create(
        self,
        path: str,
        value: bytes = ...,
        *,
        ephemeral: bool = ...,
        sequence: bool = ...,
        makepath: bool = ...,
        container: bool = ...,
        ttl: int = ...,
        include_data: Literal[True],
    ) -> tuple[str, Stat]: ...

    async def create(
        self,
        path: str,
        value: bytes = b"",
        *,
        ephemeral: bool = False,
        sequence: bool = False,
        makepath: bool = False,
        container: bool = False,
        ttl: int = 0,
        include_data: bool = False,
    ) -> str | tuple[str, Stat]:
        """Create a node.

        Args:
            path: the node; with ``sequence``, the prefix of its name (it may end
                in ``/``): the server appends a 10-digit counter.
            value: its data.
            ephemeral: delete the node when this session ends.
            sequence: append a unique, increasing counter to the name.
            makepath: create missing parents (as persistent nodes).
            container: a container node (deleted by the server once its last child
                is gone).
            ttl: milliseconds; a persistent node deleted once unchanged and childless
                for this long (0: no ttl).
            include_data: return ``(path, stat)`` instead of the path.

        Returns:
            The created path (with the counter for a sequential node), or
            ``(path, stat)`` with ``include_data``.

        Raises:
            NodeExistsError: the node exists.
            NoNodeError: the parent does not exist (and ``makepath`` is false).
            NoChildrenForEphemeralsError: the parent is ephemeral.
            BadArgumentsError: an invalid path, value, or combination of flags
                (nothing is sent).

        Cancellation: once sent, the node may or may not be created.
        """
        mode = create_mode(ephemeral=ephemeral, sequence=sequence, container=container, ttl=ttl, path=path)
        check_path(path, sequential=sequence)
        if type(value) is not bytes or len(value) > self._data_bytes_max:
            check_value(value, self._data_bytes_max, path)
        request = CreateRequest(path=path, data=value, mode=mode, ttl_ms=ttl, makepath=bool(makepath))  # type: ignore[arg-type]
        created: tuple[str, Stat] = await self._call(request, path)
        return created if include_data else created[0]

    async def get(self, path: str, watch: Watch | None = None) -> tuple[bytes, Stat]:
        """Read a node's value and stat.

        Args:
            path: the node.
            watch: a :class:`Watch` to arm; it fires on the node's next change or
                deletion (``NODE_DATA_CHANGED``, ``NODE_DELETED``).

        Returns:
            ``(value, stat)``.

        Raises:
            NoNodeError: no such node (the watch is not armed).
        """
        check_path(path)
        if watch is not None:
            _check_watch(watch)
        result: tuple[bytes, Stat] = await self._call(GetDataRequest(path=path, watch=watch is not None), path, watch)
        return result

    async def set(self, path: str, value: bytes, version: int = -1) -> Stat:
        """Replace a node's value.

        Args:
            path: the node.
            value: the new value.
            version: the version the node must be at (-1: any).

        Returns:
            The node's new stat.

        Raises:
            NoNodeError: no such node.
            BadVersionError: the node is not at ``version``.

        Cancellation: once sent, the value may or may not be set.
        """
        check_path(path)
        if type(value) is not bytes or len(value) > self._data_bytes_max:
            check_value(value, self._data_bytes_max, path)
        if type(version) is not int:
            check_version(version, path)
        stat: Stat = await self._call(SetDataRequest(path=path, data=value, version=version), path)
        return stat

    async def delete(self, path: str, version: int = -1, recursive: bool = False) -> None:
        """Delete a node.

        Args:
            path: the node.
            version: the version it must be at (-1: any; with ``recursive``, applies to
                ``path`` itself only).
            recursive: delete its children first, depth-first (children that vanish
                meanwhile are fine; a missing ``path`` is not an error then). Not
                atomic: a child created concurrently makes it fail with NotEmptyError.
                ``delete("/", recursive=True)`` empties the tree but for the root and
                the service's read-only ``/coord`` subtree.

        Raises:
            NoNodeError: no such node (unless ``recursive``).
            BadVersionError: the node is not at ``version``.
            NotEmptyError: the node has children.

        Cancellation: once sent, the node may or may not be deleted; a cancelled
        recursive delete leaves part of the subtree.
        """
        check_path(path)
        if type(version) is not int:
            check_version(version, path)
        if recursive:
            await self._delete_recursive(path, version)
            return
        await self._call(DeleteRequest(path=path, version=version), path)

    async def _delete_recursive(self, path: str, version: int) -> None:
        try:
            children = await self.get_children(path)
        except NoNodeError:
            return
        for child in children:
            child_path = join(path, child)
            if not is_reserved(child_path):  # the service's own subtree is read-only
                await self._delete_recursive(child_path, -1)
        if path == "/":
            return  # the root stays, as in kazoo
        with contextlib.suppress(NoNodeError):
            await self._call(DeleteRequest(path=path, version=version), path)

    async def exists(self, path: str, watch: Watch | None = None) -> Stat | None:
        """A node's stat, or None if there is no such node.

        Args:
            path: the node.
            watch: a :class:`Watch` to arm: fires when the node is created
                (``NODE_CREATED``) if it does not exist, else on its next change
                or deletion.

        Returns:
            The stat, or None.
        """
        check_path(path)
        if watch is not None:
            _check_watch(watch)
        stat: Stat | None = await self._call(ExistsRequest(path=path, watch=watch is not None), path, watch)
        return stat

    @overload
    async def get_children(
        self, path: str, watch: Watch | None = ..., include_data: Literal[False] = ...
    ) -> list[str]: ...

    @overload
    async def get_children(
        self, path: str, watch: Watch | None = ..., *, include_data: Literal[True]
    ) -> tuple[list[str], Stat]: ...

    async def get_children(
        self, path: str, watch: Watch | None = None, include_data: bool = False
    ) -> list[str] | tuple[list[str], Stat]:
        """The names of a node's children, sorted.

        Args:
            path: the node.
            watch: a :class:`Watch` to arm: fires when a child is created or deleted
                (``NODE_CHILDREN_CHANGED``) or the node is deleted (``NODE_DELETED``).
            include_data: also return the node's stat, as kazoo.

        Returns:
            The names, or ``(names, stat)`` with ``include_data``.

        Raises:
            NoNodeError: no such node (the watch is not armed).
        """
        check_path(path)
        if watch is not None:
            _check_watch(watch)
        names: list[str]
        stat: Stat
        request = GetChildrenRequest(path=path, watch=watch is not None, include_stat=bool(include_data))
        names, stat = await self._call(request, path, watch)
        if include_data:
            return names, stat
        return names

    async def ensure_path(self, path: str) -> None:
        """Create ``path`` and any missing parents (persistent, empty); fine if it exists.

        Raises:
            NoChildrenForEphemeralsError: an ancestor is ephemeral.
        """
        check_path(path)
        if path == "/":
            await trio.lowlevel.checkpoint()
            return
        with contextlib.suppress(NodeExistsError):
            await self._call(CreateRequest(path=path, makepath=True), path)

    async def sync(self, path: str) -> str:
        """Wait until the server this client is connected to has caught up with the
        leader, so that the next read sees every write ordered before the sync.

        Returns:
            ``path``.
        """
        check_path(path)
        synced: str = await self._call(SyncRequest(path=path), path)
        return synced

    def transaction(self) -> Transaction:
        """A new :class:`Transaction` (``async with zk.transaction() as t:``)."""
        return Transaction(self)

    # --- watches --------------------------------------------------------------------

    def data_watch(self, path: str) -> Watch:
        """A new one-shot :class:`Watch` meant for ``path`` (pass it to ``get``/``exists``).

        A convenience that reads well: ``w = zk.data_watch(p); await zk.get(p, watch=w)``.
        """
        check_path(path)
        return Watch()

    @contextlib.asynccontextmanager
    async def add_watch(self, path: str, recursive: bool = False) -> AsyncIterator[WatchStream]:
        """A persistent watch on ``path`` (ZooKeeper 3.6), for the duration of the block.

        ``async with zk.add_watch("/config", recursive=True) as events:
        async for event in events: ...``. A persistent watch stays armed after it
        fires. Non-recursive: every event on ``path`` (created, changed, deleted,
        children changed). Recursive: created, changed and deleted events for
        ``path`` and every node below it (no children-changed events).

        Leaving the block removes the watch on the server (unless another block
        still watches the same path the same way).

        Raises:
            BadArgumentsError: an invalid path.

        Cancellation: safe; a watch whose creation was cancelled is dropped.
        """
        check_path(path)
        stream = WatchStream(path, recursive=bool(recursive))
        mode = AddWatchMode.PERSISTENT_RECURSIVE if recursive else AddWatchMode.PERSISTENT
        try:
            await self._call(AddWatchRequest(path=path, mode=mode), path, stream, bool(recursive))
        except BaseException:
            stream._end()
            raise
        try:
            yield stream
        finally:
            stream._end()
            if self._core.watches.forget_stream(stream) and self._connection.accepting:
                kind = WatcherType.PERSISTENT_RECURSIVE if recursive else WatcherType.PERSISTENT
                with trio.move_on_after(REMOVE_WATCH_TIMEOUT_S, shield=True):
                    with contextlib.suppress(CoordError):
                        await self._call(RemoveWatchesRequest(path=path, watcher_type=kind), path, None, kind)

    async def remove_watches(self, path: str, watcher_type: WatcherType) -> None:
        """Remove this session's watches of a type on ``path``.

        Local watchers are told, as in ZooKeeper: one-shot watches fire with
        ``DATA_WATCH_REMOVED`` / ``CHILD_WATCH_REMOVED``, persistent watch streams get
        ``PERSISTENT_WATCH_REMOVED`` and end.

        Args:
            path: the node.
            watcher_type: ``WatcherType.DATA`` (data and exists watches), ``CHILDREN``,
                ``PERSISTENT``, ``PERSISTENT_RECURSIVE`` or ``ANY``.

        Raises:
            NoWatcherError: the session has no such watch on ``path``.
        """
        check_path(path)
        try:
            kind = WatcherType(watcher_type)
        except ValueError:
            raise BadArgumentsError(f"unknown watcher type {watcher_type!r}") from None
        await self._call(RemoveWatchesRequest(path=path, watcher_type=kind), path, None, kind)

    # --- conveniences ---------------------------------------------------------------

    async def retry(self, func: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """``await zk.retry(zk.get, "/x")``: call with the default :class:`Retry` (kazoo's
        ``zk.retry``)."""
        return await self._retry(func, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<client.Client session={self._core.session_id:#x} {self._connection.state}>"


@contextlib.asynccontextmanager
async def connect(
    hosts: str | Sequence[str] = "127.0.0.1:2281",
    session_timeout: float = 10.0,
    *,
    connect_timeout: float | None = None,
    max_reconnect_delay: float = 1.0,
    data_bytes_max: int = DATA_BYTES_MAX_DEFAULT,
    rng: random.Random | None = None,
    open_stream: OpenStream | None = None,
    fail_fast: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    tls: bool = False,
) -> AsyncIterator[Client]:
    """Open a session: ``async with client.connect("h1:2281,h2:2281") as zk:``.

    The client's tasks (reader, writer, keepalive, reconnects) run in a nursery owned
    by this block. Leaving the block closes the session (its ephemeral nodes go at
    once) and stops them.

    Args:
        hosts: ``"host:port,host:port"`` (or a list of ``"host:port"``), tried in a
            shuffled order; the port defaults to 2281.
        session_timeout: seconds to ask for; the server may grant another value
            (:attr:`Client.session_timeout`).
        connect_timeout: seconds to wait for the first session (default: the
            session timeout).
        max_reconnect_delay: the longest pause, in seconds, between rounds of
            connection attempts.
        data_bytes_max: the largest value the client sends; match the servers'.
        rng: the source of host shuffling and backoff jitter.
        open_stream: how to reach a server (``await open_stream(host, port)``); TCP by
            default, replaceable for TLS or tests.
        ssl_context: speak TLS to the servers with this context (hostname
            verification on by default; see :func:`client.client_context`).
        tls: speak TLS with the system's CAs (``ssl.create_default_context()``).
        fail_fast: for one-shot tools: give up on the first session at once (after a
            few quick rounds) when every server refuses the connection or its name
            does not resolve, rather than retrying until ``connect_timeout``. Only the
            first connection: the session still rides out a server restart.

    Yields:
        The connected :class:`Client`.

    Raises:
        ConnectionLossError: no server answered within ``connect_timeout`` (with
            ``fail_fast``: every server refused the connection).
        BadArgumentsError: a bad host list or timeout.
    """
    if not session_timeout > 0:
        raise BadArgumentsError(f"session_timeout must be positive, not {session_timeout!r}")
    if (ssl_context is not None) + tls + (open_stream is not None) > 1:
        raise BadArgumentsError("give one of ssl_context, tls=True and open_stream, not several")
    if ssl_context is not None or tls:
        open_stream = tls_opener(ssl_context if ssl_context is not None else client_context())
    connection = Connection(
        parse_hosts(hosts),
        session_timeout_ms=int(session_timeout * 1000),
        connect_timeout=session_timeout if connect_timeout is None else connect_timeout,
        max_reconnect_delay=max_reconnect_delay,
        data_bytes_max=data_bytes_max,
        rng=rng or random.Random(),
        open_stream=open_stream or open_tcp,
        fail_fast=fail_fast,
    )
    zk = Client(connection, data_bytes_max=data_bytes_max)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(connection.run)
            try:
                yield zk
            finally:
                await zk.close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The client's own tasks never raise, so a lone exception is the caller's
        # (or the connect failure): give it back as it was raised, not wrapped.
        if len(group.exceptions) != 1:
            raise
        _reraise(group.exceptions[0])


def _reraise(error: BaseException) -> NoReturn:
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context
        del error, context


__all__ = ["Client", "connect"]
