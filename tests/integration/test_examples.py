"""Every program in examples/ runs as a subprocess against an embedded ensemble and
does what its docstring says, within a bounded time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from coord.testing import open_ensemble
from tests.integration.test_recipes_helpers import connect

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Output:
    """The lines a running example printed so far."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._buffer = b""

    async def wait_for(self, prefix: str, timeout: float = 20) -> str:
        """The first line starting with ``prefix`` (waiting for it if need be)."""
        assert self.process.stdout is not None
        with trio.fail_after(timeout):
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                chunk = await self.process.stdout.receive_some(65536)
                assert chunk, f"the example exited without printing {prefix!r}: {self.lines}"
                self._buffer += chunk
                *complete, self._buffer = self._buffer.split(b"\n")
                self.lines += [line.decode() for line in complete]

    async def finish(self, timeout: float = 20) -> int:
        """Read to the end; return the exit status."""
        assert self.process.stdout is not None
        with trio.fail_after(timeout):
            while chunk := await self.process.stdout.receive_some(65536):
                self._buffer += chunk
            self.lines += [line.decode() for line in self._buffer.split(b"\n") if line]
            self._buffer = b""
            return await self.process.wait()


@asynccontextmanager
async def example(name: str, *args: str, servers: str) -> AsyncIterator[Output]:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(EXAMPLES / name), *args],
        stdout=subprocess.PIPE,
        env={**os.environ, "COORD_SERVERS": servers, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield Output(process)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(10, shield=True):
            await process.wait()
        assert process.stdout is not None
        await process.stdout.aclose()


async def test_fenced_lock_example_counts_every_round_once(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with example(
                "fenced_lock.py", "--workers", "3", "--rounds", "4", servers=ensemble.connect_string
            ) as output:
                assert await output.finish(timeout=40) == 0
            assert "final balance 12 (expected 12)" in output.lines
            tokens = [int(line.split("token ")[1].split()[0]) for line in output.lines if " wrote " in line]
            assert len(tokens) == 12 and tokens == sorted(tokens)


async def test_leader_worker_example_fails_over_to_the_next_copy(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with open_ensemble(3, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            servers = ensemble.connect_string
            common = ("--session-timeout", "2")
            async with example("leader_worker.py", "--id", "a", *common, servers=servers) as first:
                await first.wait_for("elected: a")
                await first.wait_for("a: job 2")
                async with example("leader_worker.py", "--id", "b", "--jobs", "3", *common, servers=servers) as second:
                    await second.wait_for("campaigning: b (leader now: a)")
                    first.process.send_signal(signal.SIGKILL)
                    await first.process.wait()
                    await second.wait_for("elected: b", timeout=30)
                    assert await second.finish() == 0
                    assert "resigned: b" in second.lines
            jobs_a = [int(line.split("job ")[1].split()[0]) for line in first.lines if line.startswith("a: job")]
            jobs_b = [int(line.split("job ")[1].split()[0]) for line in second.lines if line.startswith("b: job")]
            assert len(jobs_b) == 3 and min(jobs_b) > max(jobs_a)  # the work continued where it stopped


async def test_barrier_start_example_starts_everyone_together(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            outputs: list[Output] = []
            async with trio.open_nursery() as nursery:

                async def participant(index: int) -> None:
                    async with example(
                        "barrier_start.py", "--participants", "3", "--id", f"p{index}", servers=ensemble.connect_string
                    ) as output:
                        outputs.append(output)
                        assert await output.finish(timeout=40) == 0

                for index in range(3):
                    nursery.start_soon(participant, index)

            def stamps(kind: str) -> list[float]:
                return [float(line.split()[-1]) for output in outputs for line in output.lines if line.startswith(kind)]

            assert len(stamps("started")) == 3
            assert min(stamps("started")) > max(stamps("entering"))
            assert min(stamps("finished")) > max(stamps("started"))


async def test_config_watch_example_applies_every_version(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with (
                connect(ensemble) as zk,
                example("config_watch.py", "--until", "stop", servers=ensemble.connect_string) as output,
            ):
                await output.wait_for("config: <absent>")
                await zk.create("/examples/config", b'{"workers": 4}', makepath=True)
                await output.wait_for('config: {"workers": 4} (version 0)')
                await zk.set("/examples/config", b"stop")
                assert await output.finish() == 0
                assert output.lines[-1] == "config: stop (version 1)"
