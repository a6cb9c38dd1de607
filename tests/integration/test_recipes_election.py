"""Leader election against real servers: order, hand-over, loss, resignation, failover."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from coord.testing import open_ensemble
from recipes import LeaderElection, LeadershipLostError, LockLostError, ResignedError
from recipes._guard import lease_of
from tests.integration.test_recipes_helpers import avoid_first, connect, start_holder
from tests.polling import wait_until

PATH = "/elections/service"


async def test_candidates_lead_in_turn_and_observers_see_every_change(tmp_path: Path) -> None:
    seen: list[str | None] = []
    terms: list[tuple[str, int]] = []
    step_down = {name: trio.Event() for name in ("a", "b", "c")}

    async def candidate(servers: str, name: str, *, task_status: trio.TaskStatus[None]) -> None:
        async with connect(servers) as zk:
            election = LeaderElection(zk, PATH, name)
            task_status.started()
            async with election.campaign():
                assert election.is_leader and election.token is not None
                assert await election.leader() == name
                terms.append((name, election.token))
                await step_down[name].wait()
            assert not election.is_leader

    async def observe(servers: str, *, task_status: trio.TaskStatus[None]) -> None:
        async with connect(servers) as zk:
            observer = LeaderElection(zk, PATH)
            stream = observer.observe()
            seen.append(await stream.__anext__())
            task_status.started()
            async for leader in stream:
                seen.append(leader)
                if leader is None:
                    return

    with trio.fail_after(30):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            servers = ensemble.connect_string
            async with connect(ensemble) as zk, trio.open_nursery() as nursery:
                await nursery.start(observe, servers)
                election = LeaderElection(zk, PATH)
                for name in ("a", "b", "c"):
                    await nursery.start(candidate, servers, name)
                    await wait_until(lambda name=name: _has(election, name))
                assert await election.contenders() == ["a", "b", "c"]
                for index, name in enumerate(("a", "b", "c")):
                    await wait_until(lambda index=index: len(terms) == index + 1)
                    assert terms[-1][0] == name
                    step_down[name].set()
                await wait_until(lambda: seen[-1:] == [None])
                assert await election.leader() is None
    assert seen == [None, "a", "b", "c", None]
    tokens = [token for _, token in terms]
    assert tokens == sorted(tokens)


async def _has(election: LeaderElection, name: str) -> bool:
    return name in await election.contenders()


async def test_a_leader_whose_session_expires_is_stopped_and_the_next_is_elected(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with connect(ensemble) as zk_a, connect(ensemble) as zk_b, trio.open_nursery() as nursery:
                first = LeaderElection(zk_a, PATH, "a")
                second = LeaderElection(zk_b, PATH, "b")
                elected = trio.Event()

                async def campaign_second() -> None:
                    async with second.campaign():
                        elected.set()
                        await trio.sleep_forever()

                with pytest.raises(LeadershipLostError, match="session"):
                    async with first.campaign():
                        nursery.start_soon(campaign_second)
                        await wait_until(lambda: _has(first, "b"))
                        await ensemble.expire_session(zk_a.session_id)
                        await trio.sleep_forever()
                await elected.wait()
                assert await second.leader() == "b"
                nursery.cancel_scope.cancel()
    assert issubclass(LeadershipLostError, LockLostError)


async def test_leadership_passes_on_when_the_leader_process_dies(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with trio.open_nursery() as nursery, connect(ensemble) as zk:
                process = await start_holder(nursery, ensemble.connect_string, "election", PATH, session_timeout=1.0)
                election = LeaderElection(zk, PATH, "heir")
                assert await election.leader() == "subprocess"
                process.send_signal(signal.SIGKILL)
                killed_at = trio.current_time()
                async with election.campaign():
                    assert trio.current_time() - killed_at < 5
                    assert await election.contenders() == ["heir"]


async def test_resign_steps_down_or_withdraws_and_run_returns_what_the_term_returned(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_ensemble(1, data_dir=tmp_path) as ensemble:
            await ensemble.wait_for_leader()
            async with connect(ensemble) as zk_a, connect(ensemble) as zk_b:
                leader = LeaderElection(zk_a, PATH, "a")
                waiting = LeaderElection(zk_b, PATH, "b")
                async with leader.campaign(), trio.open_nursery() as nursery:

                    async def campaign_and_expect_withdrawal() -> None:
                        with pytest.raises(ResignedError):
                            async with waiting.campaign():
                                pass  # pragma: no cover

                    nursery.start_soon(campaign_and_expect_withdrawal)
                    await wait_until(lambda: _has(leader, "b"))
                    waiting.resign()
                await wait_until(lambda: _contenders_are(leader, []))

                async def term() -> str:
                    return "done"

                assert await leader.run(term) == "done"

                async def resigning_term() -> str:
                    leader.resign()
                    await trio.sleep_forever()
                    return "never"  # pragma: no cover

                assert await leader.run(resigning_term) is None
                assert await leader.contenders() == []


async def _contenders_are(election: LeaderElection, expected: list[str]) -> bool:
    return await election.contenders() == expected


async def test_the_leader_keeps_leading_when_its_server_dies(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_ensemble(3, data_dir=tmp_path) as ensemble:
            # The holder starts on a follower: killing the leader too would also test
            # leader election, whose liveness is not what this test is about.
            leader = ensemble.server(await ensemble.wait_for_leader()).connect_string
            async with (
                connect(ensemble, session_timeout=8.0, open_stream=avoid_first(leader)) as zk_a,
                connect(ensemble, session_timeout=8.0) as zk_b,
                trio.open_nursery() as nursery,
            ):
                leader = LeaderElection(zk_a, PATH, "a")
                heir = LeaderElection(zk_b, PATH, "b")
                heir_elected = trio.Event()

                async def campaign_heir() -> None:
                    async with heir.campaign():
                        heir_elected.set()

                async with leader.campaign():
                    nursery.start_soon(campaign_heir)
                    await wait_until(lambda: _has(leader, "b"))
                    address = zk_a.server_address
                    assert address is not None
                    await ensemble.kill(ensemble.server_id_at(address))
                    await ensemble.wait_for_leader()
                    await wait_until(lambda: zk_a.connected and zk_a.server_address != address)
                    heartbeats = lease_of(zk_a).heartbeats
                    await wait_until(lambda: lease_of(zk_a).heartbeats > heartbeats, timeout=10)
                    assert leader.is_leader and not heir_elected.is_set()
                await heir_elected.wait()
