"""Hostile and broken input against a live server: it stays up and loses nothing.

Real sockets on loopback, real LMDB in a temp dir; the bytes come from hypothesis.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cbor2
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coord import errors, protocol
from coord.config import ServerConfig
from coord.protocol import CreateRequest, GetDataRequest
from coord.server import open_server
from coord.zxid import epoch_of
from tests.integration.rawwire import RawConnection


def server_config(data_dir: Path, **overrides: object) -> ServerConfig:
    fields: dict[str, object] = {
        "data_dir": data_dir,
        "listen_port": 0,
        "tick_ms": 50,
        "min_session_timeout_ms": 100,
        "max_session_timeout_ms": 10_000,
    }
    fields.update(overrides)
    return ServerConfig(**fields)  # type: ignore[arg-type]


cbor_items = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=12,
)
requests_with_known_ops = st.builds(
    lambda xid, op, fields: [xid, op, *fields],
    st.integers(min_value=0, max_value=1000),
    st.sampled_from([int(op) for op in protocol.Op] + [0, 7, 999]),
    st.lists(cbor_items, max_size=6),
)
garbage = st.one_of(
    st.binary(max_size=64),  # raw bytes, framed or not
    st.builds(lambda item: protocol.encode_frame(item), cbor_items),  # well-framed nonsense
    st.builds(lambda item: protocol.encode_frame(item), requests_with_known_ops),
    st.builds(
        lambda n: protocol.HEADER.pack(n), st.integers(min_value=protocol.frame_bytes_max() + 1, max_value=2**32 - 1)
    ),
    st.builds(lambda body: protocol.HEADER.pack(len(body)) + body, st.binary(max_size=32)),
)


async def exchange_garbage(address: tuple[str, int], handshake_first: bool, payloads: list[bytes]) -> None:
    """Send the payloads on one connection; read whatever comes back until it closes or goes quiet."""
    connection = await RawConnection.open(address)
    try:
        if handshake_first:
            await connection.handshake(timeout_ms=5_000)
        for payload in payloads:
            await connection.send_bytes(payload)
        with trio.move_on_after(0.2):
            while await connection.receive() is not None:
                pass
    except (trio.BrokenResourceError, protocol.ProtocolError):
        pass
    finally:
        await connection.aclose()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sessions=st.lists(st.tuples(st.booleans(), st.lists(garbage, min_size=1, max_size=4)), min_size=1, max_size=3))
async def test_garbage_from_clients_never_hurts_the_server_or_its_data(
    sessions: list[tuple[bool, list[bytes]]],
) -> None:
    with tempfile.TemporaryDirectory() as data_dir, trio.fail_after(30):
        async with open_server(server_config(Path(data_dir))) as server:
            good = await RawConnection.open(server.address)
            await good.handshake(timeout_ms=5_000)
            created = await good.call(1, CreateRequest(path="/keep", data=b"precious"))
            assert created[2] == 0
            for handshake_first, payloads in sessions:
                await exchange_garbage(server.address, handshake_first, payloads)
            # The well-behaved session is untouched and the server still serves it.
            reply = await good.call(2, GetDataRequest(path="/keep"))
            assert reply[2] == 0 and reply[3][0] == b"precious"
            reply = await good.call(3, CreateRequest(path="/after"))
            assert reply[2] == 0
            await good.aclose()


async def test_oversized_frame_closes_only_that_connection(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_server(server_config(tmp_path)) as server:
            bystander = await RawConnection.open(server.address)
            await bystander.handshake()
            offender = await RawConnection.open(server.address)
            await offender.handshake()
            await offender.send_bytes(protocol.HEADER.pack(protocol.frame_bytes_max() + 1) + b"x" * 100)
            assert await offender.receive() is None  # closed
            assert (await bystander.call(1, CreateRequest(path="/still-here")))[2] == 0


async def test_well_formed_request_with_bad_fields_gets_a_typed_error_and_the_connection_lives(
    tmp_path: Path,
) -> None:
    with trio.fail_after(10):
        async with open_server(server_config(tmp_path)) as server:
            connection = await RawConnection.open(server.address)
            await connection.handshake()
            await connection.send([7, int(protocol.Op.GET_DATA), 12, False])  # path is not a string
            assert (await connection.receive())[:3][::2] == [7, errors.BadArgumentsError.code]
            await connection.send([8, 4242])  # no such op
            assert (await connection.receive())[2] == errors.UnimplementedError.code
            for xid, path in enumerate(["relative", "/trailing/", "/a//b", "/a/../b", "/nul\x00"], start=10):
                reply = await connection.call(xid, CreateRequest(path=path))
                assert reply[2] == errors.BadArgumentsError.code, path
            reply = await connection.call(20, CreateRequest(path="/coord/mine"))
            assert reply[2] == errors.BadArgumentsError.code  # the reserved subtree
            reply = await connection.call(
                21, CreateRequest(path="/big", data=b"x" * (protocol.DATA_BYTES_MAX_DEFAULT + 1))
            )
            assert reply[2] == errors.BadArgumentsError.code
            assert (await connection.call(22, CreateRequest(path="/fine")))[2] == 0


async def test_request_before_handshake_and_tagged_cbor_close_the_connection(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_server(server_config(tmp_path)) as server:
            first = await RawConnection.open(server.address)
            await first.send([1, int(protocol.Op.PING)])  # not a handshake
            assert await first.receive() is None
            second = await RawConnection.open(server.address)
            await second.handshake()
            body = cbor2.dumps(cbor2.CBORTag(1, 0))
            await second.send_bytes(protocol.HEADER.pack(len(body)) + body)
            assert await second.receive() is None


async def test_status_handshake_answers_without_a_session(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_server(server_config(tmp_path)) as server:
            connection = await RawConnection.open(server.address)
            await connection.send(protocol.StatusRequest().to_wire())
            status = await connection.receive()
            assert status["role"] == "standalone" and status["sessions"] == 0
            assert await connection.receive() is None


async def test_full_log_fails_writes_with_a_typed_error_keeps_reads_and_loses_nothing(tmp_path: Path) -> None:
    acknowledged: dict[str, bytes] = {}
    with trio.fail_after(60):
        async with open_server(server_config(tmp_path, log_map_bytes=256 * 1024)) as server:
            connection = await RawConnection.open(server.address)
            await connection.handshake()
            full_error = None
            for n in range(10_000):
                path, value = f"/n{n}", bytes([n % 251]) * 900
                reply = await connection.call(n + 1, CreateRequest(path=path, data=value))
                if reply[2] != 0:
                    full_error = reply[2]
                    break
                acknowledged[path] = value
            assert full_error == errors.StorageFullError.code
            assert len(acknowledged) > 10
            # Reads still work on the same session, at once...
            path, value = next(iter(acknowledged.items()))
            reply = await connection.call(50_000, GetDataRequest(path=path))
            assert reply[2] == 0 and reply[3][0] == value
            # ... and from a new session once the server has rejoined from its durable
            # state (a standalone server re-elects itself straight away).
            await server.wait_serving()
            reader = await RawConnection.open(server.address)
            await reader.handshake()
            for xid, (path, value) in enumerate(list(acknowledged.items())[-5:], start=1):
                reply = await reader.call(xid, GetDataRequest(path=path))
                assert reply[2] == 0 and reply[3][0] == value
            assert server.status()["last_storage_error"]
    # Restarted with room to grow, every acknowledged write is there and writes work again.
    async with open_server(server_config(tmp_path, log_map_bytes=8 * 1024 * 1024)) as server:
        connection = await RawConnection.open(server.address)
        await connection.handshake()
        for xid, (path, value) in enumerate(acknowledged.items(), start=1):
            reply = await connection.call(xid, GetDataRequest(path=path))
            assert reply[2] == 0 and reply[3][0] == value, path
        assert (await connection.call(99_999, CreateRequest(path="/room-again")))[2] == 0


@pytest.mark.parametrize("snapshot_every", [5, 1_000_000])
async def test_restart_recovers_tree_sessions_and_ephemerals(tmp_path: Path, snapshot_every: int) -> None:
    config = server_config(tmp_path, snapshot_every_txns=snapshot_every, min_session_timeout_ms=5_000)
    with trio.fail_after(30):
        async with open_server(config) as server:
            connection = await RawConnection.open(server.address)
            session = await connection.handshake(timeout_ms=5_000)
            for n in range(20):
                assert (await connection.call(n + 1, CreateRequest(path=f"/p{n}", data=b"%d" % n)))[2] == 0
            eph = protocol.CreateRequest(path="/eph", mode=protocol.CreateMode.EPHEMERAL)
            assert (await connection.call(100, eph))[2] == 0
            digest_before = server.tree.digest()
            zxid_before = server.tree.last_zxid
        async with open_server(config) as server:
            assert server.tree.digest() == digest_before
            assert server.tree.last_zxid == zxid_before
            if snapshot_every == 5:
                assert any(server._snapshots.list())
            # The session survived the restart: the client reconnects with its credentials.
            connection = await RawConnection.open(server.address)
            resumed = await connection.handshake(
                session_id=session.session_id, password=session.password, timeout_ms=5_000, last_zxid=zxid_before
            )
            assert resumed.session_id == session.session_id
            assert (await connection.call(1, GetDataRequest(path="/eph")))[2] == 0
            # New writes continue in a new epoch, after everything recovered.
            reply = await connection.call(2, CreateRequest(path="/new"))
            assert reply[2] == 0 and reply[1] > zxid_before and epoch_of(reply[1]) > epoch_of(zxid_before)


async def test_refused_handshakes_are_answered_before_the_close(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_server(server_config(tmp_path)) as server:
            for fields, code in [
                ({"session_id": 12345, "password": b"x" * 16}, errors.SessionExpiredError.code),
                ({"last_zxid": 1 << 40}, errors.ServerBehindError.code),
            ]:
                connection = await RawConnection.open(server.address)
                await connection.send(protocol.ConnectRequest(**fields).to_wire())
                reply = protocol.decode_handshake_reply(await connection.receive())
                assert isinstance(reply, tuple) and reply[0] == code
                assert await connection.receive() is None
