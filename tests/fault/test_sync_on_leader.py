"""FINDINGS.md F1, reproduced without any fault: sync() + read on the leader can be stale.

A client writes through a follower; once the write is acknowledged, a second client,
connected to the leader, calls ``sync`` and reads. Linearizable reads (docs/correctness.md,
rule 8) must see the write, but the leader answers its own syncs from its applied
tree, which can lag its commit point: a quorum of *followers* may acknowledge (and a
follower apply and answer) a proposal before the leader's own log write is durable.
"""

from __future__ import annotations

import pytest
import trio

import client
from coord.testing import open_ensemble

pytestmark = pytest.mark.slow

ROUNDS = 400


async def test_sync_then_read_on_the_leader_sees_every_acknowledged_write() -> None:
    with trio.fail_after(120):
        async with open_ensemble(3) as ensemble:
            leader = await ensemble.wait_for_leader()
            follower = next(server_id for server_id in ensemble.server_ids if server_id != leader)
            stale: list[tuple[int, int]] = []
            async with (
                client.connect(ensemble.connect_string_of(follower)) as writer,
                client.connect(ensemble.connect_string_of(leader)) as reader,
            ):
                await writer.create("/k", b"0")
                for n in range(1, ROUNDS):
                    written = await writer.set("/k", b"%d" % n)
                    await reader.sync("/k")
                    _data, read = await reader.get("/k")
                    if read.mzxid < written.mzxid:
                        stale.append((written.mzxid, read.mzxid))
            assert not stale, f"{len(stale)} of {ROUNDS - 1} synced reads missed an acknowledged set: " + ", ".join(
                f"wrote {w:#x} read {r:#x}" for w, r in stale[:5]
            )
