"""Peer authentication by a shared secret, over real loopback sockets.

Servers that hold the same ``[ensemble] secret_file`` link up; a server with another
secret, or none, never does (either way, with the reason logged), and the others go
on; a stranger who speaks the protocol but lacks the secret gets nothing delivered and
cannot cut a real server's link by claiming its id; and a handshake recorded off the
wire cannot be replayed. Every test is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import cbor2
import pytest
import trio

from coord.config import ConfigError, EnsembleConfig, EnsembleMember, ServerConfig
from coord.config.settings import TlsConfig
from coord.peer_handshake import (
    PEER_PROTOCOL_VERSION,
    PeerAuth,
    encode_hello,
    encode_proof,
    new_nonce,
    proof_of_secret,
    read_hello,
)
from coord.protocol import HEADER
from coord.server.shell import open_server
from coord.testing import Ensemble, open_ensemble
from coord.testing.ensemble import write_peer_secret
from coord.transport import PeerTransport, bind_peer_listeners, listener_address
from tests.integration.test_peer_transport import ENSEMBLE_ID, Cluster, RawPeer, frame, open_cluster, receive
from tests.polling import wait_until

SECRET = PeerAuth.with_secret(b"the ensemble's secret, 32 bytes!")
OTHER = PeerAuth.with_secret(b"another ensemble's secret 32 b!!")


def logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)


async def test_servers_holding_the_secret_link_up_and_deliver() -> None:
    with trio.fail_after(10):
        async with open_cluster(3, auth=SECRET) as cluster:
            await cluster.wait_connected()
            one, two, three = (cluster.transports[server_id] for server_id in (1, 2, 3))
            one.send(2, b"to two")
            three.send(1, b"to one")
            assert await receive(two) == (1, b"to two")
            assert await receive(one) == (3, b"to one")


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        (OTHER, "does not hold the ensemble's secret"),
        (PeerAuth(), "authenticates peers by 'none', this server by 'secret'"),
    ],
    ids=["wrong-secret", "no-secret"],
)
async def test_a_server_without_the_secret_never_links_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture, auth: PeerAuth, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger="coord.transport")
    with trio.fail_after(15):
        listeners = await bind_peer_listeners(3)
        peers = {server_id: listener_address(listener) for server_id, listener in listeners.items()}
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, peers, ENSEMBLE_ID)
            for server_id in (1, 2, 3):
                await cluster.start(server_id, listeners[server_id], auth=auth if server_id == 3 else SECRET)
            await cluster.wait_connected(1, 2)
            await wait_until(lambda: logged(caplog, reason), timeout=10)
            one, two, three = (cluster.transports[server_id] for server_id in (1, 2, 3))
            # both ways refused, however many times server 3 redials
            assert 3 not in one.links_in() | one.links_up() | two.links_in() | two.links_up()
            assert three.links_up() == set() and three.links_in() == set()
            three.send(1, b"let me in")  # dropped: no link
            one.send(2, b"business as usual")
            assert await receive(two) == (1, b"business as usual")
            assert one.received.statistics().current_buffer_used == 0
            nursery.cancel_scope.cancel()


async def stranger_handshake(raw: RawPeer, claimed_id: int, proof: bytes) -> bytes:
    """Dial as ``claimed_id`` with a secret-mode hello, read the answer, send ``proof``; the answer's nonce."""
    nonce = new_nonce()
    await raw.send(encode_hello(claimed_id, ENSEMBLE_ID, auth="secret", nonce=nonce))
    answer, leftover = await read_hello(raw.stream, receive_bytes=4096)
    assert answer["server_id"] == 1 and answer["auth"] == "secret" and len(answer["proof"]) == 32
    assert leftover == b""
    await raw.send(encode_proof(proof) + frame(b"smuggled"))
    return bytes(answer["nonce"])


