"""Checks of single configuration values, and the one error type they raise.

A bad value must stop the server with one message that names the key at fault and the
value given (``server.tick_ms: must be a positive integer, got 'abc'``). Each check
here takes the dotted key with the value so that it can say so; the bounds sit next
to the checks that enforce them. :mod:`coord.config.schema` says which key uses which.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable

from coord.protocol import FRAME_OVERHEAD_BYTES


class ConfigError(Exception):
    """The configuration is unusable; the message names the key (or file) at fault."""


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


# A SNAP streams in chunks: small enough to stay far below the peer frame limit (64 MiB)
# and to interleave with the broadcast, large enough not to be all header.
_SNAP_CHUNK_BYTES_MIN = 1 << 10
_SNAP_CHUNK_BYTES_MAX = 16 << 20


def _check_snap_chunk_bytes(key: str, value: object) -> int:
    return _integer(
        key,
        value,
        low=_SNAP_CHUNK_BYTES_MIN,
        high=_SNAP_CHUNK_BYTES_MAX,
        what=f"an integer in {_SNAP_CHUNK_BYTES_MIN}..{_SNAP_CHUNK_BYTES_MAX} (1 KiB..16 MiB)",
    )


def _string(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a non-empty string, got {_describe(value)}")
    return value


def _check_server_id(key: str, value: object) -> int:
    return _integer(key, value, low=1, high=_SERVER_ID_MAX, what=f"an integer in 1..{_SERVER_ID_MAX}")


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


def _closest(name: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return close[0] if close else None
