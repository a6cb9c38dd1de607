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
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coord.protocol import FRAME_OVERHEAD_BYTES


class ConfigError(Exception):
    """The configuration is unusable; the message names the key (or file) at fault."""


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

    @property
    def listen(self) -> str:
        """The listen address as ``HOST:PORT`` (IPv6 hosts in brackets)."""
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


_DEFAULTS = ServerConfig()  # slotted dataclasses keep no defaults on the class


# --- values ---------------------------------------------------------------------------

_LOOPBACK = "127.0.0.1"

# ZooKeeper puts the server id in the top byte of the session ids it hands out.
_SERVER_ID_MAX = 255
# A frame's length is a 4-byte prefix, and a value must fit in one frame.
_DATA_BYTES_MAX_LIMIT = (1 << 32) - 1 - FRAME_OVERHEAD_BYTES


def parse_listen(value: str) -> tuple[str, int]:
    """Split a listen address: ``host:port``, ``[v6addr]:port`` or ``:port`` (loopback).

    Returns:
        ``(host, port)``, with the brackets of an IPv6 address removed.

    Raises:
        ConfigError: not one of those shapes, or the port is not in 0..65535.
    """
    if not isinstance(value, str):
        raise ConfigError(f"expected 'HOST:PORT', got {value!r}")
    if value.startswith("["):
        close = value.find("]")
        if close < 0 or value[close + 1 : close + 2] != ":":
            raise ConfigError(f"expected '[IPV6]:PORT', got {value!r}")
        host, port_text = value[1:close], value[close + 2 :]
        if not host:
            raise ConfigError(f"empty IPv6 address in {value!r}")
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon:
            raise ConfigError(f"expected 'HOST:PORT', got {value!r} (no port)")
        if ":" in host:
            raise ConfigError(f"put an IPv6 address in brackets, as '[::1]:2281', got {value!r}")
        host = host or _LOOPBACK
    if not port_text.isascii() or not port_text.isdigit():
        raise ConfigError(f"port must be a number, got {port_text!r} in {value!r}")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"port must be in 0..65535, got {port} in {value!r}")
    return host, port


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _integer(key: str, value: object, *, low: int, high: int | None = None, what: str) -> int:
    if type(value) is not int or value < low or (high is not None and value > high):
        raise ConfigError(f"{key}: must be {what}, got {_describe(value)}")
    return value


def _positive(key: str, value: object) -> int:
    return _integer(key, value, low=1, what="a positive integer")


def _at_most(high: int, unit: str = "") -> Callable[[str, object], int]:
    """A check for a positive integer no larger than ``high`` (the message keeps
    "a positive integer" for values of the wrong type or sign)."""

    def check(key: str, value: object) -> int:
        value = _positive(key, value)
        if value > high:
            raise ConfigError(f"{key}: must be at most {high}{unit}, got {_describe(value)}")
        return value

    return check


# Times are bounded so that a typo (tick_ms = 10**14) is an error, not a server that
# never ticks; the bounds are far beyond any sane setting.
_TICK_MS_MAX = 60_000  # one minute
_SESSION_TIMEOUT_MS_MAX = 24 * 3600 * 1000  # one day
_LIMIT_TICKS_MAX = 10_000
# The LMDB map is reserved address space: at least 1 MiB, at most what a 64-bit
# process can map with room to spare (1 TiB), or 1 GiB on a 32-bit platform.
_LOG_MAP_BYTES_MIN = 1 << 20
_LOG_MAP_BYTES_MAX, _LOG_MAP_BYTES_MAX_TEXT = (1 << 40, "1 TiB") if sys.maxsize > 2**32 else (1 << 30, "1 GiB")


def _check_log_map_bytes(key: str, value: object) -> int:
    return _integer(
        key,
        value,
        low=_LOG_MAP_BYTES_MIN,
        high=_LOG_MAP_BYTES_MAX,
        what=f"an integer in {_LOG_MAP_BYTES_MIN}..{_LOG_MAP_BYTES_MAX} (1 MiB..{_LOG_MAP_BYTES_MAX_TEXT})",
    )


