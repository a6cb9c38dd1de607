"""What a znode path is: ZooKeeper's rules for a valid path, and path arithmetic.

Both ends check paths with the same rules: the client to fail early with a clear
message, the server because its input is untrusted. The helpers that take a path
apart (:func:`parent_of`, :func:`basename`, :func:`join`) assume a path that
:func:`validate_path` accepted.
"""

from __future__ import annotations

from typing import Final

from coord.errors import BadArgumentsError

RESERVED_PATH: Final = "/coord"
"""The subtree the service keeps for its own metadata; clients may read, not write."""


def _bad_char(ch: str) -> bool:
    code = ord(ch)
    return (
        code == 0
        or 0x01 <= code <= 0x1F
        or 0x7F <= code <= 0x9F
        or 0xD800 <= code <= 0xF8FF
        or 0xFFF0 <= code <= 0xFFFF
    )


def validate_path(path: object, *, sequential: bool = False) -> str:
    """Check a znode path by ZooKeeper's rules and return it.

    Absolute, no trailing slash (except ``/``), no empty, ``.`` or ``..`` component,
    no control or non-character code points. A sequential create may end in ``/``
    (the server appends the counter), as in ZooKeeper.

    Raises:
        BadArgumentsError: with a message naming what is wrong.
    """
    if not isinstance(path, str):
        raise BadArgumentsError(f"path must be a string, not {type(path).__name__}")
    check = path + "1" if sequential else path
    if not check:
        raise BadArgumentsError("path must not be empty")
    if check[0] != "/":
        raise BadArgumentsError(f"path must start with '/': {path!r}")
    if len(check) == 1:
        return path
    if check[-1] == "/":
        raise BadArgumentsError(f"path must not end with '/': {path!r}")
    for component in check[1:].split("/"):
        if component == "":
            raise BadArgumentsError(f"empty component in path {path!r}")
        if component in (".", ".."):
            raise BadArgumentsError(f"relative component {component!r} in path {path!r}")
    for ch in check:
        if _bad_char(ch):
            raise BadArgumentsError(f"invalid character {ch!r} in path {path!r}")
    return path


def parent_of(path: str) -> str:
    """The parent path (``/`` for a top-level node). ``path`` must be valid, not ``/``."""
    index = path.rfind("/")
    return path[:index] if index > 0 else "/"


def basename(path: str) -> str:
    return path[path.rfind("/") + 1 :]


def join(parent: str, child: str) -> str:
    return parent + child if parent == "/" else parent + "/" + child


def is_reserved(path: str) -> bool:
    """Whether ``path`` is in the service's reserved subtree."""
    return path == RESERVED_PATH or path.startswith(RESERVED_PATH + "/")
