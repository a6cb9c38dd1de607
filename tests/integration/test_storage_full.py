"""A full disk or log map: writes fail with StorageFullError, reads work, nothing is lost.

Two real ways to run out of space (docs/storage.md):

- a small LMDB map (``log_map_bytes``): LMDB's ``MDB_MAP_FULL`` and the log's own
  reserve; space comes back when a snapshot lets the log purge;
- a small tmpfs holding the data directory, filled up by another file: the kernel's
  ``ENOSPC``; space comes back when that file is deleted. Mounting needs root (CI runs
  as root); elsewhere the test skips.

Both check what a client sees: the failing write and every write after it while the
space is gone get ``StorageFullError`` (never "no leader; retry", although the server
rebuilds its state after each failure), reads keep working on the same session,
writes work again once there is space, without a restart, and every acknowledged
write is still there, also after a restart.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

import client
from coord.config import ServerConfig
from coord.server import Server, open_server
from tests.polling import wait_until

VALUE = b"s" * 20_000


def server_config(data_dir: Path, **overrides: object) -> ServerConfig:
    fields: dict[str, object] = {
        "data_dir": data_dir,
        "listen_port": 0,
        "tick_ms": 50,
        "min_session_timeout_ms": 100,
        "max_session_timeout_ms": 30_000,
        "log_map_bytes": 64 << 20,
    }
    fields.update(overrides)
    return ServerConfig(**fields)  # type: ignore[arg-type]


async def fill_until_full(zk: client.Client, acknowledged: dict[str, bytes]) -> client.StorageFullError:
    """Create nodes until the server says its storage is full; returns that error."""
    for n in range(10_000):
        path = f"/fill/n{n:05d}"
        try:
            await zk.create(path, VALUE, makepath=True)
        except client.StorageFullError as error:
            return error
        acknowledged[path] = VALUE
    raise AssertionError("the storage never filled up")


async def writes_keep_getting_storage_full(zk: client.Client, count: int = 100) -> None:
    """Right after the failure the server has no leader for a moment (it rebuilds its
    state and re-elects itself): those writes must get StorageFullError too."""
    for n in range(count):
        with pytest.raises(client.StorageFullError):
            await zk.create(f"/refused-{n}", VALUE)


async def reads_work(zk: client.Client, acknowledged: dict[str, bytes]) -> None:
    for path, value in list(acknowledged.items())[-5:]:
        assert (await zk.get(path))[0] == value


async def writes_work_again(server: Server, zk: client.Client, acknowledged: dict[str, bytes]) -> None:
    """Once there is room, the server re-elects itself and writes succeed again. A write
    that raced a disk write begun before the room was made may still be refused with
    StorageFullError (nothing of it is written); a later one must succeed."""
    refused = 0

    async def create_after() -> bool:
        nonlocal refused
        await server.wait_serving()  # re-elected itself once its epoch could be written
        try:
            await zk.create("/after", b"room again")
        except client.StorageFullError:
            refused += 1
            return False
        return True

    await wait_until(create_after, timeout=30, interval=0.05, message="a write succeeds once there is room")
    assert refused <= 3, f"{refused} writes refused after the room was made"
    acknowledged["/after"] = b"room again"
    await reads_work(zk, acknowledged)


async def nothing_lost_after_a_restart(config: ServerConfig, acknowledged: dict[str, bytes]) -> None:
    async with open_server(config) as server, client.connect(server.connect_string) as zk:
        for path, value in acknowledged.items():
            assert (await zk.get(path))[0] == value, path
        assert not await zk.exists("/refused-0")


async def test_a_full_log_map_gets_storage_full_until_a_snapshot_frees_it(tmp_path: Path) -> None:
    config = server_config(tmp_path, log_map_bytes=512 << 10)
    acknowledged: dict[str, bytes] = {}
    with trio.fail_after(120):
        async with open_server(config) as server, client.connect(server.connect_string) as zk:
            error = await fill_until_full(zk, acknowledged)
            assert "full" in str(error), error
            assert len(acknowledged) > 5
            await writes_keep_getting_storage_full(zk)
            await reads_work(zk, acknowledged)
            await server.take_snapshot()  # the log purges what the snapshot covers
            await writes_work_again(server, zk, acknowledged)
        await nothing_lost_after_a_restart(config, acknowledged)


async def test_a_full_disk_gets_storage_full_keeps_reads_and_recovers_when_space_is_freed(small_disk: Path) -> None:
    config = server_config(small_disk / "coord-data")
    filler = small_disk / "filler"
    acknowledged: dict[str, bytes] = {}
    with trio.fail_after(120):
        async with open_server(config) as server, client.connect(server.connect_string) as zk:
            await zk.create("/fill", b"")
            acknowledged["/fill"] = b""
            stat = os.statvfs(small_disk)
            with open(filler, "wb") as file:  # leave about 256 KiB: a dozen writes
                file.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - (256 << 10)))
            error = await fill_until_full(zk, acknowledged)
            assert "disk" in str(error) and "full" in str(error), error
            assert server.status()["last_storage_error"]
            await writes_keep_getting_storage_full(zk)
            await reads_work(zk, acknowledged)
            filler.unlink()
            await writes_work_again(server, zk, acknowledged)
        await nothing_lost_after_a_restart(config, acknowledged)