def _string(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a non-empty string, got {_describe(value)}")
    return value


# --- the schema -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Key:
    """One TOML key: how to check its value and which ServerConfig fields it sets."""

    check: Callable[[str, object], dict[str, object]]
    is_int: bool = True  # a string override (from the command line) is parsed as an int


def _field(name: str, check: Callable[[str, object], object] = _positive) -> Callable[[str, object], dict[str, object]]:
    return lambda key, value: {name: check(key, value)}


def _check_server_id(key: str, value: object) -> int:
    return _integer(key, value, low=1, high=_SERVER_ID_MAX, what=f"an integer in 1..{_SERVER_ID_MAX}")


def _check_data_dir(key: str, value: object) -> dict[str, object]:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return {"data_dir": Path(_string(key, value)).expanduser()}


def _check_listen(key: str, value: object) -> dict[str, object]:
    try:
        host, port = parse_listen(_string(key, value))
    except ConfigError as error:
        raise ConfigError(f"{key}: {error}") from None
    return {"listen_host": host, "listen_port": port}


def _check_data_bytes_max(key: str, value: object) -> int:
    return _integer(key, value, low=1, high=_DATA_BYTES_MAX_LIMIT, what=f"an integer in 1..{_DATA_BYTES_MAX_LIMIT}")


# A txn travels to the followers inside one peer frame (coord.transport's limit), with room for
# the proposal's own fields.
_TXN_BYTES_MAX_LIMIT = 32 << 20
_PATH_BYTES_MAX_LIMIT = 1 << 16
_PATH_DEPTH_MAX_LIMIT = 4096


def _check_txn_bytes_max(key: str, value: object) -> int:
    low = 64 * 1024
    return _integer(key, value, low=low, high=_TXN_BYTES_MAX_LIMIT, what=f"an integer in {low}..{_TXN_BYTES_MAX_LIMIT}")


def _check_path_bytes_max(key: str, value: object) -> int:
    return _integer(key, value, low=2, high=_PATH_BYTES_MAX_LIMIT, what=f"an integer in 2..{_PATH_BYTES_MAX_LIMIT}")


def _check_path_depth_max(key: str, value: object) -> int:
    return _integer(key, value, low=1, high=_PATH_DEPTH_MAX_LIMIT, what=f"an integer in 1..{_PATH_DEPTH_MAX_LIMIT}")


_MEMBER_KEYS = ("peer", "client")
_SERVER_ID_KEY = re.compile(r"[1-9][0-9]{0,2}")


def _check_member_address(key: str, value: object, *, is_peer: bool) -> Address:
    try:
        address = parse_listen(_string(key, value))
    except ConfigError as error:
        message = str(error)
        raise ConfigError(message if message.startswith(f"{key}: ") else f"{key}: {message}") from None
    if is_peer and address[1] == 0:
        raise ConfigError(f"{key}: port 0 is not allowed for a peer address (the other servers dial it), got {value!r}")
    return address


def _check_servers(key: str, value: object) -> dict[str, object]:
    """``[ensemble.servers]``: ``ID = { peer = "HOST:PORT", client = "HOST:PORT" }`` per server."""
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{key}: must be a table of ID = {{ peer = 'HOST:PORT', client = 'HOST:PORT' }}, got {_describe(value)}"
        )
    if not value:
        raise ConfigError(f"{key}: must list at least one server")
    servers: dict[int, EnsembleMember] = {}
    used: dict[Address, str] = {}  # address -> the key that first named it
    for id_text, body in value.items():
        member_key = f"{key}.{id_text}"
        # TOML keys are strings; "01" and "1" would both be server 1, so only plain decimals
        if not isinstance(id_text, str) or not _SERVER_ID_KEY.fullmatch(id_text) or int(id_text) > _SERVER_ID_MAX:
            raise ConfigError(f"{member_key}: a server id must be an integer in 1..{_SERVER_ID_MAX}, got {id_text!r}")
        if not isinstance(body, Mapping):
            raise ConfigError(
                f"{member_key}: must be a table {{ peer = 'HOST:PORT', client = 'HOST:PORT' }}, got {_describe(body)}"
            )
        for name in body:
            if name not in _MEMBER_KEYS:
                guess = _closest(str(name), list(_MEMBER_KEYS))
                hint = f"did you mean {guess!r}?" if guess else "expected 'peer' and 'client'"
                raise ConfigError(f"{member_key}.{name}: unknown key ({hint})")
        addresses: dict[str, Address] = {}
        for name in _MEMBER_KEYS:
            if name not in body:
                raise ConfigError(f"{member_key}.{name}: required (each server needs a peer and a client address)")
            address = _check_member_address(f"{member_key}.{name}", body[name], is_peer=name == "peer")
            normal = (address[0].lower(), address[1])
            if normal in used:
                raise ConfigError(f"{member_key}.{name}: {format_address(address)} is already used by {used[normal]}")
            used[normal] = f"{member_key}.{name}"
            addresses[name] = address
        servers[int(id_text)] = EnsembleMember(peer=addresses["peer"], client=addresses["client"])
    return {"ensemble_servers": servers}


