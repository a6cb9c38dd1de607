"""The pytest plugin (coord.testing.pytest_plugin), run the way a user runs it: pytester writes a
test project, runs pytest on it, and reads the outcome.

The inner runs find the plugin through its ``pytest11`` entry point, as a project that
installed coord does.
"""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

README_EXAMPLE = '''
"""An example: test your own code against a real 3-server coord ensemble."""

import pytest
import trio

import client


async def publish_config(zk: client.Client, value: bytes) -> None:
    """The code under test: write a config node, creating it the first time."""
    try:
        await zk.create("/app/config", value, makepath=True)
    except client.NodeExistsError:
        await zk.set("/app/config", value)


@pytest.mark.coord_ensemble(size=3)
async def test_config_survives_losing_the_leader(coord_ensemble, coord_client):
    await publish_config(coord_client, b"v1")
    watch = client.Watch()
    await coord_client.get("/app/config", watch=watch)

    await coord_ensemble.kill(coord_ensemble.leader_id())  # as kill -9
    await coord_ensemble.wait_for_leader()
    # the client reconnects to a survivor on its own; retry what failed meanwhile
    await coord_client.retry(publish_config, coord_client, b"v2")

    with trio.fail_after(10):
        event = await watch.wait()
    assert event.type is client.EventType.NODE_DATA_CHANGED
    data, stat = await coord_client.get("/app/config")
    assert (data, stat.version) == (b"v2", 1)


async def test_ephemeral_node_goes_with_its_session(coord_ensemble, coord_client):
    async with client.connect(coord_ensemble.connect_string) as worker:
        await worker.create("/workers/w1", b"", ephemeral=True, makepath=True)
        await coord_ensemble.expire_session(worker)  # as if its timeout passed
    await coord_client.sync("/workers")  # reads may lag; sync() + read may not
    assert await coord_client.exists("/workers/w1") is None
'''


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # a subprocess: each inner run gets a fresh interpreter, as a user's pytest would
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", *args, timeout=300)


def test_the_plugin_is_registered_by_its_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_registered(pytestconfig):
            assert pytestconfig.pluginmanager.has_plugin("coord")
            assert pytestconfig.getini("coord_ensemble_scope") == "function"
        """
    )
    run(pytester).assert_outcomes(passed=1)


def test_the_readme_example_passes(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(test_example=README_EXAMPLE)
    result = run(pytester)
    result.assert_outcomes(passed=2)


def test_fixtures_work_without_trio_mode_on_trio_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.trio
        @pytest.mark.coord_ensemble(1)
        async def test_standalone(coord_ensemble, coord_client):
            assert coord_ensemble.server_ids == [1]
            assert await coord_client.create("/x", b"1") == "/x"
        """
    )
    run(pytester).assert_outcomes(passed=1)


def test_a_module_scoped_ensemble_is_shared_and_restored(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\ncoord_ensemble_scope = module\n")
    pytester.makepyfile(
        textwrap.dedent(
            """
            import pytest

            pytestmark = pytest.mark.coord_ensemble(size=3)
            seen = []

            async def test_first_kills_a_server(coord_ensemble, coord_client):
                seen.append(coord_ensemble.connect_string)
                await coord_client.create("/shared", b"1")
                victim = next(i for i in coord_ensemble.server_ids if i != coord_ensemble.leader_id())
                await coord_ensemble.kill(victim)

            async def test_second_sees_the_same_ensemble_whole_again(coord_ensemble, coord_client):
                assert seen == [coord_ensemble.connect_string]
                assert (await coord_client.get("/shared"))[0] == b"1"
                statuses = [await coord_ensemble.status(i) for i in coord_ensemble.server_ids]
                assert sorted(status["role"] for status in statuses) == ["follower", "follower", "leader"]

            def test_a_sync_test_shares_it_too(coord_ensemble_thread):
                assert seen == [coord_ensemble_thread.connect_string]
            """
        )
    )
    run(pytester).assert_outcomes(passed=3)


def test_a_plain_sync_test_gets_a_blocking_ensemble(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket
        import pytest
        from coord import protocol

        def status(address):
            host, port = address.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(protocol.encode_frame(protocol.StatusRequest().to_wire()))
                data = b""
                while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
                    data += sock.recv(65536)
                return protocol.decode_body(data[4:])

        @pytest.mark.coord_ensemble(size=3, processes=True)
        def test_processes(coord_ensemble_thread):
            ensemble = coord_ensemble_thread
            leader = ensemble.wait_for_leader()
            assert status(ensemble.connect_string_of(leader))["role"] == "leader"
            ensemble.kill(leader)
            assert ensemble.wait_for_leader() != leader
            ensemble.restart(leader)
            ensemble.wait_for_leader()
            assert status(ensemble.connect_string_of(leader))["role"] == "follower"
        """
    )
    run(pytester).assert_outcomes(passed=1)


def test_a_bad_scope_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ncoord_ensemble_scope = forever\n")
    pytester.makepyfile("def test_x(coord_ensemble_thread):\n    pass\n")
    result = run(pytester)
    result.stdout.fnmatch_lines(["*coord_ensemble_scope: must be one of*forever*"])
    assert result.ret != 0
