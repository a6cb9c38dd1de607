"""The ``coord`` command as a user runs it: real processes, real server, loopback."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

COORD = [sys.executable, "-m", "coord.cli"]


async def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process([*COORD, *args], capture_stdout=True, capture_stderr=True, check=False, env=env)


class Served:
    def __init__(self, process: trio.Process, address: str) -> None:
        self.process = process
        self.address = address


async def start_serve(nursery: trio.Nursery, *args: str, listen: str | None = "127.0.0.1:0") -> Served:
    """``coord serve ARGS`` (on ``listen`` unless None) in ``nursery``, once it printed its banner."""
    listen_args = ["--listen", listen] if listen is not None else []
    process: trio.Process = await nursery.start(
        lambda task_status: trio.run_process(
            [*COORD, "serve", *listen_args, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            check=False,
            task_status=task_status,
        )
    )
    assert process.stdout is not None
    banner = b""
    with trio.fail_after(20):
        while b"\n" not in banner:
            chunk = await process.stdout.receive_some(4096)
            assert chunk, "coord serve exited before listening"
            banner += chunk
    return Served(process, banner.decode().split("serving on ")[1].split()[0])


async def test_serve_and_the_zkcli_commands_round_trip(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        served = await start_serve(nursery, "--data-dir", str(tmp_path / "data"))
        server = ["--server", served.address]
        result = await run_cli("create", *server, "/app", "hello")
        assert result.returncode == 0 and result.stdout.strip() == b"/app"
        result = await run_cli("create", *server, "-s", "-p", "/app/jobs/job-", "j")
        assert result.stdout.strip() == b"/app/jobs/job-0000000000"
        assert (await run_cli("get", *server, "/app")).stdout.strip() == b"hello"
        assert (await run_cli("set", *server, "/app", "bye")).stdout.strip() == b"version = 1"
        assert (await run_cli("ls", *server, "/app")).stdout.split() == [b"jobs"]
        stat = (await run_cli("stat", *server, "/app")).stdout.decode()
        assert "version = 1" in stat and "num_children = 1" in stat
        missing = await run_cli("get", *server, "/nope")
        assert missing.returncode == 1 and b"NoNodeError" in missing.stderr
        assert (await run_cli("rm", *server, "-r", "/app")).returncode == 0
        assert (await run_cli("get", *server, "/app")).returncode == 1
        status = await run_cli("status", *server)
        assert status.returncode == 0 and b"standalone" in status.stdout and b"znodes" in status.stdout
        served.process.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            assert await served.process.wait() == 0  # a clean shutdown


async def test_servers_come_from_the_environment_too(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        served = await start_serve(nursery, "--data-dir", str(tmp_path / "data"))
        import os

        env = {**os.environ, "COORD_SERVERS": served.address}
        assert (await run_cli("create", "/env", "x", env=env)).returncode == 0
        assert (await run_cli("get", "/env", env=env)).stdout.strip() == b"x"
        served.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await served.process.wait() == 0


async def test_watch_prints_the_change(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        served = await start_serve(nursery, "--data-dir", str(tmp_path / "data"))
        server = ["--server", served.address]
        await run_cli("create", *server, "/w", "1")
        result: list[subprocess.CompletedProcess[bytes]] = []

        async def watch() -> None:
            result.append(await run_cli("watch", *server, "/w"))

        nursery.start_soon(watch)
        # Keep changing the node until the watcher (which may still be starting) saw it.
        with trio.fail_after(20):
            n = 0
            while not result:
                n += 1
                await run_cli("set", *server, "/w", str(n))
        assert result[0].returncode == 0
        assert result[0].stdout.strip() == b"NODE_DATA_CHANGED /w"
        served.process.send_signal(signal.SIGTERM)


@pytest.mark.parametrize(
    ("config_text", "message"),
    [
        ("[server]\ntick_ms = 'abc'\n", b"server.tick_ms"),
        ("[server]\ntick = 5\n", b"server.tick"),
        ("[servr]\n", b"servr"),
        ("[server\n", b"coord.toml"),
    ],
)
async def test_bad_config_is_one_clear_error_naming_the_key(tmp_path: Path, config_text: str, message: bytes) -> None:
    config = tmp_path / "coord.toml"
    config.write_text(config_text)
    result = await run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count(b"\n") == 1  # one line, no traceback


async def test_client_commands_report_an_unreachable_server(tmp_path: Path) -> None:
    # A port that was just free: nothing listens there.
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    result = await run_cli("status", "--server", f"127.0.0.1:{port}", "--timeout", "2")
    assert result.returncode == 3


async def test_coord_ensemble_runs_three_servers_and_stops_cleanly(tmp_path: Path) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    base_port = listener.getsockname()[1]  # a free port; the next ones are very likely free too
    listener.close()
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            lambda task_status: trio.run_process(
                [*COORD, "ensemble", "--data-dir", str(tmp_path / "data"), "--base-port", str(base_port)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                check=False,
                task_status=task_status,
            )
        )
        assert process.stdout is not None
        output = b""
        with trio.fail_after(30):
            while output.count(b" is leader") + output.count(b" is follower") < 3:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, output
                output += chunk
        connect_string = output.decode().split("connection string ")[1].split()[0]
        assert len(connect_string.split(",")) == 3
        assert (await run_cli("create", "--server", connect_string, "/e", "v")).returncode == 0
        last = connect_string.split(",")[-1]
        with trio.fail_after(20):  # the last server may apply the write a moment later
            while (await run_cli("get", "--server", last, "/e")).stdout.strip() != b"v":
                pass
        process.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            assert await process.wait() == 0