_SCHEMA: dict[str, dict[str, _Key]] = {
    "server": {
        "id": _Key(_field("server_id", _check_server_id)),
        "data_dir": _Key(_check_data_dir, is_int=False),
        "listen": _Key(_check_listen, is_int=False),
        "tick_ms": _Key(_field("tick_ms", _at_most(_TICK_MS_MAX, " (one minute)"))),
        "max_connections": _Key(_field("max_connections")),
    },
    "sessions": {
        "min_timeout_ms": _Key(_field("min_session_timeout_ms", _at_most(_SESSION_TIMEOUT_MS_MAX, " (one day)"))),
        "max_timeout_ms": _Key(_field("max_session_timeout_ms", _at_most(_SESSION_TIMEOUT_MS_MAX, " (one day)"))),
    },
    "storage": {
        "snapshot_every_txns": _Key(_field("snapshot_every_txns")),
        "snapshots_retained": _Key(_field("snapshots_retained")),
        "log_map_bytes": _Key(_field("log_map_bytes", _check_log_map_bytes)),
    },
    "limits": {
        "data_bytes_max": _Key(_field("data_bytes_max", _check_data_bytes_max)),
        "txn_bytes_max": _Key(_field("txn_bytes_max", _check_txn_bytes_max)),
        "path_bytes_max": _Key(_field("path_bytes_max", _check_path_bytes_max)),
        "path_depth_max": _Key(_field("path_depth_max", _check_path_depth_max)),
        "connection_outstanding_max": _Key(_field("connection_outstanding_max")),
        "connection_inflight_bytes_max": _Key(_field("connection_inflight_bytes_max")),
        "connection_outbox_bytes_max": _Key(_field("connection_outbox_bytes_max")),
        "outbox_bytes_total_max": _Key(_field("outbox_bytes_total_max")),
        "connection_stall_ms": _Key(_field("connection_stall_ms")),
    },
    "ensemble": {
        "tick_ms": _Key(_field("ensemble_tick_ms", _at_most(_TICK_MS_MAX, " (one minute)"))),
        "init_limit_ticks": _Key(_field("ensemble_init_limit_ticks", _at_most(_LIMIT_TICKS_MAX))),
        "sync_limit_ticks": _Key(_field("ensemble_sync_limit_ticks", _at_most(_LIMIT_TICKS_MAX))),
        "servers": _Key(_check_servers, is_int=False),
    },
}

# names operators reach for that difflib would not connect to ours
_ALIASES = {name: "server.listen" for name in ("port", "host", "address", "bind", "client_port")}

_ALL_KEYS = [f"{table}.{key}" for table, keys in _SCHEMA.items() for key in keys]


