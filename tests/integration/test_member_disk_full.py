"""A follower whose disk fills up: nothing is corrupted, the ensemble keeps serving, the follower rejoins.

test_storage_full.py runs a standalone server out of space; here one member of an
in-process ensemble of three runs out, the way a real ensemble meets a full disk (one
machine at a time). Its data directory lives on a 4 MiB tmpfs (mounting needs root; CI
runs as root, elsewhere the test skips), filled up by another file. What must hold
(docs/storage.md, docs/correctness.md rule 4):

- writes through the leader keep succeeding: the leader and the other follower are a
  quorum;
- the full member logs its storage failure and keeps running (it rebuilds its state
  from its durable state and tries to rejoin, again and again, while there is no space);
- every acknowledged write reads back through the leader;
- once the file is deleted, the member rejoins as a follower without a restart, catches
  up to the leader's zxid, and serves the writes made while it was full;
- its data directory then recovers (``coord.recovery.recover``, which verifies every
  log entry) holding every acknowledged write, and the whole ensemble restarts from
  its data directories with nothing lost.

The ensemble's members keep their data in ``data_dir / f"server-{id}"``; the follower's
is moved onto the tmpfs while it is stopped and replaced by a symlink to it, so the
ensemble runs unchanged.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import trio

import client
from coord.recovery import recover
from coord.testing import Ensemble, open_ensemble
from coord.testing.faults import FaultableServer
from tests.polling import wait_until

VALUE = b"f" * 10_000
"""The data of every write: a few dozen fill the 256 KiB left on the disk."""
WRITES_WHILE_FULL = 30
"""Writes made after the full member first reported its storage error."""


def running(ensemble: Ensemble, server_id: int) -> FaultableServer:
    server = ensemble.server(server_id)
    assert isinstance(server, FaultableServer)
    return server


def digests(ensemble: Ensemble) -> set[str]:
    """The digests of the running servers' trees (one when they hold the same tree)."""
    return {running(ensemble, server_id).tree.digest() for server_id in ensemble.server_ids}


async def move_data_dir(ensemble: Ensemble, server_id: int, target: Path) -> None:
    """Stop ``server_id``, move its data directory to ``target`` (a symlink stays in its
    place) and start it again on it; returns once every server serves again."""
    await ensemble.stop(server_id)
    data_dir = ensemble.data_dir(server_id)
    shutil.copytree(data_dir, target, symlinks=True)
    shutil.rmtree(data_dir)
    data_dir.symlink_to(target, target_is_directory=True)
    await ensemble.restart(server_id)
    await ensemble.wait_for_leader()


def fill(disk: Path, filler: Path, leave_bytes: int = 256 << 10) -> None:
    """Write ``filler`` until only about ``leave_bytes`` are free on ``disk``."""
    stat = os.statvfs(disk)
    with open(filler, "wb") as file:
        file.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave_bytes))


def storage_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "coord.server.shell" and record.levelno >= logging.ERROR and "storage" in record.getMessage()
    ]


async def reads_back(zk: client.Client, acknowledged: dict[str, bytes]) -> None:
    for path, value in acknowledged.items():
        assert (await zk.get(path))[0] == value, path


async def test_a_follower_out_of_disk_space_keeps_the_ensemble_serving_and_rejoins_when_space_returns(
    tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coord")
    base = tmp_path / "ensemble"
    filler = small_disk / "filler"
    acknowledged: dict[str, bytes] = {}
    with trio.fail_after(180):
        async with open_ensemble(3, data_dir=base) as ensemble:
            leader = await ensemble.wait_for_leader()
            full = next(server_id for server_id in ensemble.server_ids if server_id != leader)
            await move_data_dir(ensemble, full, small_disk / f"server-{full}")
            assert ensemble.leader_id() == leader
            assert ensemble.data_dir(full).resolve() == small_disk / f"server-{full}"
            log_map_bytes = running(ensemble, full).config.log_map_bytes

            async with client.connect(ensemble.connect_string_of(leader), session_timeout=30.0) as zk:
                await zk.create("/w", b"before the disk filled")
                acknowledged["/w"] = b"before the disk filled"
                await ensemble.wait_converged()

                # 2. The follower's disk fills up; every write through the leader succeeds.
                member = running(ensemble, full)
                fill(small_disk, filler)
                n = 0

                async def write() -> None:
                    nonlocal n
                    path = f"/w/n{n:04d}"
                    await zk.create(path, VALUE)  # must not fail: the quorum is the leader + the other follower
                    acknowledged[path] = VALUE
                    n += 1

                async def member_reports_storage_error() -> bool:
                    await write()
                    return "last_storage_error" in member.status()

                await wait_until(
                    member_reports_storage_error,
                    timeout=60,
                    message=f"server {full} reports a storage error once its disk is full",
                )
                for _ in range(WRITES_WHILE_FULL):
                    await write()
                status = member.status()
                assert "full" in status["last_storage_error"], status["last_storage_error"]
                assert storage_failures(caplog), "the full member logged no storage failure"
                # It did not exit: the same server object still runs, and the leader never changed.
                assert ensemble.servers[full] is member and ensemble.is_running(full)
                assert ensemble.leader_id() == leader
                leader_zxid = int((await ensemble.status(leader))["zxid"])
                assert member.tree.last_zxid < leader_zxid, "the full member applied writes it could not log"

                # 3. Every acknowledged write reads back through the leader.
                await reads_back(zk, acknowledged)

                # 4. Space returns: the member rejoins as a follower and catches up.
                filler.unlink()
                await wait_until(
                    lambda: member.role == "follower" and member.is_serving,
                    timeout=60,
                    message=f"server {full} serves as a follower again",
                )
                assert ensemble.servers[full] is member, "the member was restarted"
                assert ensemble.leader_id() == leader
                zxid = await ensemble.wait_converged(timeout=60)
                assert zxid >= leader_zxid
                assert len(digests(ensemble)) == 1, "the servers hold different trees"

            async with client.connect(ensemble.connect_string_of(full), session_timeout=30.0) as zk:
                await zk.sync("/")
                await reads_back(zk, acknowledged)
                await zk.create("/after", b"through the member that was full")
                acknowledged["/after"] = b"through the member that was full"
            final_zxid = await ensemble.wait_converged(timeout=60)

        # 5. Its durable state is valid and holds every acknowledged write ...
        recovered = await trio.to_thread.run_sync(
            lambda: recover(base / f"server-{full}", log_map_bytes=log_map_bytes, replay=True)
        )
        try:
            assert recovered.log.last_zxid >= final_zxid
            for path, value in acknowledged.items():
                node = recovered.tree.get_node(path)
                assert node is not None and node.data == value, path
        finally:
            recovered.log.close()

        # ... and the whole ensemble restarts from its data directories with nothing lost.
        async with open_ensemble(3, data_dir=base) as ensemble:
            await ensemble.wait_for_leader()
            async with client.connect(ensemble.connect_string_of(full), session_timeout=30.0) as zk:
                await zk.sync("/")
                await reads_back(zk, acknowledged)
            await ensemble.wait_converged(timeout=60)
            assert len(digests(ensemble)) == 1, "the servers hold different trees"
