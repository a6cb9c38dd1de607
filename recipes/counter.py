"""A shared counter (kazoo's ``Counter``): read, add, subtract, atomically.

::

    counter = Counter(zk, "/app/jobs-done")
    await counter.add(1)             # returns the new value
    print(await counter.get(), counter.pre_value, counter.post_value)

Theory
    The value lives in the node's data as its decimal ``repr`` (as kazoo, so ``int``
    and ``float`` counters both work: the type of ``default`` decides). A change is
    read-modify-write with a versioned ``set``: read ``(value, version)``, write
    ``value + delta`` only if the node is still at ``version``. A concurrent change
    makes the write fail with ``BadVersionError`` and the change is tried again from
    a fresh read, so no update is ever lost and each ``add`` is applied exactly once
    (linearizable: the versioned write is ordered by the ensemble).

When the outcome is unknown
    If the connection drops while the write is in flight (``ConnectionLossError``)
    the write may or may not have been applied, and nothing in a bare number can tell
    which. kazoo retries the whole change then, which can count it twice. Here the
    counter re-reads: if the version did not move, nothing was applied and the
    change is retried; if it moved, :meth:`Counter.add` raises ``ConnectionLossError``
    and the caller decides (the change may have been counted, once).

Cancellation: if cancelled after the write was sent, the change may or may not be
applied (as any write).
"""

from __future__ import annotations

import contextlib

import client
from recipes._common import call, normalize

Number = int | float


class Counter:
    """A counter at ``path``, created with ``default`` on first use (kazoo's).

    Attributes:
        pre_value: the value before this object's last change (None before one).
        post_value: the value after this object's last change.
    """

    def __init__(self, client: client.Client, path: str, default: Number = 0) -> None:
        self.client = client
        self.path = normalize(path)
        self.default = default
        self.default_type: type[int] | type[float] = type(default)
        self.pre_value: Number | None = None
        self.post_value: Number | None = None

    async def _read(self) -> tuple[Number, int]:
        zk = self.client
        while True:
            try:
                data, stat = await call(zk.get, self.path)
            except client.NoNodeError:
                with contextlib.suppress(client.NodeExistsError):
                    await call(zk.create, self.path, repr(self.default).encode(), makepath=True)
                continue
            return (self.default_type(data.decode()) if data else self.default), stat.version

    async def get(self) -> Number:
        """The current value (kazoo's ``value``)."""
        return (await self._read())[0]

    async def add(self, delta: Number = 1) -> Number:
        """Add ``delta`` atomically (kazoo's ``counter += delta``).

        Returns:
            The new value (also in :attr:`post_value`).

        Raises:
            ConnectionLossError: the connection dropped during the write and the
                counter changed meanwhile: the change may or may not be counted.
            TypeError: ``delta`` does not suit the counter's type.
        """
        if not isinstance(delta, int | float):
            raise TypeError(f"delta must be a number, not {type(delta).__name__}")
        zk = self.client
        while True:
            value, version = await self._read()
            new = value + delta
            try:
                await zk.set(self.path, repr(new).encode(), version=version)
            except client.BadVersionError:
                continue  # someone changed it first: again, from a fresh read
            except client.RETRYABLE as error:
                if (await self._read())[1] == version:
                    continue  # not applied: safe to try again
                raise client.ConnectionLossError(
                    f"counter {self.path}: the connection dropped during the update and the counter has changed"
                    " since, so this change may or may not be counted"
                ) from error
            self.pre_value, self.post_value = value, new
            return new

    async def subtract(self, delta: Number = 1) -> Number:
        """Subtract ``delta`` atomically (kazoo's ``counter -= delta``); as :meth:`add`."""
        return await self.add(-delta)


__all__ = ["Counter"]