def _closest(name: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown_key(dotted: str) -> ConfigError:
    """The error for a table or key not in the schema, with the nearest known name."""
    table, _, key = dotted.partition(".")
    if table not in _SCHEMA:
        guess = _closest(table, list(_SCHEMA))
        return ConfigError(f"{table}: unknown table" + (f" (did you mean [{guess}]?)" if guess else ""))
    # a misspelling within the table, then a common alias, then the same key in another
    # table (``[server] min_timeout_ms``), then a misspelling of a key in another table
    near = _closest(key, list(_SCHEMA[table]))
    guess = f"{table}.{near}" if near else _ALIASES.get(key)
    guess = guess or next((full for full in _ALL_KEYS if full.endswith("." + key)), None)
    if guess is None:
        elsewhere = {full.partition(".")[2]: full for full in _ALL_KEYS}
        near = _closest(key, list(elsewhere))
        guess = elsewhere[near] if near else None
    return ConfigError(f"{dotted}: unknown key" + (f" (did you mean {guess!r}?)" if guess else ""))


# --- loading --------------------------------------------------------------------------


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 ({error.reason})") from None
    except tomllib.TOMLDecodeError as error:
        # the message ends "(at line L, column C)"
        raise ConfigError(f"{path}: invalid TOML: {error}") from None


def _flatten(document: Mapping[str, Any]) -> dict[str, object]:
    """``{"server": {"id": 1}}`` -> ``{"server.id": 1}``, refusing unknown names."""
    flat: dict[str, object] = {}
    for table, body in document.items():
        if table not in _SCHEMA:
            raise _unknown_key(table)
        if not isinstance(body, dict):
            raise ConfigError(f"{table}: must be a table ([{table}]), got {_describe(body)}")
        for key, value in body.items():
            dotted = f"{table}.{key}"
            if key not in _SCHEMA[table]:
                raise _unknown_key(dotted)
            flat[dotted] = value
    return flat


def _from_override(dotted: str, value: object) -> object:
    """An override's value, with command-line strings for integer keys parsed."""
    table, dot, key = dotted.partition(".")
    if not dot:
        raise ConfigError(f"{dotted}: overrides take dotted keys (TABLE.KEY), such as 'server.listen'")
    spec = _SCHEMA.get(table, {}).get(key)
    if spec is None:
        raise _unknown_key(dotted)
    if spec.is_int and isinstance(value, str):
        text = value.strip().replace("_", "")
        if text.lstrip("+-").isascii() and text.lstrip("+-").isdigit():
            return int(text)
    return value


def load_config(path: Path | None = None, *, overrides: Mapping[str, object] | None = None) -> ServerConfig:
    """Build the server configuration from a TOML file and command-line overrides.

    Args:
        path: the TOML file, or None for defaults only.
        overrides: dotted TOML keys (``"server.listen"``, ``"sessions.max_timeout_ms"``)
            applied over the file. None values are skipped, so a CLI can pass every
            flag through; string values for integer keys are parsed as integers.

    Returns:
        The checked, complete configuration.

    Raises:
        ConfigError: the file is missing or not TOML, or a key is unknown, of the
            wrong type or out of range; the message names the file or key.
    """
    document = _read(Path(path)) if path is not None else {}
    flat = _flatten(document)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            flat[dotted] = _from_override(dotted, value)

    values: dict[str, object] = {}
    for dotted, value in flat.items():
        table, _, key = dotted.partition(".")
        values.update(_SCHEMA[table][key].check(dotted, value))

    tick_ms = values.get("tick_ms", _DEFAULTS.tick_ms)
    assert isinstance(tick_ms, int)
    has_min = "min_session_timeout_ms" in values
    has_max = "max_session_timeout_ms" in values
    minimum = values["min_session_timeout_ms"] if has_min else 2 * tick_ms
    maximum = values["max_session_timeout_ms"] if has_max else 20 * tick_ms
    assert isinstance(minimum, int) and isinstance(maximum, int)
    if minimum > maximum:
        if has_min and has_max:
            raise ConfigError(
                f"sessions.min_timeout_ms: must not exceed sessions.max_timeout_ms, got {minimum} > {maximum}"
            )
        # only one bound was written: the derived other one gives way
        minimum, maximum = (minimum, minimum) if has_min else (maximum, maximum)
    values["min_session_timeout_ms"] = minimum
    values["max_session_timeout_ms"] = maximum

    # One value must fit in one txn, with room for its path and fields.
    data_bytes_max = values.get("data_bytes_max", _DEFAULTS.data_bytes_max)
    txn_bytes_max = values.get("txn_bytes_max", _DEFAULTS.txn_bytes_max)
    assert isinstance(data_bytes_max, int) and isinstance(txn_bytes_max, int)
    if txn_bytes_max < data_bytes_max + FRAME_OVERHEAD_BYTES:
        key = "limits.txn_bytes_max" if "txn_bytes_max" in values else "limits.data_bytes_max"
        raise ConfigError(
            f"{key}: limits.txn_bytes_max ({txn_bytes_max}) must be at least limits.data_bytes_max "
            f"({data_bytes_max}) + {FRAME_OVERHEAD_BYTES} (a value must fit in one txn with its path)"
        )

    # an empty [ensemble] table counts as given (and so lacks its servers)
    if "ensemble" in document or any(dotted.startswith("ensemble.") for dotted in flat):
        ensemble = _build_ensemble(values)
        server_id = values.get("server_id", _DEFAULTS.server_id)
        assert isinstance(server_id, int)
        if server_id not in ensemble.servers:
            listed = ", ".join(str(voter) for voter in ensemble.voters)
            raise ConfigError(f"server.id: {server_id} is not in ensemble.servers ({listed})")
        if "listen_host" not in values:
            values["listen_host"], values["listen_port"] = ensemble.servers[server_id].client
        values["ensemble"] = ensemble
    return ServerConfig(**values)  # type: ignore[arg-type]


def _build_ensemble(values: dict[str, object]) -> EnsembleConfig:
    """Take the ``ensemble.*`` values out of ``values`` and build the EnsembleConfig."""
    servers = values.pop("ensemble_servers", None)
    if servers is None:
        raise ConfigError(
            "ensemble.servers: required in [ensemble] (ID = { peer = 'HOST:PORT', client = 'HOST:PORT' })"
        )
    assert isinstance(servers, dict)
    timing = {name: values.pop(f"ensemble_{name}") for name in _ENSEMBLE_TIMING if f"ensemble_{name}" in values}
    return EnsembleConfig(servers=servers, **timing)  # type: ignore[arg-type]


_ENSEMBLE_TIMING = ("tick_ms", "init_limit_ticks", "sync_limit_ticks")


def config_keys() -> list[str]:
    """Every dotted key a config file or override may set (for help and completion)."""
    return list(_ALL_KEYS)


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
