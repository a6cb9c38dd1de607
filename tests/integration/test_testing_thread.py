"""EnsembleThread: the embedded ensemble for code that is not trio (plain, unittest, asyncio).

None of these tests runs under trio: the ensemble lives on its own loop in a thread,
and the tests talk to it over plain sockets, as a program in another stack would.
"""

from __future__ import annotations

import asyncio
import socket
import unittest
from typing import Any

import pytest

from coord import protocol
from coord.testing import EnsembleThread


def status_over_socket(address: str) -> dict[str, Any]:
    """Ask one server for its status with a blocking socket (a status handshake)."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(protocol.encode_frame(protocol.StatusRequest().to_wire()))
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
    status = protocol.decode_body(data[4:])
    assert isinstance(status, dict)
    return status


async def status_over_asyncio(address: str) -> dict[str, Any]:
    """The same with asyncio streams: a minimal asyncio client of the wire protocol."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(protocol.encode_frame(protocol.StatusRequest().to_wire()))
        await writer.drain()
        length = int.from_bytes(await reader.readexactly(4), "big")
        status = protocol.decode_body(await reader.readexactly(length))
    finally:
        writer.close()
        await writer.wait_closed()
    assert isinstance(status, dict)
    return status


def test_a_plain_test_drives_the_ensemble_with_blocking_calls() -> None:
    with EnsembleThread(size=3) as ensemble:
        assert ensemble.server_ids == [1, 2, 3]
        leader = ensemble.leader_id()
        assert leader is not None
        roles = sorted(status_over_socket(ensemble.connect_string_of(i))["role"] for i in ensemble.server_ids)
        assert roles == ["follower", "follower", "leader"]
        ensemble.kill(leader)
        assert not ensemble.is_running(leader)
        new_leader = ensemble.wait_for_leader()
        assert new_leader != leader
        ensemble.restart(leader)
        assert ensemble.wait_for_leader() == new_leader
        ensemble.isolate(new_leader)
        assert ensemble.wait_for_leader() != new_leader
        ensemble.heal()
        ensemble.wait_for_leader()
        assert ensemble.run_sync(lambda e: e.server(1).tree.last_zxid) >= 0
        zxid = ensemble.wait_converged()
        assert {ensemble.status(i)["zxid"] for i in ensemble.server_ids} == {zxid}
    with pytest.raises(RuntimeError, match="not running"):
        ensemble.leader_id()


def test_an_asyncio_program_can_test_against_it() -> None:
    async def main(ensemble: EnsembleThread) -> list[str]:
        # blocking calls go through a thread so the asyncio loop keeps running
        leader = await asyncio.to_thread(ensemble.wait_for_leader)
        statuses = await asyncio.gather(*(status_over_asyncio(ensemble.connect_string_of(i)) for i in (1, 2, 3)))
        assert [status["server_id"] for status in statuses] == [1, 2, 3]
        await asyncio.to_thread(ensemble.kill, leader)
        await asyncio.to_thread(ensemble.wait_for_leader)
        survivors = [i for i in (1, 2, 3) if i != leader]
        return sorted([(await status_over_asyncio(ensemble.connect_string_of(i)))["role"] for i in survivors])

    with EnsembleThread(size=3) as ensemble:
        assert asyncio.run(main(ensemble)) == ["follower", "leader"]


def test_a_failed_start_raises_in_the_caller() -> None:
    with pytest.raises(TypeError), EnsembleThread(size=1, no_such_option=1):
        pass  # pragma: no cover


class UnittestExample(unittest.TestCase):
    """A unittest suite sharing one ensemble across its tests."""

    ensemble: EnsembleThread

    @classmethod
    def setUpClass(cls) -> None:
        cls.ensemble = EnsembleThread(size=3).start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.ensemble.close()

    def test_every_server_answers(self) -> None:
        for server_id in self.ensemble.server_ids:
            status = status_over_socket(self.ensemble.connect_string_of(server_id))
            self.assertIn(status["role"], ("leader", "follower"))

    def test_connect_string_lists_every_server(self) -> None:
        self.assertEqual(len(self.ensemble.connect_string.split(",")), 3)
