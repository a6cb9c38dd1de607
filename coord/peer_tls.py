"""TLS between the servers of an ensemble (``[tls] peers = true``): mutual, by certificate.

Each server presents its certificate (``tls.cert_file`` / ``tls.key_file``) on both
its links: as the TLS server on the connections it accepts and as the TLS client on
the ones it dials, and each side verifies the other's certificate against the
ensemble's CA (``tls.ca_file``). A dialing server also checks that the certificate
names the host it dialed (the peer address's host, as ZooKeeper's quorum TLS checks
hostnames by default), so a stolen DNS name or a wrong address in someone's
configuration does not get the ensemble's traffic. TLS 1.2 at least.

What TLS adds to the peer handshake (:mod:`coord.peer_handshake`): the links are
encrypted and protected against tampering, so an attacker on the path between two
servers can neither read nor change their messages; the shared secret (if also
configured) is still proved inside the TLS session. Which server id a certificate
may claim is not checked: any certificate of the ensemble's CA is a member, as in
ZooKeeper; give the ensemble a CA of its own.

Contexts are rebuilt by :meth:`PeerTls.reload` (on SIGHUP), so certificates can be
replaced without a restart: links dialed or accepted afterwards use the new ones,
links already up keep theirs.
"""

from __future__ import annotations

import logging
import ssl

from coord.config import ConfigError
from coord.config.settings import TlsConfig
from coord.tls import load_ca, load_chain

log = logging.getLogger(__name__)

__all__ = ["PeerTls"]


class PeerTls:
    """The two TLS contexts of this server's peer links, built from ``[tls]``.

    Raises (on construction):
        ConfigError: a certificate, key or CA file does not load (the message names it).
    """

    def __init__(self, tls: TlsConfig) -> None:
        self._tls = tls
        self.server_context, self.client_context = _contexts(tls)

    def reload(self) -> bool:
        """Build the contexts again from the same files; on failure keep the old ones
        (logged). Whether the new ones are in use."""
        try:
            self.server_context, self.client_context = _contexts(self._tls)
        except ConfigError as error:
            log.error("peer TLS certificates not reloaded, the old ones stay in use: %s", error)
            return False
        log.info("peer TLS certificates reloaded")
        return True


def _contexts(tls: TlsConfig) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    if tls.ca_file is None:
        raise ConfigError("tls.ca_file: required with peers = true (the CA that certificates are verified against)")
    server = _context(ssl.Purpose.CLIENT_AUTH, tls)
    server.verify_mode = ssl.CERT_REQUIRED  # the dialing server must present a certificate too
    client = _context(ssl.Purpose.SERVER_AUTH, tls)  # check_hostname and CERT_REQUIRED by default
    return server, client


def _context(purpose: ssl.Purpose, tls: TlsConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_ca(context, tls)
    load_chain(context, tls)
    return context
