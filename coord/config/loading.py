"""Loading the configuration: read the TOML file, apply overrides, check, derive, build.

The order matters and lives in one place: the file first, then the command line's
overrides over it, then every key checked against :mod:`coord.config.schema`, then
what depends on several keys (session bounds from the tick, a value that must fit in
a txn, the ensemble and this server's place in it), and only then the frozen
:class:`~coord.config.settings.ServerConfig`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coord.config.ensemble_table import _build_ensemble
from coord.config.schema import _SCHEMA, _unknown_key
from coord.config.security_table import build_tls
from coord.config.settings import ServerConfig
from coord.config.value_checks import ConfigError, _describe
from coord.protocol import FRAME_OVERHEAD_BYTES

_DEFAULTS = ServerConfig()  # slotted dataclasses keep no defaults on the class


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

    if "tls" in document or any(dotted.startswith("tls.") for dotted in flat):
        values["tls"] = build_tls(values)

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
