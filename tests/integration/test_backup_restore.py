"""``coord backup`` of a running server and ``coord restore`` of its file into a new ensemble.

A backup is one snapshot file of one zxid, taken while writes go on; a restored data
directory passes recovery with the same tree, a server serves it, and a new ensemble
starts from it (one member restored and the others empty, or all restored). A file
that is not a whole, intact backup is refused in one line and nothing is created.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import client
import coord.server.clients
from coord.cli.backup import BackupError, BackupResult, backup_to_file, restore_data_dir
from coord.config import ServerConfig
from coord.recovery import recover
from coord.server import Server, open_server
from coord.storage import SnapshotStore
from coord.testing import open_ensemble
from tests.integration.test_cli import run_cli, start_serve
from tests.polling import wait_until

NODES = 3_000
VALUE = bytes(range(256)) * 4  # 1 KiB: the image spans several backup frames
MAP_BYTES = 64 << 20


def config(data_dir: Path) -> ServerConfig:
    return ServerConfig(data_dir=data_dir, listen_port=0, log_map_bytes=MAP_BYTES)


async def fill(zk: client.Client) -> None:
    await zk.create("/data", b"")
    for start in range(0, NODES, 200):
        async with zk.transaction() as txn:
            for n in range(start, start + 200):
                txn.create(f"/data/n{n:05d}", VALUE + b"%d" % n)


async def backup_while_writing(tmp_path: Path) -> tuple[BackupResult, dict[int, int], Path]:
    """Back up a standalone server with NODES znodes while a client keeps setting ``/live``.

    Returns the backup, and the value ``/live`` got at each zxid."""
    file = tmp_path / "coord.backup"
    live: dict[int, int] = {}
    async with open_server(config(tmp_path / "source")) as server, client.connect(server.connect_string) as zk:
        await fill(zk)
        await zk.create("/live", b"0")
        writing = trio.Event()

        async def keep_writing() -> None:
            n = 0
            while True:
                n += 1
                live[(await zk.set("/live", b"%d" % n)).mzxid] = n
                writing.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_writing)
            await writing.wait()
            result = await backup_to_file(server.address, file, timeout=10)
            await writing.wait()
            nursery.cancel_scope.cancel()
        assert server.tree.last_zxid > result.zxid  # the writes went on past the backup
    return result, live, file


async def test_a_backup_of_a_busy_server_is_of_one_zxid_and_restores_to_the_same_tree(tmp_path: Path) -> None:
    with trio.fail_after(120):
        result, live, file = await backup_while_writing(tmp_path)
    assert result.nodes == NODES + 4  # /, /coord, /data, /live
    restored = tmp_path / "restored"
    assert restore_data_dir(file, restored) == (result.zxid, result.nodes)

    recovered = recover(restored, log_map_bytes=MAP_BYTES, replay=False)
    try:
        tree = recovered.tree
        assert tree.last_zxid == result.zxid and recovered.snapshot_zxid == result.zxid
        assert recovered.log.base_zxid == result.zxid and recovered.log.last_zxid == 0
        assert recovered.epoch == result.zxid >> 32
        # One zxid: /live holds the last value set at or before it.
        expected = live[max(zxid for zxid in live if zxid <= result.zxid)] if min(live) <= result.zxid else 0
        assert tree.nodes["/live"].data == b"%d" % expected
        digest = tree.digest()
    finally:
        recovered.log.close()

    with trio.fail_after(60):
        async with open_server(config(restored)) as server:
            assert server.tree.digest() == digest  # before our session's txn changes it
            async with client.connect(server.connect_string) as zk:
                children = await zk.get_children("/data")
                assert len(children) == NODES
                for n in (0, 1234, NODES - 1):
                    assert (await zk.get(f"/data/n{n:05d}"))[0] == VALUE + b"%d" % n
                await zk.create("/after-restore", b"x")  # it takes writes, in a new epoch
                assert server.tree.last_zxid >> 32 > result.zxid >> 32


@pytest.mark.parametrize("restored_members", [1, 3])
async def test_a_new_ensemble_starts_from_a_backup(tmp_path: Path, restored_members: int) -> None:
    with trio.fail_after(60):
        async with open_server(config(tmp_path / "source")) as server, client.connect(server.connect_string) as zk:
            await fill(zk)
            result = await backup_to_file(server.address, tmp_path / "coord.backup", timeout=10)
            digest = server.tree.digest()
    base = tmp_path / "ensemble"
    for server_id in range(1, restored_members + 1):  # the others start empty
        restore_data_dir(tmp_path / "coord.backup", base / f"server-{server_id}")
    with trio.fail_after(120):
        async with open_ensemble(3, data_dir=base) as ensemble:
            leader = await ensemble.wait_for_leader()
            if restored_members == 1:
                assert leader == 1  # the only one with the data
            zxid = await ensemble.wait_converged()
            assert zxid >= result.zxid
            for server_id in ensemble.server_ids:
                async with client.connect(ensemble.connect_string_of(server_id)) as zk:
                    await zk.sync("/")
                    assert len(await zk.get_children("/data")) == NODES
                    assert (await zk.get("/data/n00042"))[0] == VALUE + b"42"
            async with client.connect(ensemble.connect_string) as zk:
                await zk.create("/data/more", b"")
            await ensemble.wait_converged()
            servers = [ensemble.server(server_id) for server_id in ensemble.server_ids]
            trees = [server.tree for server in servers if isinstance(server, Server)]
            assert len(trees) == 3 and len({tree.digest() for tree in trees}) == 1
            assert digest != trees[0].digest()  # /data/more


async def test_a_server_that_is_not_serving_refuses_a_backup(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_ensemble(3, data_dir=tmp_path / "ensemble") as ensemble:
            leader = await ensemble.wait_for_leader()
            alone = next(server_id for server_id in ensemble.server_ids if server_id != leader)
            for server_id in ensemble.server_ids:
                if server_id != alone:
                    await ensemble.stop(server_id)

            async def looking() -> bool:
                return (await ensemble.status(alone)).get("role") == "looking"

            await wait_until(looking, timeout=30, message="the last server stops serving")
            with pytest.raises(BackupError, match="not serving"):
                await backup_to_file(ensemble.address(alone), tmp_path / "coord.backup", timeout=10)
    assert sorted(os.listdir(tmp_path)) == ["ensemble"]  # no file, no staging left behind


async def test_backups_beyond_the_bound_are_refused_and_the_count_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup needs no session and holds an image of the tree while it is sent: a
    server sends at most BACKUPS_AT_ONCE at a time (here 1: the second is refused)."""
    monkeypatch.setattr(coord.server.clients, "BACKUPS_AT_ONCE", 1)
    with trio.fail_after(60):
        async with open_server(config(tmp_path / "data")) as server, client.connect(server.connect_string) as zk:
            await fill(zk)
            address = server.address
            await backup_to_file(address, tmp_path / "first.backup", timeout=10)
            assert server._backups_running == 0  # the finished one no longer counts
            server._backups_running = 1  # as if one were being sent
            with pytest.raises(BackupError, match="backups are being sent already"):
                await backup_to_file(address, tmp_path / "second.backup", timeout=10)
            server._backups_running = 0
    assert not (tmp_path / "second.backup").exists()


