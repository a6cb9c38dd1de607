"""The peer transport over real loopback sockets: order, reconnects, strangers, faults.

Every test is bounded by ``trio.fail_after``; nothing sleeps to synchronise: tests wait
for the messages they expect, or poll a condition (links up, a log line) under that
deadline.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import cbor2
import pytest
import trio

from coord import transport as transport_module
from coord.config import EnsembleConfig, EnsembleMember
from coord.peer_handshake import PEER_PROTOCOL_VERSION
from coord.protocol import HEADER, encode_frame
from coord.testing.faults import IsolationGate
from coord.transport import LinkGate, PeerTransport, bind_peer_listeners, listener_address
from tests.polling import wait_until

ENSEMBLE_ID = EnsembleConfig(servers={1: EnsembleMember(peer=("127.0.0.1", 1), client=("127.0.0.1", 2))}).ensemble_id
Address = tuple[str, int]


def frame(data: bytes) -> bytes:
    return HEADER.pack(len(data)) + data


def hello(server_id: object = 3, ensemble_id: object = ENSEMBLE_ID, **extra: object) -> bytes:
    """A dialer's handshake frame (no secret), with ``extra`` keys added or replaced."""
    item = {"coord_peer": PEER_PROTOCOL_VERSION, "server_id": server_id, "ensemble_id": ensemble_id}
    return encode_frame({**item, "auth": "none", "nonce": bytes(16), **extra})


def is_answer_of(data: bytes, server_id: int) -> bool:
    """Whether ``data`` is exactly one handshake answer of ``server_id`` (no secret: no proof)."""
    (length,) = HEADER.unpack_from(data)
    item = cbor2.loads(data[HEADER.size : HEADER.size + length])
    expected = {"coord_peer": PEER_PROTOCOL_VERSION, "server_id": server_id, "ensemble_id": ENSEMBLE_ID, "auth": "none"}
    return (
        len(data) == HEADER.size + length
        and {**item, "nonce": None} == {**expected, "nonce": None}
        and len(item["nonce"]) == 16
    )


class Cluster:
    """Transports for servers ``1..n`` of one ensemble, each startable and stoppable."""

    def __init__(self, nursery: trio.Nursery, peers: dict[int, Address], ensemble_id: bytes) -> None:
        self.nursery = nursery
        self.peers = peers
        self.ensemble_id = ensemble_id
        self.transports: dict[int, PeerTransport] = {}
        self._scopes: dict[int, trio.CancelScope] = {}
        self._done: dict[int, trio.Event] = {}

    async def start(self, server_id: int, listener: trio.SocketListener | None = None, **kwargs: Any) -> PeerTransport:
        kwargs.setdefault("peers", self.peers)
        kwargs.setdefault("ensemble_id", self.ensemble_id)
        transport = PeerTransport(server_id=server_id, rng=random.Random(server_id), **kwargs)
        scope = trio.CancelScope()
        done = trio.Event()

        async def run(task_status: trio.TaskStatus[Address]) -> None:
            try:
                with scope:
                    await transport.serve(listener=listener, task_status=task_status)
            finally:
                done.set()

        await self.nursery.start(run)
        self.transports[server_id] = transport
        self._scopes[server_id] = scope
        self._done[server_id] = done
        return transport

    async def stop(self, server_id: int) -> None:
        self._scopes[server_id].cancel()
        await self._done[server_id].wait()

    async def wait_connected(self, *server_ids: int) -> None:
        """Until each of ``server_ids`` (default: all) has a link to each other one."""
        ids = set(server_ids or self.transports)
        for server_id in ids:
            await wait_until(lambda server_id=server_id: ids - {server_id} <= self.transports[server_id].links_up())


@asynccontextmanager
async def open_cluster(
    count: int, *, serving: int | None = None, gates: Mapping[int, LinkGate] | None = None, **kwargs: Any
) -> AsyncIterator[Cluster]:
    """``count`` servers in the ensemble; the first ``serving`` (default all) started;
    ``gates`` for the transports of some servers (fault hooks)."""
    listeners = await bind_peer_listeners(count)
    peers = {server_id: listener_address(listener) for server_id, listener in listeners.items()}
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, peers, ENSEMBLE_ID)
        for server_id, listener in listeners.items():
            if serving is None or server_id <= serving:
                await cluster.start(server_id, listener, gate=(gates or {}).get(server_id), **kwargs)
            else:
                await listener.aclose()  # its port stays known, with nobody behind it
        yield cluster
        nursery.cancel_scope.cancel()


