"""Server configuration: a TOML file, command-line overrides, one clear error.

A complete file, with every key at its default (all keys are optional)::

    [server]
    id = 1                          # 1..255, unique in the ensemble
    data_dir = "coord-data"         # LMDB log and snapshots; "~" is expanded
    listen = "127.0.0.1:2281"       # HOST:PORT, [IPV6]:PORT or :PORT (loopback); port 0 = ephemeral
    tick_ms = 1000                  # the unit of session expiry (Zab has its own: ensemble.tick_ms); at most 60000
    max_connections = 10000         # client connections accepted at once

    [sessions]
    min_timeout_ms = 2000           # default 2 * tick_ms; at most one day (86400000)
    max_timeout_ms = 20000          # default 20 * tick_ms; at most one day (86400000)

    [storage]
    snapshot_every_txns = 100000    # take a snapshot after this many txns
    snapshot_every_bytes = 67108864 # ... or at most this many bytes of txns (64 MiB; sooner for a small tree)
    snapshots_retained = 3          # snapshots (and the log they need) kept on disk
    log_map_bytes = 1073741824      # LMDB map size: the most the log can ever hold (1 MiB..1 TiB)

    [limits]                        # see docs/limits.md for what each bounds
    data_bytes_max = 1048576        # largest znode value (ZooKeeper's jute.maxbuffer)
    txn_bytes_max = 2097152         # largest txn one request may become (makepath parents, multi ops)
    path_bytes_max = 4096           # longest znode path, in UTF-8 bytes
    path_depth_max = 256            # most components in a znode path
    connection_outstanding_max = 1000       # unanswered requests per connection before reading stops
    connection_inflight_bytes_max = 4194304 # bytes of unanswered requests per connection before reading stops
    connection_outbox_bytes_max = 1048576   # unsent reply bytes per connection before its reads are held
    outbox_bytes_total_max = 268435456      # unsent reply bytes of all connections before reads are held
    connection_stall_ms = 30000             # a connection over its outbox bound this long is closed

    [tls]                           # no [tls]: plain TCP on both ports (see docs/security.md)
    cert_file = "server.pem"        # this server's certificate chain (required with [tls])
    key_file = "server.key"         # its private key (required with [tls])
    ca_file = "ca.pem"              # the CA that client and peer certificates are verified against
    client_auth = "none"            # client certificates: "none" | "optional" | "required"
    peers = false                   # true: servers talk TLS and authenticate each other by certificate

Loading is :func:`load_config`: read the file (if any), apply ``overrides`` (dotted
keys such as ``"server.listen"``, as the CLI's flags give them), check every key and
value, derive what was left out, and build a frozen :class:`ServerConfig`. Anything
wrong raises :class:`ConfigError` whose message starts with the key at fault
(``server.tick_ms: must be a positive integer, got 'abc'``), suggests the nearest
known key for a misspelt one, and names the file and line for a TOML syntax error.

Session bounds follow ZooKeeper: when not given they are 2 and 20 ticks. A bound
that is given wins over the derived other one (``min_timeout_ms = 30000`` alone
raises the default maximum to 30000 rather than failing on a key the operator never
wrote); two explicit bounds with min > max are an error.

Without an ``[ensemble]`` table the server is standalone (``config.ensemble`` is
None). A replicated ensemble lists every server, this one included; each server
gets the same file except for ``server.id``::

    [ensemble]
    tick_ms = 100                   # the Zab tick (server.tick_ms is the session tick); at most 60000
    init_limit_ticks = 20           # a follower must connect and sync within this many ticks (at most 10000)
    sync_limit_ticks = 5            # a leader or follower unheard this long is given up on (at most 10000)
    snap_chunk_bytes = 1048576      # a SNAP to a lagging follower streams in chunks this large (1 KiB..16 MiB)
    secret_file = "peer.secret"     # a shared secret that peers prove they hold (no default: no peer auth)

    [ensemble.servers]              # ID = { peer = HOST:PORT (Zab), client = HOST:PORT }
    1 = { peer = "10.0.0.1:2888", client = "10.0.0.1:2281" }
    2 = { peer = "10.0.0.2:2888", client = "10.0.0.2:2281" }
    3 = { peer = "10.0.0.3:2888", client = "10.0.0.3:2281" }

Ids are 1..255 (written as plain decimal keys); ``server.id`` must be one of them,
and ``server.listen`` defaults to that member's ``client`` address. No two addresses
(peer or client, of any member) may be equal, and a peer port may not be 0: the
other servers dial it. Any number of servers from one up is accepted (an even count
tolerates no more failures than the odd count below it, but is not wrong). The
servers agree on :attr:`EnsembleConfig.ensemble_id`, a digest of the ids and peer
addresses, and refuse peers whose digest differs (see :mod:`coord.transport`).

There is no switch for fault injection: the production server has no fault hooks (the
test ensemble adds them, :mod:`coord.testing.faults`).

The package, one concept a module: :mod:`~coord.config.settings` (the frozen
dataclasses and addresses), :mod:`~coord.config.value_checks` (:class:`ConfigError` and
the check of each kind of value), :mod:`~coord.config.ensemble_table` (the
``[ensemble.servers]`` table), :mod:`~coord.config.schema` (every key and what it
sets) and :mod:`~coord.config.loading` (:func:`load_config`). Import from
``coord.config``; the names below are its interface.
"""

from coord.config.loading import load_config as load_config
from coord.config.schema import config_keys as config_keys
from coord.config.settings import Address as Address
from coord.config.settings import EnsembleConfig as EnsembleConfig
from coord.config.settings import EnsembleMember as EnsembleMember
from coord.config.settings import ServerConfig as ServerConfig
from coord.config.settings import format_address as format_address
from coord.config.value_checks import ConfigError as ConfigError
from coord.config.value_checks import parse_listen as parse_listen

__all__ = [
    "Address",
    "ConfigError",
    "EnsembleConfig",
    "EnsembleMember",
    "ServerConfig",
    "config_keys",
    "format_address",
    "load_config",
    "parse_listen",
]