# --- the command ------------------------------------------------------------------------


async def test_backup_and_restore_through_the_command(tmp_path: Path) -> None:
    file, data_dir = tmp_path / "coord.backup", tmp_path / "restored"
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            served = await start_serve(nursery, "--data-dir", str(tmp_path / "source"))
            assert (await run_cli("create", "--server", served.address, "/app", "hello")).returncode == 0
            done = await run_cli("backup", "--server", served.address, str(file))
            assert done.returncode == 0, done.stderr
            assert b"backed up" in done.stdout and b"100%" in done.stderr  # plain progress lines: not a terminal
            served.process.terminate()
        done = await run_cli("restore", str(file), "--data-dir", str(data_dir))
        assert done.returncode == 0, done.stderr
        assert b"restored" in done.stdout
        async with trio.open_nursery() as nursery:
            served = await start_serve(nursery, "--data-dir", str(data_dir))
            got = await run_cli("get", "--server", served.address, "/app")
            assert got.stdout.strip() == b"hello"
            served.process.terminate()


async def test_backup_from_nothing_listening_fails_cleanly(tmp_path: Path) -> None:
    file = tmp_path / "coord.backup"
    done = await run_cli("backup", "--server", "127.0.0.1:1", str(file))
    assert done.returncode == 3
    assert done.stderr.decode().startswith("coord: backup failed: 127.0.0.1:1: cannot connect")
    assert os.listdir(tmp_path) == []