async def receive(transport: PeerTransport) -> tuple[int, bytes]:
    return await transport.received.receive()


class RawPeer:
    """A bare socket speaking (or not) the peer protocol, for what no transport would send."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream

    @classmethod
    @asynccontextmanager
    async def open(cls, address: Address) -> AsyncIterator[RawPeer]:
        async with await trio.open_tcp_stream(*address) as stream:
            yield cls(stream)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def read_until_closed(self) -> bytes:
        """Everything the other end sends until it closes the connection."""
        received = bytearray()
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return bytes(received)
            if not data:
                return bytes(received)
            received += data


# --- links and order ----------------------------------------------------------------------


async def test_three_servers_link_up_both_ways() -> None:
    with trio.fail_after(10):
        async with open_cluster(3) as cluster:
            await cluster.wait_connected()
            for server_id, transport in cluster.transports.items():
                assert transport.links_up() == {1, 2, 3} - {server_id}
                await wait_until(lambda transport=transport: len(transport.links_in()) == 2)
                assert transport.address == cluster.peers[server_id]


async def test_thousands_of_messages_arrive_in_order_on_every_link() -> None:
    count = 3000
    rng = random.Random(7)
    got: dict[int, dict[int, list[bytes]]] = defaultdict(lambda: defaultdict(list))

    def on_message_of_3(source: int, data: bytes) -> None:
        got[3][source].append(data)

    with trio.fail_after(30):
        async with open_cluster(3, serving=2) as cluster:
            await cluster.start(3, on_message=on_message_of_3)  # binds its port again
            await cluster.wait_connected()

            async def drain(server_id: int) -> None:
                async for source, data in cluster.transports[server_id].received:
                    got[server_id][source].append(data)

            cluster.nursery.start_soon(drain, 1)
            cluster.nursery.start_soon(drain, 2)
            sent: dict[tuple[int, int], list[bytes]] = defaultdict(list)
            for seq in range(count):
                for source in (1, 2, 3):
                    for target in {1, 2, 3} - {source}:
                        # sizes vary so that frames straddle the reads in every way
                        data = bytes([source, target]) + seq.to_bytes(4, "big") + bytes(rng.randrange(0, 3000))
                        cluster.transports[source].send(target, data)
                        sent[source, target].append(data)
                if seq % 100 == 0:
                    await trio.sleep(0)  # let the writers run now and then: batches of all sizes

            def complete() -> bool:
                return all(len(got[target][source]) == count for source, target in sent)

            await wait_until(complete, timeout=30)
            for (source, target), messages in sent.items():
                assert got[target][source] == messages, (source, target)
            assert all(transport.frames_dropped == 0 for transport in cluster.transports.values())


async def test_frames_that_come_with_the_handshake_are_delivered() -> None:
    with trio.fail_after(10):
        async with open_cluster(3, serving=1) as cluster, RawPeer.open(cluster.peers[1]) as raw:
            await raw.send(hello(3) + frame(b"first") + frame(b"") + frame(b"third"))
            assert [await receive(cluster.transports[1]) for _ in range(3)] == [
                (3, b"first"),
                (3, b""),
                (3, b"third"),
            ]


async def test_a_link_to_a_stopped_server_comes_back_when_it_restarts() -> None:
    with trio.fail_after(20):
        async with open_cluster(3) as cluster:
            await cluster.wait_connected()
            one = cluster.transports[1]
            await cluster.stop(2)
            await wait_until(lambda: 2 not in one.links_up() and 2 not in one.links_in(), timeout=20)
            one.send(2, b"lost")  # the link is down: dropped, never delivered later
            assert one.frames_dropped == 1
            assert one.links_up() == {3}  # the other link is untouched
            one.send(3, b"still there")
            assert await receive(cluster.transports[3]) == (1, b"still there")

            two = await cluster.start(2)  # binds the same port again
            await cluster.wait_connected()
            one.send(2, b"after")
            two.send(1, b"back")
            assert await receive(two) == (1, b"after")
            assert await receive(one) == (2, b"back")


async def test_the_same_transport_can_serve_again_after_it_stopped() -> None:
    with trio.fail_after(20):
        async with open_cluster(2) as cluster:
            await cluster.wait_connected()
            two = cluster.transports[2]
            await cluster.stop(2)
            assert two.links_up() == set()
            await cluster.nursery.start(two.serve)
            await cluster.wait_connected()
            cluster.transports[1].send(2, b"again")
            assert await receive(two) == (1, b"again")


# --- strangers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (hello(9), "server 9 is not in this ensemble"),
        (hello(1), "which is this server"),
        (hello(3, b"another ensemble"), "another ensemble configuration"),
        (hello(3, ENSEMBLE_ID[:-1]), "another ensemble configuration"),
        (hello(True), "server_id must be an integer"),
        (hello("3"), "server_id must be an integer"),
        (hello(3, "digest"), "ensemble_id must be bytes"),
        (hello(3, secret=b"x"), "not a peer handshake"),
        (hello(3, coord_peer=PEER_PROTOCOL_VERSION - 1), "unsupported peer protocol"),
        (hello(3, auth="password"), "unknown peer authentication"),
        (hello(3, nonce=b"short"), "the nonce must be 16 bytes"),
        (hello(3, auth="secret"), "authenticates peers by 'secret', this server by 'none'"),
        (encode_frame([1, 3, ENSEMBLE_ID]), "not a peer handshake"),
        (frame(cbor2.dumps({"coord_peer": 1}) + b"\x00"), "stray bytes"),
        (frame(b"\xff\xfe garbage"), "malformed CBOR"),
        (frame(cbor2.dumps(cbor2.CBORTag(1, 0))), "malformed CBOR"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "over the limit"),
        (HEADER.pack(2000) + bytes(2000), "over the limit"),
        (HEADER.pack(0xFFFFFFFF), "over the limit"),
    ],
    ids=[
        "unknown-id",
        "our-own-id",
        "other-ensemble",
        "truncated-ensemble-id",
        "bool-id",
        "string-id",
        "string-ensemble-id",
        "extra-key",
        "other-version",
        "unknown-auth",
        "short-nonce",
        "other-auth-mode",
        "array",
        "stray-bytes",
        "not-cbor",
        "cbor-tag",
        "http",
        "oversized-handshake",
        "huge-length",
    ],
)
async def test_strangers_are_refused_and_the_others_are_unaffected(
    caplog: pytest.LogCaptureFixture, data: bytes, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger="coord.transport")
    with trio.fail_after(10):
        async with open_cluster(3, serving=2) as cluster:  # server 3 is configured but absent
            await cluster.wait_connected()
            one = cluster.transports[1]
            async with RawPeer.open(cluster.peers[1]) as raw:
                await raw.send(data + frame(b"smuggled"))
                assert await raw.read_until_closed() == b""  # no handshake answer, just the close
                assert any(reason in record.getMessage() for record in caplog.records), [
                    record.getMessage() for record in caplog.records
                ]
                assert one.links_in() == {2}
                one.send(2, b"ping")
                cluster.transports[2].send(1, b"pong")
                assert await receive(cluster.transports[2]) == (1, b"ping")
                assert await receive(one) == (2, b"pong")  # and nothing from the stranger
                assert one.received.statistics().current_buffer_used == 0


async def test_a_silent_stranger_is_closed_after_the_handshake_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "HANDSHAKE_TIMEOUT_S", 0.2)
    with trio.fail_after(10):
        async with open_cluster(2, serving=1) as cluster, RawPeer.open(cluster.peers[1]) as raw:
            await raw.send(b"\x00\x00")  # half a length prefix, then nothing
            assert await raw.read_until_closed() == b""


async def test_an_oversized_frame_after_the_handshake_closes_that_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="coord.transport")
    with trio.fail_after(10):
        async with open_cluster(3, serving=2, frame_bytes_max=1000) as cluster:
            await cluster.wait_connected()
            one = cluster.transports[1]
            async with RawPeer.open(cluster.peers[1]) as raw:
                await raw.send(hello(3) + frame(b"fine") + HEADER.pack(1001))
                answer = await raw.read_until_closed()
                assert is_answer_of(answer, 1)  # accepted, answered, then closed over the frame
                assert await receive(one) == (3, b"fine")
                assert any("1001 bytes is over the limit of 1000" in record.getMessage() for record in caplog.records)
                await wait_until(lambda: one.links_in() == {2})
                one.send(2, b"ping")
                assert await receive(cluster.transports[2]) == (1, b"ping")


async def test_a_new_connection_from_a_server_supersedes_its_old_one() -> None:
    with trio.fail_after(10):
        async with open_cluster(3, serving=1) as cluster:
            one = cluster.transports[1]
            async with RawPeer.open(cluster.peers[1]) as old, RawPeer.open(cluster.peers[1]) as new:
                await old.send(hello(3) + frame(b"old"))
                assert await receive(one) == (3, b"old")
                await new.send(hello(3))
                assert is_answer_of(await old.read_until_closed(), 1)  # answered, then closed for the new one
                await new.send(frame(b"new"))
                assert await receive(one) == (3, b"new")
                assert one.links_in() == {3}


async def test_a_server_answering_with_another_id_is_refused_by_the_dialer(caplog: pytest.LogCaptureFixture) -> None:
    """Server 1's configuration points at server 3's address for server 2: no link comes up."""
    caplog.set_level(logging.INFO, logger="coord.transport")
    listeners = await bind_peer_listeners(2)
    first, second = (listener_address(listener) for listener in listeners.values())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            one = PeerTransport(server_id=1, peers={1: first, 2: second}, ensemble_id=ENSEMBLE_ID)
            three = PeerTransport(server_id=3, peers={1: first, 3: second}, ensemble_id=ENSEMBLE_ID)
            await nursery.start(lambda task_status: one.serve(listener=listeners[1], task_status=task_status))
            await nursery.start(lambda task_status: three.serve(listener=listeners[2], task_status=task_status))
            await wait_until(
                lambda: (
                    any("is server 3, not 2" in record.getMessage() for record in caplog.records)
                    and any("server 3 is not in this ensemble" in record.getMessage() for record in caplog.records)
                )
            )
            assert one.links_up() == set() and three.links_up() == set()
            # server 3 accepts server 1 (it is in 3's ensemble) until 1 rejects the answer and hangs up
            await wait_until(lambda: one.links_in() == set() and three.links_in() == set())
            nursery.cancel_scope.cancel()


async def test_servers_of_different_ensembles_refuse_each_other(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="coord.transport")
    with trio.fail_after(10):
        async with open_cluster(2, serving=1) as cluster:
            other = await cluster.start(2, ensemble_id=b"other")

            def refusals(text: str) -> int:
                return sum(text in record.getMessage() for record in caplog.records)

            await wait_until(
                lambda: refusals("another ensemble configuration") >= 2 and refusals("refused (closed during") >= 2
            )
            assert cluster.transports[1].links_up() == set() and other.links_up() == set()


# --- fault hooks and slow peers ---------------------------------------------------------------


async def test_isolate_stops_traffic_both_ways_and_heal_restores_it() -> None:
    gate = IsolationGate(1)
    with trio.fail_after(20):
        async with open_cluster(3, gates={1: gate}) as cluster:
            one, two, three = (cluster.transports[server_id] for server_id in (1, 2, 3))
            await cluster.wait_connected()
            gate.isolate()
            assert gate.is_isolated
            assert one.links_up() == set() and one.links_in() == set()
            await wait_until(lambda: 1 not in two.links_up() and 1 not in three.links_up(), timeout=20)
            await wait_until(lambda: two.links_in() == {3} and three.links_in() == {2}, timeout=20)
            one.send(2, b"from the isolated")
            two.send(1, b"to the isolated")
            three.send(1, b"to the isolated")
            two.send(3, b"between the others")
            assert await receive(three) == (2, b"between the others")

            gate.heal()
            await cluster.wait_connected()
            one.send(2, b"healed 1")
            two.send(1, b"healed 2")
            three.send(1, b"healed 3")
            assert await receive(two) == (1, b"healed 1")
            assert {await receive(one), await receive(one)} == {(2, b"healed 2"), (3, b"healed 3")}
            assert one.received.statistics().current_buffer_used == 0  # nothing from the isolation


@pytest.mark.parametrize("limit", [{"queue_frames_max": 20}, {"queue_bytes_max": 1 << 20}], ids=["frames", "bytes"])
async def test_a_peer_that_does_not_read_breaks_its_link_without_blocking_send(limit: dict[str, int]) -> None:
    """A fake server 2 takes the handshake, then never reads: the queue overflows, the link breaks."""
    listeners = await bind_peer_listeners(2)
    peers = {server_id: listener_address(listener) for server_id, listener in listeners.items()}
    connections, accepted = trio.open_memory_channel[trio.SocketStream](10)

    async def fake_two(stream: trio.SocketStream) -> None:
        await stream.receive_some(len(hello(1)))  # the hello, in one piece on loopback
        await stream.send_all(hello(2))
        await connections.send(stream)
        await trio.sleep_forever()  # never read, never close

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, fake_two, [listeners[2]])
            one = PeerTransport(server_id=1, peers=peers, ensemble_id=ENSEMBLE_ID, frame_bytes_max=1 << 20, **limit)
            await nursery.start(lambda task_status: one.serve(listener=listeners[1], task_status=task_status))
            first = await accepted.receive()
            await wait_until(lambda: one.links_up() == {2}, timeout=20)
            big = bytes(64 * 1024)
            sends = 0
            while 2 in one.links_up():
                one.send(2, big)  # returns at once, whatever the peer does
                sends += 1
                if sends % 5 == 0:
                    await trio.sleep(0)  # the writer fills the socket until send_all blocks
                assert sends < 100_000
            assert one.frames_dropped > 0
            # it redials; the new connection carries only what is sent after it came up
            second = await accepted.receive()
            assert second is not first
            await wait_until(lambda: one.links_up() == {2}, timeout=20)
            one.send(2, b"fresh")
            assert await second.receive_some(len(frame(b"fresh"))) == frame(b"fresh")
            nursery.cancel_scope.cancel()


async def test_a_receiver_that_does_not_keep_up_closes_the_connection_not_the_loop() -> None:
    with trio.fail_after(10):
        async with open_cluster(2, serving=1) as cluster:
            one = cluster.transports[1]
            two = await cluster.start(2, queue_frames_max=5)
            await cluster.wait_connected()
            for seq in range(20):  # nobody reads two.received: it holds 5
                one.send(2, bytes([seq]))
            await wait_until(lambda: two.received.statistics().current_buffer_used == 5 and 1 not in two.links_in())
            assert [await receive(two) for _ in range(5)] == [(1, bytes([seq])) for seq in range(5)]
            # server 1 notices the close and redials; the new connection is up at both ends
            await wait_until(lambda: 1 in two.links_in() and 2 in one.links_up())
            one.send(2, b"later")
            assert await receive(two) == (1, b"later")


# --- the API's own checks ----------------------------------------------------------------------


def test_send_refuses_unknown_targets_and_oversized_frames() -> None:
    transport = PeerTransport(
        server_id=1, peers={1: ("127.0.0.1", 0), 2: ("127.0.0.1", 0)}, ensemble_id=b"e", frame_bytes_max=10
    )
    with pytest.raises(ValueError, match="server 3 is not a peer of server 1"):
        transport.send(3, b"x")
    with pytest.raises(ValueError, match="server 1 is not a peer of server 1"):
        transport.send(1, b"x")
    with pytest.raises(ValueError, match="11 bytes is over the limit of 10"):
        transport.send(2, bytes(11))
    transport.send(2, b"down")  # not serving: the link is down, the frame dropped
    assert transport.frames_dropped == 1 and transport.links_up() == set()


def test_constructor_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="server 1 is not in peers"):
        PeerTransport(server_id=1, peers={2: ("127.0.0.1", 0)}, ensemble_id=b"e")
    with pytest.raises(TypeError, match="ensemble_id must be bytes"):
        PeerTransport(server_id=1, peers={1: ("127.0.0.1", 0)}, ensemble_id="e")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="queue_bytes_max >= frame_bytes_max"):
        PeerTransport(server_id=1, peers={1: ("127.0.0.1", 0)}, ensemble_id=b"e", frame_bytes_max=10, queue_bytes_max=9)


async def test_serving_twice_at_once_is_refused() -> None:
    with trio.fail_after(10):
        async with open_cluster(1) as cluster:
            with pytest.raises(RuntimeError, match="already serving"):
                await cluster.transports[1].serve()
