"""The ``coord`` command's errors: one line on stderr that names what is wrong, no traceback.

Every test runs the real command (``python -m coord.cli``) as a subprocess.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from .test_cli import start_serve

COORD = [sys.executable, "-m", "coord.cli"]
EXIT_USAGE = 2


async def run_cli(
    *args: str, env: dict[str, str] | None = None, preexec_fn: Callable[[], None] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(timeout):
        return await trio.run_process(
            [*COORD, *args], capture_stdout=True, capture_stderr=True, check=False, env=env, preexec_fn=preexec_fn
        )


def one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    """The stderr of a failed command, checked to be one ``coord:`` line."""
    text = result.stderr.decode()
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if " INFO " not in line]  # serve logs its progress
    assert len(lines) == 1, text
    assert lines[0].startswith("coord"), text
    return lines[0]


async def listening_port() -> tuple[trio.SocketListener, int]:
    """A listener on an ephemeral loopback port (held until closed)."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    return listener, listener.socket.getsockname()[1]


async def refused_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


# --- coord serve ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [4096, 2**60])
async def test_serve_refuses_a_log_map_size_out_of_range(tmp_path: Path, value: int) -> None:
    config = tmp_path / "coord.toml"
    config.write_text(f"[storage]\nlog_map_bytes = {value}\n")
    result = await run_cli("serve", "--config", str(config), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == EXIT_USAGE
    line = one_line_error(result)
    assert "storage.log_map_bytes" in line and str(value) in line


def _drop_root_powers() -> None:  # pragma: no cover - runs in the child between fork and exec
    """In the child: lose root's right to ignore file permissions (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH), so that a read-only directory is read-only for it too."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop = 24
    for capability in (1, 2):
        if libc.prctl(pr_capbset_drop, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _unprivileged() -> Callable[[], None] | None:
    return _drop_root_powers if os.geteuid() == 0 else None


async def _skip_unless_unwritable(directory: Path) -> None:
    probe = "import sys, pathlib; pathlib.Path(sys.argv[1], 'probe').write_text('x')"
    try:
        result = await trio.run_process(
            [sys.executable, "-c", probe, str(directory)], capture_stderr=True, check=False, preexec_fn=_unprivileged()
        )
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"cannot drop the right to write anywhere: {error}")
    if result.returncode == 0:
        pytest.skip("this process can write to a read-only directory")


def _make_read_only(path: Path) -> None:
    for directory, _, files in os.walk(path):
        for name in files:
            os.chmod(os.path.join(directory, name), 0o444)
        os.chmod(directory, 0o555)


def _make_writable(path: Path) -> None:
    for directory, _, files in os.walk(path):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)


async def _start_and_stop(data_dir: Path) -> None:
    """Run ``coord serve`` once so that ``data_dir`` holds a log and snapshots."""
    async with serving("--listen", "127.0.0.1:0", "--data-dir", str(data_dir)):
        pass


@pytest.mark.parametrize("layout", ["inside-a-read-only-directory", "used-then-made-read-only"])
async def test_serve_says_the_data_directory_is_not_writable(tmp_path: Path, layout: str) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    data_dir = parent / "data"
    if layout == "used-then-made-read-only":
        await _start_and_stop(data_dir)
    try:
        _make_read_only(parent)
        await _skip_unless_unwritable(data_dir if data_dir.exists() else parent)
        result = await run_cli(
            "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), preexec_fn=_unprivileged()
        )
    finally:
        _make_writable(parent)
    assert result.returncode == 1
    line = one_line_error(result)
    assert line.startswith(f"coord: data directory {data_dir} is not writable"), line


async def test_serve_names_the_client_address_already_in_use(tmp_path: Path) -> None:
    listener, port = await listening_port()
    async with listener:
        result = await run_cli("serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 1
    line = one_line_error(result)
    assert line.startswith(f"coord: address 127.0.0.1:{port} ") and "already in use" in line, line


def _ensemble_toml(data_dir: Path, peer_port: int, client_port: int | None = None) -> str:
    # Only server 1 is started; the others' addresses are never bound.
    client = f"127.0.0.1:{client_port}" if client_port else "127.0.0.1:1"
    return (
        f'[server]\nid = 1\ndata_dir = "{data_dir}"\n'
        "[ensemble.servers]\n"
        f'1 = {{ peer = "127.0.0.1:{peer_port}", client = "{client}" }}\n'
        '2 = { peer = "127.0.0.1:2", client = "127.0.0.1:3" }\n'
        '3 = { peer = "127.0.0.1:4", client = "127.0.0.1:5" }\n'
    )


async def test_serve_names_the_peer_address_already_in_use(tmp_path: Path) -> None:
    listener, port = await listening_port()
    config = tmp_path / "coord.toml"
    config.write_text(_ensemble_toml(tmp_path / "data", port))
    async with listener:
        result = await run_cli("serve", "--config", str(config), "--listen", "127.0.0.1:0")
    assert result.returncode == 1
    line = one_line_error(result)
    assert line.startswith(f"coord: address 127.0.0.1:{port} ") and "already in use" in line, line


@asynccontextmanager
async def serving(*args: str) -> AsyncIterator[trio.Process]:
    """``coord serve ARGS`` running until the block ends (it printed its banner)."""
    async with trio.open_nursery() as nursery:
        process = (await start_serve(nursery, *args, listen=None)).process
        try:
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                await process.wait()


async def test_a_second_server_with_the_same_id_names_the_address_in_use(tmp_path: Path) -> None:
    peer_port, client_port = await refused_port(), await refused_port()
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    first.write_text(_ensemble_toml(tmp_path / "data-1", peer_port, client_port))
    second.write_text(_ensemble_toml(tmp_path / "data-2", peer_port, client_port))
    async with serving("--config", str(first)):
        result = await run_cli("serve", "--config", str(second))
    assert result.returncode == 1
    line = one_line_error(result)
    assert f"127.0.0.1:{client_port}" in line and "already in use" in line, line
    assert "server 1" in line  # the hint: the same server may be running already


# --- client commands --------------------------------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["get", "/x"]])
async def test_a_server_that_is_not_host_port_is_a_usage_error(command: list[str]) -> None:
    result = await run_cli(*command, "--server", "garbage", "--timeout", "2")
    assert result.returncode == EXIT_USAGE
    line = one_line_error(result)
    assert "--server" in line and "'garbage'" in line and "HOST:PORT" in line


@pytest.mark.parametrize("servers", ["", " ", "127.0.0.1:1,,127.0.0.1:2", "127.0.0.1:1,"])
@pytest.mark.parametrize("command", [["status"], ["get", "/x"]])
async def test_an_empty_server_list_or_entry_is_a_usage_error(servers: str, command: list[str]) -> None:
    result = await run_cli(*command, "--server", servers, "--timeout", "2")
    assert result.returncode == EXIT_USAGE
    line = one_line_error(result)
    assert "--server" in line and ("no hosts" in line or "empty entry" in line), line


async def test_an_empty_server_list_from_the_environment_means_the_default() -> None:
    # An empty variable is an unset one; the default server is then tried (and is not
    # a usage error whether or not something listens there).
    result = await run_cli("status", "--timeout", "2", env={**os.environ, "COORD_SERVERS": ""})
    assert result.returncode != EXIT_USAGE


async def test_a_bad_server_list_from_the_environment_names_the_variable() -> None:
    result = await run_cli("get", "/x", "--timeout", "2", env={**os.environ, "COORD_SERVERS": "a:1,,b:2"})
    assert result.returncode == EXIT_USAGE
    assert "COORD_SERVERS" in one_line_error(result)


@pytest.mark.parametrize("command", [["status"], ["get", "/x"]])
@pytest.mark.parametrize("port", ["70000", "0"])
async def test_a_port_out_of_range_is_reported_as_such(command: list[str], port: str) -> None:
    result = await run_cli(*command, "--server", f"127.0.0.1:{port}", "--timeout", "2")
    assert result.returncode == EXIT_USAGE
    line = one_line_error(result)
    assert f"port {port}" in line and "out of range (1..65535)" in line and "bad host" not in line, line


@pytest.mark.parametrize("timeout", ["-1", "0", "nan", "inf", "-inf", "soon"])
@pytest.mark.parametrize("command", [["status"], ["get", "/x"], ["watch", "/x"]])
async def test_a_timeout_that_is_not_a_positive_number_is_a_usage_error(command: list[str], timeout: str) -> None:
    port = await refused_port()
    result = await run_cli(*command, "--server", f"127.0.0.1:{port}", f"--timeout={timeout}")
    assert result.returncode == EXIT_USAGE
    text = result.stderr.decode()
    assert "Traceback" not in text and "--timeout" in text and "positive" in text, text


async def test_a_client_command_fails_fast_when_the_server_refuses_connections() -> None:
    port = await refused_port()
    start = trio.current_time()
    # Before: the command waited for the whole --timeout.
    result = await run_cli("get", "/x", "--server", f"127.0.0.1:{port}", "--timeout", "60", timeout=20)
    assert trio.current_time() - start < 20
    assert result.returncode == 3
    line = one_line_error(result)
    assert line == f"coord: could not connect to 127.0.0.1:{port}: connection refused"


# --- coord lock / elect -------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        ["--timeout", "nan"],
        ["--timeout", "-1"],
        ["--grace", "nan"],
        ["--grace", "inf"],
        ["--session-timeout", "0"],
        ["--session-timeout", "nan"],
        ["--session-timeout", "-3"],
    ],
)
async def test_lock_refuses_times_that_are_not_finite_or_are_negative(options: list[str]) -> None:
    port = await refused_port()
    result = await run_cli("lock", "/l", "=".join(options), "--server", f"127.0.0.1:{port}", "--", "true")
    assert result.returncode == EXIT_USAGE
    text = result.stderr.decode()
    assert "Traceback" not in text and options[0] in text, text


@pytest.mark.parametrize("servers", ["", "127.0.0.1:1,,127.0.0.1:2", "garbage", "127.0.0.1:70000"])
async def test_lock_refuses_a_bad_server_list(servers: str) -> None:
    result = await run_cli("lock", "/l", "--server", servers, "--", "true")
    assert result.returncode == EXIT_USAGE
    line = one_line_error(result)
    assert line.startswith("coord lock: --server: "), line


# --- coord ensemble -----------------------------------------------------------------------


@pytest.mark.parametrize(("base_port", "size"), [("70000", "3"), ("64535", "3"), ("-5", "1"), ("64528", "9")])
async def test_ensemble_refuses_a_base_port_whose_ports_leave_the_range(
    tmp_path: Path, base_port: str, size: str
) -> None:
    data_dir = tmp_path / "data"
    result = await run_cli(
        "ensemble", "--size", size, "--base-port", base_port, "--data-dir", str(data_dir), timeout=20
    )
    assert result.returncode == EXIT_USAGE
    line = one_line_error(result)
    assert "--base-port" in line and base_port in line, line
    highest = 65535 - 999 - int(size)
    assert f"1..{highest}" in line, line
    assert not data_dir.exists()
