"""TLS between servers (``[tls] peers = true``) over real loopback sockets and real certificates.

Servers with certificates of the ensemble's CA link up and deliver, inside TLS; a server
whose certificate comes from another CA, is expired, or does not name the host it is
dialed at never links (reason logged) while the others go on; a plain-TCP peer gets
nothing; a reload picks up new certificates for new links. Bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
import trio

from coord.config import ConfigError
from coord.config.settings import TlsConfig
from coord.peer_tls import PeerTls
from coord.transport import bind_peer_listeners, listener_address
from tests.certs import CertAuthority, Issued
from tests.integration.test_peer_auth import SECRET, logged
from tests.integration.test_peer_transport import ENSEMBLE_ID, Cluster, RawPeer, hello, receive
from tests.polling import wait_until


def peer_tls(issued: Issued, ca_file: Path) -> PeerTls:
    return PeerTls(TlsConfig(cert_file=issued.cert_file, key_file=issued.key_file, ca_file=ca_file, peers=True))


def tls_for(ca: CertAuthority, name: str, **issue: object) -> PeerTls:
    return peer_tls(ca.issue(name, **issue), ca.ca_file)  # type: ignore[arg-type]


async def start(
    cluster: Cluster, listeners: dict[int, trio.SocketListener], tls: dict[int, PeerTls], **kw: object
) -> None:
    for server_id, context in tls.items():
        await cluster.start(server_id, listeners[server_id], tls=context, **kw)


async def test_servers_with_certificates_of_the_ca_link_up_inside_tls(tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path)
    with trio.fail_after(15):
        listeners = await bind_peer_listeners(3)
        peers = {server_id: listener_address(listener) for server_id, listener in listeners.items()}
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, peers, ENSEMBLE_ID)
            await start(cluster, listeners, {i: tls_for(ca, f"server-{i}") for i in (1, 2, 3)}, auth=SECRET)
            await cluster.wait_connected()
            one, two = cluster.transports[1], cluster.transports[2]
            one.send(2, b"over tls")
            assert await receive(two) == (1, b"over tls")
            # a plain-TCP stranger speaking the peer protocol gets no answer, only a close
            async with RawPeer.open(peers[1]) as raw:
                await raw.send(hello(3))
                assert b"coord_peer" not in await raw.read_until_closed()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("bad", ["other-ca", "expired", "wrong-host"])
async def test_a_server_with_a_bad_certificate_never_links(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: str
) -> None:
    caplog.set_level(logging.INFO, logger="coord.transport")
    ca = CertAuthority(tmp_path / "ca")
    if bad == "other-ca":
        third = tls_for(CertAuthority(tmp_path / "other", "another CA"), "server-3")
        third = PeerTls(
            TlsConfig(cert_file=third._tls.cert_file, key_file=third._tls.key_file, ca_file=ca.ca_file, peers=True)
        )
    elif bad == "expired":
        third = tls_for(ca, "server-3", expired=True)
    else:
        third = tls_for(ca, "server-3", hosts=("10.9.9.9",))  # names another host than the one it is dialed at
    with trio.fail_after(20):
        listeners = await bind_peer_listeners(3)
        peers = {server_id: listener_address(listener) for server_id, listener in listeners.items()}
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, peers, ENSEMBLE_ID)
            await start(cluster, listeners, {1: tls_for(ca, "server-1"), 2: tls_for(ca, "server-2"), 3: third})
            await cluster.wait_connected(1, 2)
            await wait_until(lambda: logged(caplog, "TLS refused"), timeout=15)
            one, two = cluster.transports[1], cluster.transports[2]
            # servers 1 and 2 refuse to send to 3 (its certificate fails as a server) and to
            # take its links (as a client); with "wrong-host" 3's own outgoing links are fine
            # at the TLS level only if the others' certificates name 127.0.0.1, which they do
            assert 3 not in one.links_up() | two.links_up()
            if bad != "wrong-host":
                assert 3 not in one.links_in() | two.links_in()
            one.send(2, b"business as usual")
            assert await receive(two) == (1, b"business as usual")
            nursery.cancel_scope.cancel()


def test_certificates_that_do_not_load_are_a_config_error(tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path)
    issued = ca.issue("server-1")
    other = ca.issue("server-2")
    with pytest.raises(ConfigError, match=r"tls\.cert_file: cannot load"):
        peer_tls(Issued(issued.cert_file, other.key_file), ca.ca_file)
    (tmp_path / "garbage.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"tls\.ca_file: cannot load"):
        peer_tls(issued, tmp_path / "garbage.pem")


def test_a_reload_takes_new_certificates_and_a_broken_one_keeps_the_old(tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path)
    issued = ca.issue("server-1")
    tls = peer_tls(issued, ca.ca_file)
    before = tls.server_context
    ca.issue("server-1")  # the same files, a new certificate
    assert tls.reload() and tls.server_context is not before
    current = tls.server_context
    issued.key_file.write_text("broken")
    assert not tls.reload() and tls.server_context is current
    assert current.verify_mode == ssl.CERT_REQUIRED and tls.client_context.check_hostname
