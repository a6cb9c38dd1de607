"""TLS on the client port, with real certificates (tests/certs.py) and real sockets.

A TLS client works; a plain client fails cleanly and the server goes on; the client
checks the certificate's chain, dates and host; ``client_auth`` asks for client
certificates of the CA; certificates reload without a restart (SIGHUP in ``coord
serve``); the CLI speaks TLS with ``--tls-ca`` / ``--tls-cert`` / ``--tls-key``.
"""

from __future__ import annotations

import signal
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import client
from client._tls import tls_opener
from coord.config import ConfigError, ServerConfig
from coord.config.settings import TlsConfig
from coord.server.shell import Server, open_server
from coord.status import request_status
from coord.testing import open_ensemble
from coord.tls import ClientTls
from tests.certs import CertAuthority, Issued
from tests.integration.test_cli import start_serve
from tests.integration.test_cli_messages import EXIT_USAGE, one_line_error, run_cli


def tls_config(issued: Issued, ca: CertAuthority, client_auth: str = "none") -> TlsConfig:
    return TlsConfig(cert_file=issued.cert_file, key_file=issued.key_file, ca_file=ca.ca_file, client_auth=client_auth)


@asynccontextmanager
async def tls_server(tmp_path: Path, tls: TlsConfig) -> AsyncIterator[Server]:
    config = ServerConfig(data_dir=tmp_path / "data", listen_port=0, tls=tls)
    async with open_server(config) as server:
        yield server


async def peer_certificate(address: str, context: ssl.SSLContext) -> bytes:
    host, port = address.rsplit(":", 1)
    stream = trio.SSLStream(await trio.open_tcp_stream(host, int(port)), context, server_hostname=host)
    async with stream:
        await stream.do_handshake()
        certificate = stream.getpeercert(binary_form=True)
        assert certificate is not None
        return certificate


async def test_a_tls_client_works_and_a_plain_one_fails_cleanly(tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path / "ca")
    context = client.client_context(ca.ca_file)
    with trio.fail_after(30):
        async with tls_server(tmp_path, tls_config(ca.issue("server"), ca)) as server:
            async with client.connect(server.connect_string, ssl_context=context) as zk:
                await zk.create("/over-tls", b"secret data")
                assert (await zk.get("/over-tls"))[0] == b"secret data"
            host, port = server.connect_string.rsplit(":", 1)
            opener = tls_opener(context)
            assert (await request_status((host, int(port)), open_stream=opener))["role"] == "standalone"
            with pytest.raises(client.ConnectionLossError):
                async with client.connect(server.connect_string, connect_timeout=2, fail_fast=True):
                    pass
            with pytest.raises(client.BadArgumentsError, match="give one of"):
                async with client.connect(server.connect_string, ssl_context=context, tls=True):
                    pass
            async with client.connect(server.connect_string, ssl_context=context) as zk:
                assert (await zk.get("/over-tls"))[0] == b"secret data"  # still serving TLS clients


@pytest.mark.parametrize("bad", ["other-ca", "expired", "wrong-host"])
async def test_the_client_refuses_a_certificate_it_cannot_trust(tmp_path: Path, bad: str) -> None:
    ca = CertAuthority(tmp_path / "ca")
    if bad == "other-ca":
        issued = CertAuthority(tmp_path / "other", "another CA").issue("server")
    elif bad == "expired":
        issued = ca.issue("server", expired=True)
    else:
        issued = ca.issue("server", hosts=("10.9.9.9",))  # does not name 127.0.0.1
    with trio.fail_after(30):
        async with tls_server(tmp_path, tls_config(issued, ca)) as server:
            with pytest.raises(client.ConnectionLossError, match="TLS"):
                async with client.connect(
                    server.connect_string,
                    ssl_context=client.client_context(ca.ca_file),
                    fail_fast=True,
                    connect_timeout=5,
                ):
                    pass


async def refused(address: str, context: ssl.SSLContext) -> bool:
    try:
        async with client.connect(address, ssl_context=context, connect_timeout=3, fail_fast=True):
            return False
    except client.ConnectionLossError:
        return True


@pytest.mark.parametrize("client_auth", ["required", "optional"])
async def test_client_certificates_of_the_ca(tmp_path: Path, client_auth: str) -> None:
    ca = CertAuthority(tmp_path / "ca")
    mine = ca.issue("alice")
    theirs = CertAuthority(tmp_path / "other", "another CA").issue("mallory")
    with_cert = client.client_context(ca.ca_file, mine.cert_file, mine.key_file)
    foreign = client.client_context(ca.ca_file, theirs.cert_file, theirs.key_file)
    without = client.client_context(ca.ca_file)
    with trio.fail_after(40):
        async with tls_server(tmp_path, tls_config(ca.issue("server"), ca, client_auth)) as server:
            async with client.connect(server.connect_string, ssl_context=with_cert) as zk:
                await zk.create("/with-cert")
            assert await refused(server.connect_string, foreign)  # verified whenever one is given
            assert await refused(server.connect_string, without) == (client_auth == "required")


