"""TLS for the client: ``connect(hosts, ssl_context=ctx)`` or ``connect(hosts, tls=True)``.

Each connection is TCP then a TLS handshake (``trio.SSLStream``) checking the server's
certificate and that it names the host from the connect string (hostname
verification stays on unless the caller's own context turns it off). A handshake that
fails (an untrusted or expired certificate, the wrong host, a server that does not
speak TLS) raises :class:`~client.ConnectionLossError` naming the server and the
TLS reason, so that after every host failed the caller reads why, not a bare "connection
lost".
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trio

from client._connection import OpenStream
from coord.errors import ConnectionLossError

__all__ = ["client_context", "tls_opener"]


def client_context(
    ca_file: str | Path | None = None, cert_file: str | Path | None = None, key_file: str | Path | None = None
) -> ssl.SSLContext:
    """A client TLS context: the system's CAs (or ``ca_file``), TLS 1.2 at least,
    hostname verification on, and a client certificate when ``cert_file`` is given."""
    context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), None if key_file is None else str(key_file))
    return context


def tls_opener(context: ssl.SSLContext) -> OpenStream:
    """An ``open_stream`` that speaks TLS with ``context`` to each server."""

    async def open_tls(host: str, port: int) -> trio.abc.Stream:
        tcp = await trio.open_tcp_stream(host, port)
        stream = trio.SSLStream(tcp, context, server_hostname=host)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as error:
            await trio.aclose_forcefully(stream)
            cause = error.__cause__
            if isinstance(cause, ssl.SSLError):
                raise ConnectionLossError(f"TLS with {host}:{port} failed: {cause}") from cause
            raise
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream

    return open_tls
