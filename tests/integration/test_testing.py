"""The embedded ensemble (coord.testing): in-process and as processes, and its fault controls."""

from __future__ import annotations

import contextlib
import signal
import tomllib
from pathlib import Path

import pytest
import trio

import client
from coord.config import load_config
from coord.protocol import ProtocolError
from coord.testing import ServerProcess, open_ensemble
from coord.testing.processes import config_toml as _toml
from coord.testing.processes import pick_free_ports as _pick_free_ports
from tests.polling import wait_until


async def wait_for_expiry(zk: client.Client) -> None:
    """The client learns of the expiry on its next request or reconnect."""
    with pytest.raises(client.SessionExpiredError), trio.fail_after(15):
        while True:
            with contextlib.suppress(client.ConnectionLossError):  # its connection is dropped first
                await zk.exists("/")
            await trio.sleep(0.05)


def test_the_generated_config_is_what_coord_serve_reads(tmp_path: Path) -> None:
    clients = {1: ("127.0.0.1", 20001), 2: ("127.0.0.1", 20002)}
    peers = {1: ("127.0.0.1", 21001), 2: ("127.0.0.1", 21002)}
    timing = {"tick_ms": 50, "init_limit_ticks": 40, "sync_limit_ticks": 6}
    text = _toml(2, tmp_path / "d", clients, peers, timing, 100, {"snapshot_every_txns": 7})
    tomllib.loads(text)
    path = tmp_path / "server.toml"
    path.write_text(text)
    config = load_config(path)
    assert config.server_id == 2 and config.data_dir == tmp_path / "d"
    assert (config.listen_host, config.listen_port) == clients[2]
    assert config.tick_ms == 100 and config.min_session_timeout_ms == 200
    assert config.snapshot_every_txns == 7
    assert config.ensemble is not None and config.ensemble.tick_ms == 50
    assert config.ensemble.servers[1].peer == peers[1]


def test_picked_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    ports = _pick_free_ports(20)
    assert len(set(ports)) == 20
    assert all(1024 < port < 32768 for port in ports)