async def test_a_reload_takes_a_new_certificate_for_new_connections(tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path / "ca")
    issued = ca.issue("server")
    context = client.client_context(ca.ca_file)
    with trio.fail_after(30):
        async with tls_server(tmp_path, tls_config(issued, ca)) as server:
            before = await peer_certificate(server.connect_string, context)
            async with client.connect(server.connect_string, ssl_context=context) as zk:
                ca.issue("server")  # new certificate and key, the same files
                server.reload_tls()
                after = await peer_certificate(server.connect_string, context)
                assert after != before
                await zk.create("/old-connection-still-works")
                issued.key_file.write_text("broken")
                server.reload_tls()  # logged, and the last good one stays
                assert await peer_certificate(server.connect_string, context) == after
                assert await zk.exists("/old-connection-still-works") is not None


def test_a_key_that_does_not_match_is_a_config_error(tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path)
    one, two = ca.issue("one"), ca.issue("two")
    with pytest.raises(ConfigError, match=r"tls\.cert_file: cannot load"):
        ClientTls(tls_config(Issued(one.cert_file, two.key_file), ca))


async def test_coord_serve_and_the_cli_over_tls(tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path / "ca")
    issued = ca.issue("server")
    config = tmp_path / "coord.toml"
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[tls]\ncert_file = "{issued.cert_file}"\nkey_file = "{issued.key_file}"\nca_file = "{ca.ca_file}"\n'
    )
    async with trio.open_nursery() as nursery:
        served = await start_serve(nursery, "--config", str(config))
        server = ["--server", served.address, "--tls-ca", str(ca.ca_file)]
        result = await run_cli("create", *server, "/cli", "over tls")
        assert result.returncode == 0, result.stderr
        assert (await run_cli("get", *server, "/cli")).stdout.strip() == b"over tls"
        status = await run_cli("status", *server, "--json")
        assert status.returncode == 0 and b'"standalone"' in status.stdout
        plain = await run_cli("get", "--server", served.address, "--timeout", "3", "/cli")
        assert plain.returncode != 0
        ca.issue("server")  # renewed in place; SIGHUP picks it up
        served.process.send_signal(signal.SIGHUP)
        assert (await run_cli("get", *server, "/cli")).stdout.strip() == b"over tls"
        served.process.terminate()
    issued.key_file.write_text("not a key")
    result = await run_cli("serve", "--config", str(config), "--listen", "127.0.0.1:0")
    assert result.returncode == EXIT_USAGE
    assert "tls.cert_file: cannot load" in one_line_error(result)


async def test_an_ensemble_with_tls_on_both_ports(tmp_path: Path) -> None:
    """Three servers linked by mutual TLS, serving TLS clients: a write through one is read on all."""
    ca = CertAuthority(tmp_path / "ca")
    issued = ca.issue("server")
    tls = TlsConfig(cert_file=issued.cert_file, key_file=issued.key_file, ca_file=ca.ca_file, peers=True)
    context = client.client_context(ca.ca_file)
    with trio.fail_after(60):
        async with open_ensemble(3, tls=tls) as ensemble:
            await ensemble.wait_for_leader()
            assert {(await ensemble.status(i))["peer_auth"] for i in (1, 2, 3)} == {"tls"}
            async with client.connect(ensemble.connect_string_of(1), ssl_context=context) as zk:
                await zk.create("/replicated", b"v")
            for server_id in (2, 3):
                async with client.connect(ensemble.connect_string_of(server_id), ssl_context=context) as zk:
                    await zk.sync("/replicated")
                    assert (await zk.get("/replicated"))[0] == b"v"


def readme_blocks(language: str) -> list[str]:
    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text.split("## Securing an ensemble", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split(f"```{language}\n")[1:]]


async def test_the_readme_recipe(tmp_path: Path) -> None:
    """The README's openssl commands and [tls] table make a server the CLI reaches over TLS."""
    (recipe,) = readme_blocks("sh")
    with trio.fail_after(60):
        made = await trio.run_process(["sh", "-ec", recipe], cwd=tmp_path, capture_stdout=True, capture_stderr=True)
    assert made.returncode == 0
    (table,) = readme_blocks("toml")
    tls_table = table.split("[ensemble]")[0].replace("peers = true", "peers = false")  # a standalone server
    for name in ("server.pem", "server.key", "ca.pem"):  # relative to the server's directory
        tls_table = tls_table.replace(f'"{name}"', f'"{tmp_path / name}"')
    config = tmp_path / "coord.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n' + tls_table)
    async with trio.open_nursery() as nursery:
        served = await start_serve(nursery, "--config", str(config))
        result = await run_cli("status", "--server", served.address, "--tls-ca", str(tmp_path / "ca.pem"))
        assert result.returncode == 0 and b"standalone" in result.stdout, result.stderr
        served.process.terminate()