async def test_a_stranger_without_the_secret_is_refused_and_cannot_cut_a_real_link(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It claims to be server 2, which is linked: the real link stays, nothing is delivered."""
    caplog.set_level(logging.INFO, logger="coord.transport")
    with trio.fail_after(10):
        async with open_cluster(3, auth=SECRET) as cluster:
            await cluster.wait_connected()
            one = cluster.transports[1]
            async with RawPeer.open(cluster.peers[1]) as raw:
                await stranger_handshake(raw, 2, bytes(32))
                assert await raw.read_until_closed() == b""
            assert logged(caplog, "claiming to be server 2 does not hold the ensemble's secret")
            assert one.links_in() == {2, 3}  # the real server 2's link was not replaced
            cluster.transports[2].send(1, b"still linked")
            assert await receive(one) == (2, b"still linked")
            assert one.received.statistics().current_buffer_used == 0  # "smuggled" never arrived


async def test_a_recorded_handshake_cannot_be_replayed(caplog: pytest.LogCaptureFixture) -> None:
    """Record server 2's hello and proof as it dials a fake server 1 (which knows the secret),
    then replay them to the real server 1: its fresh nonce makes the old proof worthless."""
    caplog.set_level(logging.INFO, logger="coord.transport")
    recorded: list[bytes] = []
    got_proof = trio.Event()
    listeners = await bind_peer_listeners(2)
    peers = {server_id: listener_address(listener) for server_id, listener in listeners.items()}
    fake_listener = (await bind_peer_listeners(1))[1]

    async def fake_one(stream: trio.SocketStream) -> None:
        hello, _ = await read_hello(stream, receive_bytes=4096)
        nonce = new_nonce()
        assert SECRET.secret is not None
        accept = proof_of_secret(
            SECRET.secret, "accept", ensemble_id=ENSEMBLE_ID, dialer=2, acceptor=1, dialer_nonce=hello["nonce"],
            acceptor_nonce=nonce,
        )  # fmt: skip
        await stream.send_all(encode_hello(1, ENSEMBLE_ID, auth="secret", nonce=nonce, proof=accept))
        proof, _ = await read_hello(stream, receive_bytes=4096)
        recorded.extend([cbor2.dumps(hello), proof["coord_peer_proof"]])
        got_proof.set()
        await trio.sleep_forever()

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, fake_one, [fake_listener])
            two = PeerTransport(
                server_id=2, peers={**peers, 1: listener_address(fake_listener)}, ensemble_id=ENSEMBLE_ID, auth=SECRET
            )
            await nursery.start(lambda task_status: two.serve(listener=listeners[2], task_status=task_status))
            await got_proof.wait()
            one = PeerTransport(server_id=1, peers=peers, ensemble_id=ENSEMBLE_ID, auth=SECRET)
            await nursery.start(lambda task_status: one.serve(listener=listeners[1], task_status=task_status))
            hello_body, proof = recorded
            async with await trio.open_tcp_stream(*peers[1]) as stream:
                replay = RawPeer(stream)
                await replay.send(HEADER.pack(len(hello_body)) + hello_body)
                await read_hello(stream, receive_bytes=4096)  # a new answer, with a new nonce
                await replay.send(encode_proof(proof) + frame(b"replayed"))
                assert await replay.read_until_closed() == b""
            assert logged(caplog, "claiming to be server 2 does not hold the ensemble's secret")
            assert one.received.statistics().current_buffer_used == 0
            assert cbor2.loads(hello_body)["coord_peer"] == PEER_PROTOCOL_VERSION
            nursery.cancel_scope.cancel()


# --- whole servers ----------------------------------------------------------------------


async def test_an_ensemble_states_its_peer_auth_and_warns_loudly_without_any(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(60):
        async with open_ensemble(3) as ensemble:
            await ensemble.wait_for_leader()
            assert {(await ensemble.status(server_id))["peer_auth"] for server_id in (1, 2, 3)} == {"secret"}
        assert not logged(caplog, "NOT AUTHENTICATED")
        caplog.clear()
        async with open_ensemble(3, peer_secret=False) as ensemble:
            await ensemble.wait_for_leader()
            assert (await ensemble.status(1))["peer_auth"] == "none"
        warnings = [
            record for record in caplog.records if "PEERS OF THIS ENSEMBLE ARE NOT AUTHENTICATED" in record.getMessage()
        ]
        assert len(warnings) == 3 and all(record.levelno == logging.WARNING for record in warnings)


async def test_tls_files_that_do_not_load_stop_the_server_at_start(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("-")
    tls = TlsConfig(
        cert_file=tmp_path / "cert.pem", key_file=tmp_path / "key.pem", ca_file=tmp_path / "ca.pem", peers=True
    )
    config = ServerConfig(
        data_dir=tmp_path / "data",
        listen_port=0,
        tls=tls,
        ensemble=EnsembleConfig(servers={1: EnsembleMember(peer=("127.0.0.1", 1), client=("127.0.0.1", 0))}),
    )
    with pytest.raises(ConfigError, match=r"tls\.(ca|cert)_file: cannot load"):
        async with open_server(config):
            pass


async def test_a_server_with_another_secret_is_never_counted_in_a_quorum() -> None:
    """Real processes: server 3 restarts with another secret; with server 2 stopped, 1 and 3
    are two of three servers, yet no leader is elected until 2 is back."""
    with trio.fail_after(120):
        async with open_ensemble(3, processes=True) as ensemble:
            await ensemble.wait_for_leader(30)
            await ensemble.stop(3)
            config = ensemble.process(3).config_path
            other = write_peer_secret(config.parent / "other.secret")
            text = config.read_text()
            assert "secret_file" in text
            config.write_text(re.sub(r'secret_file = "[^"]*"', f'secret_file = "{other}"', text))
            await ensemble.restart(3)
            await ensemble.stop(2)
            with trio.move_on_after(8):
                while "leader" not in await roles(ensemble, (1, 3)):
                    await trio.sleep(0.05)  # polling, bounded by move_on_after
                raise AssertionError("a leader was elected with a server that lacks the secret")
            leader_log = ensemble.process(1).log_path.read_text(errors="replace")
            assert "does not hold the ensemble's secret" in leader_log
            await ensemble.restart(2)
            with trio.fail_after(30):
                while sorted((await roles(ensemble, (1, 2))).values()) != ["follower", "leader"]:
                    await trio.sleep(0.05)  # polling, bounded by fail_after
            assert (await ensemble.status(3))["role"] == "looking"


async def roles(ensemble: Ensemble, server_ids: tuple[int, ...]) -> dict[int, str]:
    return {server_id: (await ensemble.status(server_id)).get("role", "?") for server_id in server_ids}
