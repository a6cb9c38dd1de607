"""Backpressure on a real server and real sockets: a client that does not read its replies,
a watcher that does not read its events, requests pipelined behind the handshake, and
error replies that say what is wrong. (Hostile clients against a 3-process ensemble under
load: tests/fault/test_hostile.py.)"""

from __future__ import annotations

import contextlib
from pathlib import Path

import trio

import client
from coord import protocol
from coord.protocol import AddWatchMode, AddWatchRequest, CreateRequest, GetDataRequest
from coord.server import open_server
from tests.polling import wait_until

from .rawwire import RawConnection
from .test_server_input import server_config

MIB = 1 << 20


async def flood(raw: RawConnection, frames: bytes) -> None:
    """Write without ever reading; returns when the server stops reading (or closes)."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await raw.send_bytes(frames)


async def test_a_client_that_never_reads_is_bounded_then_closed(tmp_path: Path) -> None:
    """The finding: pipelined 1 MiB gets without reading took the server from 438 MB to 2.5 GB."""
    config = server_config(tmp_path, connection_stall_ms=1_500)
    async with open_server(config) as server, client.connect(server.connect_string) as good:
        await good.create("/big", b"x" * MIB)
        raw = await RawConnection.open(server.address)
        await raw.handshake(timeout_ms=10_000)
        gets = b"".join(
            protocol.encode_frame(protocol.encode_request(i, GetDataRequest(path="/big"))) for i in range(1, 5_000)
        )
        peak = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood, raw, gets)
            # others are served meanwhile, and the server's unsent bytes stay bounded
            for i in range(20):
                assert await good.set("/big", bytes([i]) * MIB)
                peak = max(peak, server.status()["unsent_bytes"])
            bound = config.connection_outbox_bytes_max + protocol.frame_bytes_max(config.data_bytes_max)
            assert peak <= bound
            # it is closed once it has been over its bound for the stall time
            await wait_until(lambda: server.status()["connections"] == 1, timeout=15)
            nursery.cancel_scope.cancel()
        assert server.status()["unsent_bytes"] == 0
        await raw.aclose()
        assert (await good.get("/big"))[0] == bytes([19]) * MIB


async def test_a_watcher_that_never_reads_is_closed_and_its_session_lives(tmp_path: Path) -> None:
    config = server_config(tmp_path, connection_outbox_bytes_max=64 * 1024, data_bytes_max=64 * 1024)
    async with open_server(config) as server, client.connect(server.connect_string) as writer:
        raw = await RawConnection.open(server.address)
        session = await raw.handshake(timeout_ms=10_000)
        reply = await raw.call(1, AddWatchRequest(path="/", mode=AddWatchMode.PERSISTENT_RECURSIVE))
        assert reply[2] == 0
        name = "/" + "w" * 2_000
        with trio.fail_after(60):
            for i in range(100_000):
                await writer.create(f"{name}{i}")
                if server.status()["connections"] == 1:
                    break
        assert server.status()["connections"] == 1  # the watcher was cut off, the writer was not
        assert session.session_id in server.tree.sessions  # its session lives on
        await raw.aclose()


async def test_a_request_pipelined_behind_the_handshake_is_answered(tmp_path: Path) -> None:
    """The finding: the connection was closed without the handshake reply, the session orphaned."""
    async with open_server(server_config(tmp_path)) as server:
        raw = await RawConnection.open(server.address)
        await raw.send_bytes(
            protocol.encode_frame(protocol.ConnectRequest(timeout_ms=5_000).to_wire())
            + protocol.encode_frame(protocol.encode_request(1, CreateRequest(path="/right-behind")))
            + protocol.encode_frame(protocol.encode_request(2, GetDataRequest(path="/right-behind")))
        )
        with trio.fail_after(10):
            handshake = protocol.decode_handshake_reply(await raw.receive())
            assert isinstance(handshake, protocol.ConnectResponse)
            created = await raw.receive()
            got = await raw.receive()
        assert created[:1] == [1] and created[2] == 0
        assert got[0] == 2 and got[2] == 0
        await raw.aclose()


async def test_write_errors_say_what_is_wrong(tmp_path: Path) -> None:
    async with open_server(server_config(tmp_path)) as server, client.connect(server.connect_string) as zk:
        try:
            await zk.create("/coord/x")
        except client.BadArgumentsError as error:
            assert "reserved" in str(error)
        else:
            raise AssertionError("a create in /coord must fail")
        try:
            await zk.create("/a" * 10_000 + "/leaf", makepath=True)
        except client.BadArgumentsError as error:
            assert "limits.path_bytes_max" in str(error)
        else:
            raise AssertionError("a 20 KB path must be refused")
        assert await zk.create("/still", b"fine") == "/still"


async def test_a_client_that_resets_its_connection_does_not_end_the_server(tmp_path: Path) -> None:
    """A reset (RST, as when a client process dies with unread data) while the server
    reads or writes must close that connection only."""
    import socket
    import struct

    async with open_server(server_config(tmp_path)) as server, client.connect(server.connect_string) as good:
        await good.create("/n", b"x" * 100_000)
        gets = b"".join(
            protocol.encode_frame(protocol.encode_request(i, GetDataRequest(path="/n"))) for i in range(1, 3)
        )
        for _ in range(20):
            raw = await RawConnection.open(server.address)
            await raw.handshake(timeout_ms=5_000)
            await raw.send_bytes(gets)
            await wait_until(lambda: server.status()["unsent_bytes"] == 0)  # replies sent, unread
            raw.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raw.stream.socket.close()  # RST: unread replies are in our receive buffer
            await good.create("/still-serving-", sequence=True)
        assert (await good.get("/n"))[0] == b"x" * 100_000
