"""A follower with a wiped disk catches up by a streamed SNAP, with real server processes.

The ensemble runs with a deliberately small ``ensemble.snap_chunk_bytes`` (4 KiB), so a
tree of about 1 MB spans hundreds of chunks; before SNAPs streamed, the whole image was
one peer message, and one above the peer frame limit took every leader down in turn.
The leaders snapshot often (``snapshot_every_txns``), so their logs are purged and a
follower that lost everything can only be brought back by a SNAP. The ensemble keeps
serving writes while the SNAP runs, and those writes reach the follower after it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import trio

import client
from coord.testing import Ensemble, open_ensemble
from coord.testing.processes import ServerProcess
from tests.polling import wait_until

CHUNK = 4096
NODES = 1_500
VALUE = bytes(range(256)) * 2 + b"v" * 200  # 712 bytes


async def test_a_wiped_follower_catches_up_by_a_streamed_snap_and_nobody_exits(tmp_path: Path) -> None:
    with trio.fail_after(240):
        async with open_ensemble(
            3, processes=True, data_dir=tmp_path, snap_chunk_bytes=CHUNK, snapshot_every_txns=5
        ) as ensemble:
            leader = await ensemble.wait_for_leader()
            follower = next(server for server in ensemble.server_ids if server != leader)
            async with client.connect(ensemble.connect_string_of(leader)) as zk:
                await zk.create("/big", b"")
                for start in range(0, NODES, 100):
                    async with zk.transaction() as txn:
                        for n in range(start, start + 100):
                            txn.create(f"/big/n{n:05d}", VALUE)

                await ensemble.stop(follower)
                shutil.rmtree(ensemble.data_dir(follower))  # a replaced disk
                await ensemble.restart(follower)
                # Writes go on while the follower is brought back.
                for n in range(50):
                    await zk.set(f"/big/n{n:05d}", b"during %d" % n)

                leader_zxid = (await ensemble.status(leader))["zxid"]
                await wait_until(
                    lambda: _zxid_at_least(ensemble, follower, leader_zxid),
                    timeout=120,
                    interval=0.2,
                    message="the wiped follower catches up",
                )

            async with client.connect(ensemble.connect_string_of(follower)) as reader:
                await reader.sync("/")
                children = await reader.get_children("/big")
                assert len(children) == NODES
                assert (await reader.get("/big/n00007"))[0] == b"during 7"
                assert (await reader.get(f"/big/n{NODES - 1:05d}"))[0] == VALUE

            for server_id in ensemble.server_ids:  # nobody exited on the way but the one we stopped
                process = ensemble.process(server_id)
                assert isinstance(process, ServerProcess)
                assert len(process.exit_codes) == (1 if server_id == follower else 0), (server_id, process.exit_codes)
            leader_log = ensemble.process(ensemble.leader_id() or leader).log_path.read_text(errors="replace")
            sent = [int(size) for size in re.findall(r"SNAP to \d+ sent \((\d+) bytes\)", leader_log)]
            assert sent and max(sent) > 100 * CHUNK, sent  # hundreds of chunks, none over the chunk size


async def _zxid_at_least(ensemble: Ensemble, server_id: int, zxid: int) -> bool:
    status = await ensemble.status(server_id)
    return status.get("role") == "follower" and status.get("zxid", 0) >= zxid
