"""kill -9 a real server process in the middle of a multi-client write load.

After a restart on the same data directory every acknowledged write must be
there, and the tree the restarted server serves must equal the tree rebuilt from
disk (newest snapshot + log replay), node for node.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import client
from coord.recovery import recover
from coord.tree import DataTree

pytestmark = pytest.mark.slow

CLIENTS = 4
KILL_AFTER_ACKS = (150, 450)


class ServerProcess:
    """``coord serve`` as a child process on an ephemeral loopback port."""

    def __init__(self, data_dir: Path, config: Path) -> None:
        self.data_dir = data_dir
        self.config = config
        self.process: trio.Process | None = None
        self.connect_string = ""

    async def start(self, nursery: trio.Nursery) -> None:
        command = [sys.executable, "-m", "coord.cli", "serve", "--config", str(self.config)]
        command += ["--data-dir", str(self.data_dir), "--listen", "127.0.0.1:0"]
        receive: trio.MemoryReceiveChannel[str]
        send, receive = trio.open_memory_channel(1)
        self.process = await nursery.start(
            lambda task_status: trio.run_process(
                command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False, task_status=task_status
            )
        )
        assert self.process is not None and self.process.stdout is not None
        stdout = self.process.stdout

        async def read_banner() -> None:
            buffer = b""
            while b"\n" not in buffer:
                chunk = await stdout.receive_some(4096)
                if not chunk:
                    break
                buffer += chunk
            await send.send(buffer.decode())

        nursery.start_soon(read_banner)
        with trio.fail_after(20):
            banner = await receive.receive()
        assert "serving on" in banner, banner
        self.connect_string = banner.split("serving on ")[1].split()[0]

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        with trio.fail_after(10):
            await self.process.wait()

    async def stop(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await self.process.wait() == 0


async def write_load(
    connect_string: str, worker: int, history: dict[str, list[bytes]], acked: dict[str, int], stop: trio.Event
) -> None:
    """Create nodes and overwrite them with versioned sets; record what was acknowledged.

    ``history[path]`` lists every value sent to ``path`` in order; ``acked[path]`` is the
    index of the last acknowledged one. Only this worker writes its paths.
    """
    rng = random.Random(worker)
    mine: list[tuple[str, int]] = []
    try:
        async with client.connect(connect_string, session_timeout=5.0) as zk:
            for n in range(100_000):
                if stop.is_set():
                    return
                if mine and rng.random() < 0.4:
                    index = rng.randrange(len(mine))
                    path, version = mine[index]
                    value = f"{worker}-{n}-set".encode()
                    history[path].append(value)
                    stat = await zk.set(path, value, version=version)
                    acked[path] = len(history[path]) - 1
                    mine[index] = (path, stat.version)
                else:
                    path = f"/load/w{worker}-{n}"
                    value = f"{worker}-{n}".encode()
                    history[path] = [value]
                    await zk.create(path, value)
                    acked[path] = 0
                    mine.append((path, 0))
    except (client.ConnectionLossError, client.SessionExpiredError, OSError):
        return  # the server died under us: what was acknowledged is recorded


@pytest.mark.parametrize("seed", [1, 2])
async def test_kill_9_during_write_load_loses_no_acknowledged_write(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    config = tmp_path / "coord.toml"
    # Small snapshot interval: recovery then needs a snapshot *and* a log replay.
    config.write_text("[server]\ntick_ms = 100\n[storage]\nsnapshot_every_txns = 120\n")
    server = ServerProcess(tmp_path / "data", config)
    history: dict[str, list[bytes]] = {}
    acked: dict[str, int] = {}
    kill_after = rng.randint(*KILL_AFTER_ACKS)

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await server.start(nursery)
            async with client.connect(server.connect_string) as zk:
                await zk.create("/load")
            stop = trio.Event()
            async with trio.open_nursery() as load:
                for worker in range(CLIENTS):
                    load.start_soon(write_load, server.connect_string, worker, history, acked, stop)
                while len(acked) + sum(acked.values()) < kill_after:
                    await trio.sleep(0.005)  # polling the load's progress, bounded by fail_after
                await server.kill()
                stop.set()
            assert len(acked) > 0

            # Restart on the same data directory.
            server = ServerProcess(tmp_path / "data", config)
            await server.start(nursery)
            served: dict[str, tuple[bytes, client.ZnodeStat]] = {}
            async with client.connect(server.connect_string) as zk:
                for name in await zk.get_children("/load"):
                    served[f"/load/{name}"] = await zk.get(f"/load/{name}")
            await server.stop()

    # Every acknowledged write is there: a created node exists, and its value is the
    # last acknowledged one or a later one that was in flight at the crash.
    for path, index in acked.items():
        assert path in served, f"acknowledged create of {path} lost"
        value = served[path][0]
        assert value in history[path][index:], f"{path}: {value!r} but {history[path][index]!r} was acknowledged"
    # Nothing invented: every node served was written by a client.
    for path, (value, _stat) in served.items():
        assert value in history.get(path, []), f"{path} holds {value!r}, which no client wrote"

    # The tree served equals snapshot + log replay from disk.
    recovered = recover(tmp_path / "data", log_map_bytes=1 << 30)
    try:
        assert recovered.snapshot_zxid > 0, "the load should have produced a snapshot"
        assert recovered.replayed > 0
        tree: DataTree = recovered.tree
        names, _stat = tree.get_children("/load")
        assert {f"/load/{name}" for name in names} == set(served)
        for path, (value, stat) in served.items():
            node_data, node_stat = tree.get_data(path)
            assert (node_data, node_stat) == (value, stat)
    finally:
        recovered.log.close()
    assert os.path.isdir(tmp_path / "data" / "snapshots")
