"""The ``[ensemble]`` table: every server's peer and client address, checked and built.

An ensemble's membership decides what a quorum is, so a mistake in it must be caught
at start, naming the entry at fault: an id that is not a plain 1..255, a member
without both addresses, an address given twice, a peer port of 0. This is the one
table whose value is itself a table of tables, so its checks live here rather than
among the single-value ones (:mod:`coord.config.value_checks`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from coord.config.settings import Address, EnsembleConfig, EnsembleMember, format_address
from coord.config.value_checks import _SERVER_ID_MAX, ConfigError, _closest, _describe, _string, parse_listen

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


_ENSEMBLE_TIMING = ("tick_ms", "init_limit_ticks", "sync_limit_ticks", "snap_chunk_bytes", "secret_file")
