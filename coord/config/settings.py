"""What a server is configured with: the frozen settings, their defaults, and addresses.

The rest of the server reads only these dataclasses, never TOML. They stand apart from
the checks (:mod:`coord.config.value_checks`, :mod:`coord.config.schema`) because they
are what a configuration *is*, while the checks are how a file becomes one:
:func:`coord.config.load_config` builds them with every key checked; built directly
(tests), they take the fields as given.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

Address = tuple[str, int]


def format_address(address: Address) -> str:
    """``HOST:PORT``, with an IPv6 host in brackets (the inverse of :func:`parse_listen`)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class EnsembleMember:
    """One server of an ensemble: where its peers reach it, and where its clients do."""

    peer: Address
    client: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class EnsembleConfig:
    """The servers of a replicated ensemble and the Zab timing.

    ``servers`` maps every server id (this server's too) to its addresses; treat it as
    read-only. Times are in Zab ticks of ``tick_ms``.
    """

    servers: dict[int, EnsembleMember] = field(default_factory=dict)
    tick_ms: int = 100
    init_limit_ticks: int = 20
    sync_limit_ticks: int = 5
    snap_chunk_bytes: int = 1 << 20  # a SNAP to a lagging follower streams in chunks this large
    secret_file: Path | None = None  # the shared peer secret (challenge-response handshake); None: none

    @property
    def peer_auth(self) -> str:
        """How peers authenticate each other when TLS does not: ``secret`` or ``none``."""
        return "secret" if self.secret_file is not None else "none"

    @property
    def voters(self) -> tuple[int, ...]:
        """Every server id, ascending."""
        return tuple(sorted(self.servers))

    @property
    def peers(self) -> dict[int, Address]:
        """Server id -> peer address, the shape :class:`coord.transport.PeerTransport` takes."""
        return {server_id: member.peer for server_id, member in sorted(self.servers.items())}

    @property
    def ensemble_id(self) -> bytes:
        """SHA-256 of the membership: every id with its peer address, in id order.

        Two servers whose configurations differ in who is in the ensemble (and so in
        what a quorum is) get different digests and refuse each other's links. Client
        addresses and timings are left out: servers disagreeing on those can still
        replicate safely. Hosts are compared as written (lower-cased), so give every
        server the same file.
        """
        lines = [f"{server_id} {format_address(self.servers[server_id].peer).lower()}" for server_id in self.voters]
        return hashlib.sha256("\n".join(["coord-ensemble-v1", *lines]).encode()).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """The ``[tls]`` table: this server's certificate, the CA it trusts, what it asks of whom.

    ``client_auth`` is ``"none"``, ``"optional"`` or ``"required"``: whether the client
    port asks clients for a certificate (verified against ``ca_file``). ``peers``: the
    servers of the ensemble talk TLS with mutual authentication by certificate.
    """

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    client_auth: str = "none"
    peers: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Everything one server needs to know to start.

    Build it with :func:`load_config`, which checks every value and derives the
    session bounds from ``tick_ms``. Constructing it directly (tests) takes the
    fields as given.
    """

    data_dir: Path = Path("coord-data")
    listen_host: str = "127.0.0.1"
    listen_port: int = 2281  # 0 = ephemeral (tests)
    server_id: int = 1
    tick_ms: int = 1000
    min_session_timeout_ms: int = 2000  # default 2 ticks
    max_session_timeout_ms: int = 20000  # default 20 ticks
    data_bytes_max: int = 1 << 20
    snapshot_every_txns: int = 100_000
    snapshot_every_bytes: int = 64 << 20
    snapshots_retained: int = 3
    log_map_bytes: int = 1 << 30
    max_connections: int = 10_000
    txn_bytes_max: int = 2 << 20
    path_bytes_max: int = 4096
    path_depth_max: int = 256
    connection_outstanding_max: int = 1000
    connection_inflight_bytes_max: int = 4 << 20
    connection_outbox_bytes_max: int = 1 << 20
    outbox_bytes_total_max: int = 256 << 20
    connection_stall_ms: int = 30_000
    ensemble: EnsembleConfig | None = None  # None: standalone
    tls: TlsConfig | None = None  # None: plain TCP on both ports

    @property
    def listen(self) -> str:
        """The listen address as ``HOST:PORT`` (IPv6 hosts in brackets)."""
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"