def _truncated(data: bytes) -> bytes:
    return data[: len(data) - 100]


def _flipped(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]


def _flipped_header(data: bytes) -> bytes:
    return data[:12] + bytes([data[12] ^ 0x80]) + data[13:]  # in the zxid


@pytest.fixture(scope="module")
def good_backup(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    tmp_path = tmp_path_factory.mktemp("backup")

    async def take() -> bytes:
        async with open_server(config(tmp_path / "source")) as server, client.connect(server.connect_string) as zk:
            for n in range(300):
                await zk.create(f"/n{n}", VALUE)
            await backup_to_file(server.address, tmp_path / "coord.backup", timeout=10)
        return (tmp_path / "coord.backup").read_bytes()

    return trio.run(take)


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_truncated, "is truncated or damaged"),
        (_flipped, "is damaged: its contents do not match its sha256"),
        (_flipped_header, "is damaged: its contents do not match its sha256"),
        (lambda data: b"hello, world\n" * 100, "is not a coord backup"),
        (lambda data: b"", "is not a coord backup"),
    ],
    ids=["truncated", "flipped-byte", "flipped-header", "not-a-backup", "empty"],
)
def test_restore_refuses_a_damaged_file_in_one_line_and_creates_nothing(
    tmp_path: Path, good_backup: bytes, damage: object, says: str
) -> None:
    file, data_dir = tmp_path / "coord.backup", tmp_path / "a" / "restored"
    assert callable(damage)
    file.write_bytes(damage(good_backup))
    done = subprocess.run(
        [sys.executable, "-m", "coord.cli", "restore", str(file), "--data-dir", str(data_dir)],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coord: restore failed: ") and says in lines[0], lines
    assert sorted(os.listdir(tmp_path)) == ["coord.backup"]  # no DIR, no parent, no staging


def test_restore_refuses_an_intact_file_whose_tree_does_not_decode(tmp_path: Path) -> None:
    written = SnapshotStore(tmp_path / "elsewhere").write(5, b"not a tree image")
    with pytest.raises(BackupError, match="holds no valid tree"):
        restore_data_dir(written, tmp_path / "restored")
    assert sorted(os.listdir(tmp_path)) == ["elsewhere"]


def test_restore_refuses_a_data_dir_that_is_not_empty(tmp_path: Path, good_backup: bytes) -> None:
    file, data_dir = tmp_path / "coord.backup", tmp_path / "restored"
    file.write_bytes(good_backup)
    data_dir.mkdir()
    (data_dir / "precious").write_text("keep me")
    with pytest.raises(BackupError, match="is not empty"):
        restore_data_dir(file, data_dir)
    assert os.listdir(data_dir) == ["precious"]
    data_dir.joinpath("precious").unlink()
    zxid, nodes = restore_data_dir(file, data_dir)  # an empty one is fine
    assert nodes == 302 and sorted(os.listdir(data_dir)) == ["log", "snapshots"]
    assert os.listdir(data_dir / "snapshots") == [f"snapshot.{zxid:016x}"]
    assert sorted(os.listdir(tmp_path)) == ["coord.backup", "restored"]
