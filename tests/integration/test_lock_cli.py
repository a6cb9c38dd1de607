"""``coord lock`` and ``coord elect`` as a user runs them: real processes against an
embedded server (or ensemble), commands that record what they did in files."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

import client
from coord.cli.lock import EXIT_LOST, EXIT_NOT_ACQUIRED, EXIT_NOT_FOUND, EXIT_USAGE
from coord.testing import Ensemble, open_ensemble
from recipes import Lock
from tests.integration.test_recipes_helpers import connect
from tests.polling import wait_until

COORD = [sys.executable, "-m", "coord.cli"]
PATH = "/locks/cli"

# The command under the lock: appends "START <t> <token>" and, at its end, "END <t>"
# (time.monotonic() is one clock for every process of the machine).
WORKER = textwrap.dedent(
    """
    import os, signal, sys, time
    log = open(sys.argv[1], "a", buffering=1)
    token = os.environ.get("COORD_LOCK_TOKEN") or os.environ.get("COORD_LEADER_TOKEN")
    def stop(signum, frame):
        log.write(f"TERM {os.getpid()}\\n")
        sys.exit(0)
    if sys.argv[3] == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, stop)
    log.write(f"START {time.monotonic()} {token} {os.getpid()}\\n")
    time.sleep(float(sys.argv[2]))  # the protected work itself (not synchronisation)
    log.write(f"END {time.monotonic()}\\n")
    """
)


def worker(log: Path, seconds: float, mode: str = "normal") -> list[str]:
    return [sys.executable, "-c", WORKER, str(log), str(seconds), mode]


def records(log: Path, kind: str) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split()[1:] for line in log.read_text().splitlines() if line.startswith(kind)]


@asynccontextmanager
async def coord(*args: str, servers: str, new_session: bool = False) -> AsyncIterator[trio.Process]:
    """``coord ARGS`` running in the background; killed if still running at the end."""
    env = {**os.environ, "COORD_SERVERS": servers}
    process = await trio.lowlevel.open_process(
        [*COORD, *args], env=env, stderr=subprocess.PIPE, start_new_session=new_session
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(10, shield=True):
            await process.wait()
        assert process.stderr is not None
        await process.stderr.aclose()


async def run_coord(*args: str, servers: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(timeout):
        return await trio.run_process(
            [*COORD, *args], env={**os.environ, "COORD_SERVERS": servers}, capture_stderr=True, check=False
        )


async def lock_owner(zk: client.Client, path: str = PATH) -> int | None:
    """The session id of the lock's first contender, if any."""
    try:
        names = sorted(await zk.get_children(path), key=lambda name: name[-10:])
    except client.NoNodeError:
        return None
    for name in names:
        stat = await zk.exists(f"{path}/{name}")
        if stat is not None:
            return stat.ephemeral_owner
    return None


async def _started(log: Path, count: int = 1) -> bool:
    await trio.lowlevel.checkpoint()
    return len(records(log, "START")) >= count


async def test_two_lock_commands_run_their_commands_one_after_the_other(tmp_path: Path) -> None:
    log = tmp_path / "stamps"
    with trio.fail_after(60):
        async with open_ensemble(1, data_dir=tmp_path / "data") as ensemble:
            await ensemble.wait_for_leader()
            servers = ensemble.connect_string
            async with trio.open_nursery() as nursery:
                results: list[int] = []

                async def one(index: int) -> None:
                    result = await run_coord("lock", PATH, "--", *worker(log, 0.3), servers=servers)
                    assert result.returncode == 0, result.stderr
                    results.append(index)

                for index in range(3):
                    nursery.start_soon(one, index)
            assert len(results) == 3
    starts = records(log, "START")
    ends = records(log, "END")
    assert len(starts) == len(ends) == 3
    intervals = sorted((float(start[0]), float(end[0]), int(start[1])) for start, end in zip(starts, ends, strict=True))
    for (_, end, token), (start, _, next_token) in itertools.pairwise(intervals):
        assert end < start, f"the commands overlapped: {intervals}"
        assert token < next_token  # the fencing token grows from holder to holder