async def test_in_process_ensemble_faults_and_restore(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with open_ensemble(3, data_dir=tmp_path) as ensemble:
            assert not ensemble.processes
            leader = await ensemble.wait_for_leader()
            assert ensemble.leader() is ensemble.server(leader)
            assert (await ensemble.status(leader))["role"] == "leader"
            async with client.connect(ensemble.connect_string) as zk:
                await zk.create("/a", b"1")
                follower = next(i for i in ensemble.server_ids if i != leader)
                ensemble.isolate(follower)
                assert ensemble.server(follower).is_isolated
                await ensemble.kill(leader)
                assert not ensemble.is_running(leader)
                # one server left unisolated out of three: no quorum until restore
                new_leader = await ensemble.restore()
                assert all(ensemble.is_running(i) for i in ensemble.server_ids)
                assert not ensemble.server(follower).is_isolated
                zxid = await ensemble.wait_converged()
                assert [(await ensemble.status(i))["zxid"] for i in ensemble.server_ids] == [zxid] * 3
                assert ensemble.leader_id() == new_leader
                assert (await client.Retry(max_tries=50, delay=0.05)(zk.get, "/a"))[0] == b"1"
            assert ensemble.data_dir(1) == tmp_path / "server-1"


async def test_expire_session_takes_a_client_or_a_session_id() -> None:
    with trio.fail_after(60):
        async with open_ensemble(3) as ensemble:
            await ensemble.wait_for_leader()
            async with client.connect(ensemble.connect_string) as watcher:
                for target in ("client", "id"):
                    async with client.connect(ensemble.connect_string, session_timeout=10) as zk:
                        await zk.create(f"/e-{target}", b"", ephemeral=True)
                        await ensemble.expire_session(zk if target == "client" else zk.session_id)
                        await wait_for_expiry(zk)
                    await watcher.sync("/")
                    assert await watcher.exists(f"/e-{target}") is None


async def test_process_ensemble_kill_pause_expire(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with open_ensemble(3, processes=True, data_dir=tmp_path) as ensemble:
            assert ensemble.processes
            leader = await ensemble.wait_for_leader()
            process = ensemble.server(leader)
            assert isinstance(process, ServerProcess) and process.pid
            assert "--config" in process.command and process.config_path.exists()
            await wait_until(lambda: ensemble.leader_id() == leader, timeout=20)  # the background poll caught up
            await ensemble.kill(leader)  # SIGKILL
            assert ensemble.process(leader).exit_codes[-1] == -signal.SIGKILL
            assert ensemble.servers[leader] is None
            new_leader = await ensemble.wait_for_leader()
            assert new_leader != leader
            await ensemble.restart(leader)
            await ensemble.wait_for_leader()
            assert (await ensemble.status(leader))["role"] == "follower"

            # a paused follower: the others carry on without it
            paused = next(i for i in ensemble.server_ids if i != new_leader)
            ensemble.pause(paused)
            assert ensemble.process(paused).is_paused
            assert await ensemble.wait_for_leader() == new_leader
            async with client.connect(ensemble.connect_string_of(new_leader)) as other:
                await other.create("/while-paused", b"2")
            ensemble.resume(paused)
            await ensemble.wait_converged()

            async with client.connect(ensemble.connect_string, session_timeout=10) as zk:
                await zk.create("/mine", b"", ephemeral=True)
                await ensemble.expire_session(zk)  # through a second connection: processes have no hook
                await wait_for_expiry(zk)
            async with client.connect(ensemble.connect_string) as zk:
                await zk.sync("/")
                assert await zk.exists("/mine") is None
                assert (await zk.get("/while-paused"))[0] == b"2"
            log_text = ensemble.process(leader).log_tail(200)
            assert "serving on" in log_text
    assert (tmp_path / "server-1").is_dir()  # a given data_dir is kept


async def test_process_ensemble_removes_its_temporary_directory() -> None:
    with trio.fail_after(60):
        async with open_ensemble(1, processes=True) as ensemble:
            await ensemble.wait_for_leader()
            base = ensemble.base_dir
            assert base is not None and base.is_dir()
            assert (await ensemble.status(1))["role"] == "leader"  # an ensemble of one
        assert not base.exists()


@pytest.mark.parametrize("processes", [False, True])
async def test_a_base_port_whose_ports_leave_the_range_is_refused(tmp_path: Path, processes: bool) -> None:
    # 64534 + 999 + 3 = 65536: the last peer port would wrap around to port 0.
    with pytest.raises(ValueError, match=r"base_port must be in 1\.\.64533 for 3 servers"):
        async with open_ensemble(3, processes=processes, data_dir=tmp_path, base_port=64534):
            pytest.fail("started an ensemble on wrapped ports")  # pragma: no cover


async def test_process_ensemble_refuses_options_a_file_cannot_set() -> None:
    with pytest.raises(TypeError, match="frame_hooks"):
        async with open_ensemble(1, processes=True, frame_hooks=True):
            pass  # pragma: no cover


async def test_isolating_a_server_process_elects_a_leader_among_the_rest_and_heal_rejoins(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with open_ensemble(3, processes=True, data_dir=tmp_path) as ensemble:
            old = await ensemble.wait_for_leader()
            ensemble.isolate(old)
            with trio.fail_after(60):
                while True:  # polling the survivors' roles, bounded by fail_after
                    roles = {i: (await ensemble.status(i)).get("role") for i in ensemble.server_ids if i != old}
                    if sorted(roles.values()) == ["follower", "leader"]:
                        break
                    await trio.sleep(0.05)
            ensemble.heal()
            with trio.fail_after(60):
                while True:  # the healed server answers again, and rejoins as a follower
                    with contextlib.suppress(OSError, ProtocolError, trio.BrokenResourceError):
                        if (await ensemble.status(old)).get("role") == "follower":
                            break
                    await trio.sleep(0.05)
