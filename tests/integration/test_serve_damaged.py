"""``coord serve`` on a damaged data directory: one line saying what and what to do, status 1.

A real process on a data directory a real server wrote, then damaged with the same
cut as ``truncate -s 50% coord-data/log/data.mdb``. Before the fix the process died
of SIGBUS without a word.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

import client
from coord.config import ServerConfig
from coord.server import open_server

COORD = [sys.executable, "-m", "coord.cli"]


async def write_some(data_dir: Path) -> None:
    config = ServerConfig(data_dir=data_dir, listen_port=0, log_map_bytes=64 << 20)
    async with open_server(config) as server, client.connect(server.connect_string) as zk:
        for n in range(40):
            await zk.create(f"/n{n}", b"v" * 2000)


async def test_serve_on_a_truncated_log_says_so_in_one_line_and_exits_1(tmp_path: Path) -> None:
    data_dir = tmp_path / "coord-data"
    with trio.fail_after(30):
        await write_some(data_dir)
    log_file = data_dir / "log" / "data.mdb"
    os.truncate(log_file, log_file.stat().st_size // 2)
    with trio.fail_after(60):
        done = await trio.run_process(
            [*COORD, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    stderr = done.stderr.decode()
    assert done.returncode == 1, (done.returncode, stderr[-3000:])
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    (line,) = lines
    assert line.startswith("coord: ") and str(log_file) in line and "is truncated" in line, line
    assert "restore" in line and "delete it" in line, line
    assert b"serving on" not in done.stdout
