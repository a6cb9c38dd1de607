"""A lock around a shared resource, with a fencing token.

Several workers, each with its own session (as if they were separate processes),
take turns adding to a balance kept in ``/examples/fenced/resource``. They hold a
:class:`recipes.Lock` while they do, and they write only through :class:`FencedStore`,
which refuses a write carrying a fencing token older than one it already accepted.

The lock alone is not enough: a worker can lose its lock without knowing it in time
(a long pause, a partition), and its late write would then overwrite a newer
holder's. ``async with lock`` cancels the worker's block when the lock is lost, and
the token makes the resource itself reject what slips through::

    coord ensemble &                                  # in another terminal
    python examples/fenced_lock.py --workers 3 --rounds 5

Prints each write and the final balance; exits 0 if it is ``workers * rounds``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import trio

import client
from recipes import Lock, LockLostError

RESOURCE = "/examples/fenced/resource"
LOCK = "/examples/fenced/lock"


class StaleTokenError(Exception):
    """The store has seen a newer lock holder."""


class FencedStore:
    """A value in a znode that only accepts writes with a token at least as new as the last one."""

    def __init__(self, zk: client.Client, path: str) -> None:
        self.zk = zk
        self.path = path

    async def read(self) -> int:
        data, _stat = await self.zk.get(self.path)
        return int(json.loads(data)["value"])

    async def write(self, token: int, value: int) -> None:
        while True:
            data, stat = await self.zk.get(self.path)
            newest = json.loads(data)["token"]
            if token < newest:
                raise StaleTokenError(f"token {token} is older than {newest}")
            record = json.dumps({"token": token, "value": value}).encode()
            try:
                await self.zk.set(self.path, record, version=stat.version)
                return
            except client.BadVersionError:
                continue  # the store changed under us: check the token again


async def worker(servers: str, name: str, rounds: int) -> None:
    async with client.connect(servers) as zk:
        store = FencedStore(zk, RESOURCE)
        lock = Lock(zk, LOCK, name)
        for _ in range(rounds):
            try:
                async with lock:
                    assert lock.token is not None
                    value = await store.read()
                    await trio.sleep(0.01)  # some work while holding the lock
                    await store.write(lock.token, value + 1)
                    print(f"{name}: token {lock.token} wrote {value + 1}", flush=True)
            except LockLostError as error:
                print(f"{name}: lost the lock, the write may not have happened: {error}", flush=True)
            except StaleTokenError as error:
                print(f"{name}: the store refused a stale write: {error}", flush=True)


async def main(servers: str, workers: int, rounds: int) -> int:
    async with client.connect(servers) as zk:
        await zk.delete("/examples/fenced", recursive=True)
        await zk.create(RESOURCE, json.dumps({"token": 0, "value": 0}).encode(), makepath=True)
        async with trio.open_nursery() as nursery:
            for index in range(workers):
                nursery.start_soon(worker, servers, f"worker-{index}", rounds)
        final = await FencedStore(zk, RESOURCE).read()
    print(f"final balance {final} (expected {workers * rounds})", flush=True)
    return 0 if final == workers * rounds else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("COORD_SERVERS", "127.0.0.1:2281"))
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    sys.exit(trio.run(main, arguments.server, arguments.workers, arguments.rounds))
