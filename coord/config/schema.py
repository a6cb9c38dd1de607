"""The configuration's keys: which exist, how each is checked, which fields it sets.

One table (:data:`_SCHEMA`) is the single list of what a file or an override may set,
so that loading, the unknown-key error with its nearest-name suggestion, and
:func:`config_keys` (help and completion) can never disagree about it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coord.config.ensemble_table import _check_servers
from coord.config.security_table import _check_client_auth, _check_file, _check_peers, check_secret_file
from coord.config.value_checks import (
    _LIMIT_TICKS_MAX,
    _SESSION_TIMEOUT_MS_MAX,
    _TICK_MS_MAX,
    ConfigError,
    _at_most,
    _check_data_bytes_max,
    _check_log_map_bytes,
    _check_path_bytes_max,
    _check_path_depth_max,
    _check_server_id,
    _check_snap_chunk_bytes,
    _check_txn_bytes_max,
    _closest,
    _positive,
    _string,
    parse_listen,
)


@dataclass(frozen=True, slots=True)
class _Key:
    """One TOML key: how to check its value and which ServerConfig fields it sets."""

    check: Callable[[str, object], dict[str, object]]
    is_int: bool = True  # a string override (from the command line) is parsed as an int


def _field(name: str, check: Callable[[str, object], object] = _positive) -> Callable[[str, object], dict[str, object]]:
    return lambda key, value: {name: check(key, value)}


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
        "snapshot_every_bytes": _Key(_field("snapshot_every_bytes")),
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
        "snap_chunk_bytes": _Key(_field("ensemble_snap_chunk_bytes", _check_snap_chunk_bytes)),
        "servers": _Key(_check_servers, is_int=False),
        "secret_file": _Key(check_secret_file, is_int=False),
    },
    "tls": {
        "cert_file": _Key(_check_file("tls_cert_file"), is_int=False),
        "key_file": _Key(_check_file("tls_key_file"), is_int=False),
        "ca_file": _Key(_check_file("tls_ca_file"), is_int=False),
        "client_auth": _Key(_check_client_auth, is_int=False),
        "peers": _Key(_check_peers, is_int=False),
    },
}

# names operators reach for that difflib would not connect to ours
_ALIASES = {name: "server.listen" for name in ("port", "host", "address", "bind", "client_port")}

_ALL_KEYS = [f"{table}.{key}" for table, keys in _SCHEMA.items() for key in keys]


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


def config_keys() -> list[str]:
    """Every dotted key a config file or override may set (for help and completion)."""
    return list(_ALL_KEYS)