async def test_nonblocking_and_timeout_give_up_with_their_status(tmp_path: Path) -> None:
    log = tmp_path / "stamps"
    with trio.fail_after(40):
        async with open_ensemble(1, data_dir=tmp_path / "data") as ensemble:
            await ensemble.wait_for_leader()
            servers = ensemble.connect_string
            async with connect(ensemble) as zk:
                async with Lock(zk, PATH, "test"):
                    result = await run_coord("lock", PATH, "--nonblocking", "--", *worker(log, 0), servers=servers)
                    assert result.returncode == EXIT_NOT_ACQUIRED, result.stderr
                    started = trio.current_time()
                    result = await run_coord("lock", "--timeout", "0.5", PATH, "--", *worker(log, 0), servers=servers)
                    assert result.returncode == EXIT_NOT_ACQUIRED
                    assert trio.current_time() - started >= 0.5
                    assert b"not acquired" in result.stderr
                    assert len(await zk.get_children(PATH)) == 1
                    # A signal while waiting gives up: 128 + the signal, and no node is left behind.
                    async with coord("lock", PATH, "--", *worker(log, 0), servers=servers) as waiting:
                        await wait_until(lambda: _count_children(zk, PATH, 2), timeout=20)
                        waiting.send_signal(signal.SIGINT)
                        assert await waiting.wait() == 128 + signal.SIGINT
                    assert len(await zk.get_children(PATH)) == 1
                assert not log.exists()  # the command never ran
                result = await run_coord("lock", PATH, "--nonblocking", "--", "sh", "-c", "exit 7", servers=servers)
                assert result.returncode == 7  # the command's own status
                result = await run_coord("lock", PATH, "--", "/no/such/command", servers=servers)
                assert result.returncode == EXIT_NOT_FOUND
                result = await run_coord("lock", PATH, servers=servers)
                assert result.returncode == EXIT_USAGE
                assert await zk.get_children(PATH) == []


async def _run_and_lose_the_lock(tmp_path: Path, ensemble: Ensemble, mode: str, grace: float) -> tuple[int, float]:
    log = tmp_path / f"stamps-{mode}"
    async with (
        connect(ensemble) as zk,
        coord(
            "lock", PATH, "--grace", str(grace), "--", *worker(log, 60, mode), servers=ensemble.connect_string
        ) as process,
    ):
        await wait_until(lambda: _started(log), timeout=20)
        owner = await lock_owner(zk)
        assert owner is not None
        expired_at = trio.current_time()
        await ensemble.expire_session(owner)
        status = await process.wait()
        assert process.stderr is not None
        stderr = await process.stderr.receive_some(65536)
        assert b"lost" in stderr, stderr
        took = trio.current_time() - expired_at
        assert not records(log, "END")  # stopped, not finished
        if mode == "normal":
            assert records(log, "TERM")
        return status, took


async def test_a_lost_lock_stops_the_command_and_exits_with_the_lost_status(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_ensemble(1, data_dir=tmp_path / "data") as ensemble:
            await ensemble.wait_for_leader()
            status, took = await _run_and_lose_the_lock(tmp_path, ensemble, "normal", grace=5)
            assert status == EXIT_LOST
            assert took < 5  # SIGTERM was enough
            status, took = await _run_and_lose_the_lock(tmp_path, ensemble, "ignore-term", grace=0.5)
            assert status == EXIT_LOST
            assert took >= 0.5  # SIGKILL, after the grace period


async def test_a_killed_lock_command_takes_its_command_along_and_frees_the_lock(tmp_path: Path) -> None:
    log = tmp_path / "stamps"
    with trio.fail_after(40):
        async with open_ensemble(1, data_dir=tmp_path / "data") as ensemble:
            await ensemble.wait_for_leader()
            async with (
                connect(ensemble) as zk,
                coord(
                    "lock", PATH, "--session-timeout", "1", "--", *worker(log, 60), servers=ensemble.connect_string
                ) as process,
            ):
                await wait_until(lambda: _started(log), timeout=20)
                process.send_signal(signal.SIGKILL)  # only coord: the command is told by PR_SET_PDEATHSIG
                await process.wait()
                await wait_until(lambda: bool(records(log, "TERM")), timeout=10)
                lock = Lock(zk, PATH, "next")
                assert await lock.acquire(timeout=10)  # once the dead holder's session expired
                await lock.release()


async def test_elect_runs_the_command_only_on_the_leader(tmp_path: Path) -> None:
    logs = [tmp_path / "first", tmp_path / "second"]
    with trio.fail_after(60):
        async with open_ensemble(1, data_dir=tmp_path / "data") as ensemble:
            await ensemble.wait_for_leader()
            servers = ensemble.connect_string
            async with (
                connect(ensemble) as zk,
                coord("elect", "service", "--", *worker(logs[0], 60), servers=servers) as first,
            ):
                await wait_until(lambda: _started(logs[0]), timeout=20)
                async with coord("elect", "service", "--", *worker(logs[1], 60), servers=servers) as second:
                    await wait_until(lambda: _count_children(zk, "/elections/service", 2), timeout=20)
                    assert not logs[1].exists()  # not the leader: its command does not run
                    first.send_signal(signal.SIGTERM)  # passed on to the command, which exits 0
                    assert await first.wait() == 0
                    await wait_until(lambda: _started(logs[1]), timeout=20)
                    leader_tokens = [int(records(log, "START")[0][1]) for log in logs]
                    assert leader_tokens[0] < leader_tokens[1]
                    owner = await lock_owner(zk, "/elections/service")
                    assert owner is not None
                    await ensemble.expire_session(owner)
                    assert await second.wait() == EXIT_LOST
                    assert records(logs[1], "TERM")


async def _count_children(zk: client.Client, path: str, expected: int) -> bool:
    try:
        return len(await zk.get_children(path)) == expected
    except client.NoNodeError:
        return False
