"""Client-side checks of arguments, so a bad call fails before anything is sent."""

from __future__ import annotations

import re
from typing import Any, Final

from coord.errors import BadArgumentsError
from coord.protocol import CreateMode, validate_path

# Printable ASCII components other than "." and "..": what nearly every path looks
# like. A match is valid by validate_path's rules; anything else goes to validate_path
# itself (which knows the full rules and words the error).
_SIMPLE_PATH: Final = re.compile(r"/|(?:/(?!\.\.?(?:/|\Z))[\x20-\x2e\x30-\x7e]+)+")
_simple_match: Final = _SIMPLE_PATH.fullmatch

_MODES: Final = {
    (False, False): int(CreateMode.PERSISTENT),
    (True, False): int(CreateMode.EPHEMERAL),
    (False, True): int(CreateMode.PERSISTENT_SEQUENTIAL),
    (True, True): int(CreateMode.EPHEMERAL_SEQUENTIAL),
}


def check_path(path: Any, *, sequential: bool = False) -> str:
    """Return ``path`` if it is a valid znode path (``sequential``: may end in ``/``).

    Raises:
        BadArgumentsError: naming what is wrong.
    """
    if type(path) is str and _simple_match(path) is not None:
        return path
    return validate_path(path, sequential=sequential)


def check_value(value: Any, data_bytes_max: int, path: str) -> bytes:
    """Return ``value`` if it is bytes no longer than ``data_bytes_max``.

    Raises:
        BadArgumentsError: not bytes, or too long.
    """
    if type(value) is not bytes and not isinstance(value, bytes):
        raise BadArgumentsError(f"value for {path} must be bytes, not {type(value).__name__}")
    if len(value) > data_bytes_max:
        raise BadArgumentsError(f"value for {path} is {len(value)} bytes, over the limit of {data_bytes_max}")
    return value


def check_version(version: Any, path: str) -> int:
    """Return ``version`` if it is an int (-1 means any version).

    Raises:
        BadArgumentsError: not an int.
    """
    if type(version) is not int:
        raise BadArgumentsError(f"version for {path} must be an int, not {type(version).__name__}")
    return version


def create_mode(*, ephemeral: bool, sequence: bool, container: bool, ttl: int, path: str) -> int:
    """The wire create mode for kazoo-style flags.

    Raises:
        BadArgumentsError: a combination ZooKeeper does not have (an ephemeral or
            sequential container, an ephemeral with a TTL, a negative TTL).
    """
    if not container and not ttl:
        return _MODES[bool(ephemeral), bool(sequence)]
    if type(ttl) is not int or ttl < 0:
        raise BadArgumentsError(f"ttl for {path} must be a non-negative int (milliseconds)")
    if container:
        if ephemeral or sequence or ttl:
            raise BadArgumentsError(f"a container cannot be ephemeral, sequential or have a ttl: {path}")
        return int(CreateMode.CONTAINER)
    if ephemeral:
        raise BadArgumentsError(f"an ephemeral node cannot have a ttl: {path}")
    return int(CreateMode.PERSISTENT_SEQUENTIAL_WITH_TTL if sequence else CreateMode.PERSISTENT_WITH_TTL)


__all__ = ["check_path", "check_value", "check_version", "create_mode"]
