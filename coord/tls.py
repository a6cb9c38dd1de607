"""TLS on the client port (``[tls]``): the server's context, rebuilt on SIGHUP.

A client port with ``[tls]`` speaks only TLS (1.2 at least): each accepted
connection is wrapped in a ``trio.SSLStream`` before anything is read, so the TLS
handshake happens inside the connection's handshake timeout and a client that does
not speak TLS (plain coord frames, a port scanner) fails that handshake and is
closed, a logged line and nothing more. ``client_auth`` asks clients for a
certificate of ``ca_file``: ``"none"`` (not asked), ``"optional"`` (verified when
given), ``"required"`` (refused without one).

:meth:`ClientTls.reload` builds the context again from the same files, so a renewed
certificate is picked up without a restart: connections accepted afterwards use it,
connections already open keep theirs, and files that do not load leave the old
context in use (logged). Errors name the file and never include key material.
"""

from __future__ import annotations

import logging
import ssl

from coord.config import ConfigError
from coord.config.settings import TlsConfig

log = logging.getLogger(__name__)

__all__ = ["ClientTls"]

_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class ClientTls:
    """The client port's TLS context, built from ``[tls]``.

    Raises (on construction):
        ConfigError: a certificate, key or CA file does not load (the message names it).
    """

    def __init__(self, tls: TlsConfig) -> None:
        self._tls = tls
        self.context = server_context(tls)

    def reload(self) -> bool:
        """Build the context again; on failure keep the old one (logged). Whether it changed."""
        try:
            self.context = server_context(self._tls)
        except ConfigError as error:
            log.error("client TLS certificates not reloaded, the old ones stay in use: %s", error)
            return False
        log.info("client TLS certificates reloaded")
        return True


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """The TLS server context of the client port (see the module docstring)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_chain(context, tls)
    if tls.ca_file is not None:
        load_ca(context, tls)
    context.verify_mode = _VERIFY[tls.client_auth]
    return context


def load_chain(context: ssl.SSLContext, tls: TlsConfig) -> None:
    try:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"tls.cert_file: cannot load {tls.cert_file} with {tls.key_file}: {reason(error)}") from None


def load_ca(context: ssl.SSLContext, tls: TlsConfig) -> None:
    try:
        context.load_verify_locations(cafile=str(tls.ca_file))
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"tls.ca_file: cannot load {tls.ca_file}: {reason(error)}") from None


def reason(error: OSError | ssl.SSLError) -> str:
    """A short reason: the library's reason code or the OS's message, never key material."""
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason).lower().replace("_", " ")
    return error.strerror or str(error)
