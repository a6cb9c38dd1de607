"""The error hierarchy shared by the server and the client.

Every error coord raises on purpose derives from :class:`CoordError` and carries
ZooKeeper's numeric code, so a code that crosses the wire maps back to exactly one
class (:func:`error_for_code`). The families tell the caller what to do next:

- :class:`ApiError`: the ensemble answered no; the same call gets the same answer.
- :class:`CoordSystemError` subclasses (connection loss, timeouts, ...): the reply never
  came or the system could not serve; retrying an idempotent call may succeed.
- :class:`SessionExpiredError`: the session is over; its ephemerals and watches are gone.

Codes below -400 are coord's own (ZooKeeper has no code for them); everything else
uses ZooKeeper's number so that operators can read logs with ZooKeeper's tables.

This module imports nothing from the rest of the server: the client imports it.
"""

from __future__ import annotations

from typing import ClassVar


class CoordError(Exception):
    """Base of every error coord raises on purpose."""

    code: ClassVar[int] = -1


# --- system errors: something went wrong that was not the caller's request -----


class CoordSystemError(CoordError):
    """The system could not serve the call; an idempotent retry may succeed."""

    code = -1


class RuntimeInconsistencyError(CoordSystemError):
    """In a failed multi: this op was not executed because an earlier op failed."""

    code = -2


class DataInconsistencyError(CoordSystemError):
    """The server found its own data inconsistent."""

    code = -3


class ConnectionLossError(CoordSystemError):
    """The reply never came. The operation may or may not have happened."""

    code = -4


class MarshallingError(CoordSystemError):
    """A frame could not be encoded or decoded."""

    code = -5


class UnimplementedError(CoordSystemError):
    """The server does not know this operation."""

    code = -6


class OperationTimeoutError(CoordSystemError):
    """The operation did not complete in time. It may or may not have happened."""

    code = -7


class BadArgumentsError(CoordSystemError):
    """The request is malformed: an invalid path, a bad flag, data too large, ..."""

    code = -8


class UnknownSessionError(CoordSystemError):
    """The server does not know this session."""

    code = -12


# --- API errors: the ensemble answered no -----------------------------------------


class ApiError(CoordError):
    """The ensemble answered no. The same call will get the same answer."""

    code = -100


class NoNodeError(ApiError):
    """The node does not exist (or, for create, its parent does not)."""

    code = -101


class NoAuthError(ApiError):
    """Not authorised for this operation."""

    code = -102


class BadVersionError(ApiError):
    """The node's version is not the one the call expected."""

    code = -103


class NoChildrenForEphemeralsError(ApiError):
    """Ephemeral nodes cannot have children."""

    code = -108


class NodeExistsError(ApiError):
    """The node already exists."""

    code = -110


class NotEmptyError(ApiError):
    """The node has children, so it cannot be deleted."""

    code = -111


class SessionExpiredError(CoordError):
    """The session is over; its ephemeral nodes and watches are gone."""

    code = -112


class InvalidCallbackError(ApiError):
    """Invalid callback."""

    code = -113


class InvalidACLError(ApiError):
    """Invalid ACL."""

    code = -114


class AuthFailedError(ApiError):
    """Authentication failed."""

    code = -115


class SessionMovedError(ApiError):
    """The session moved to another server; this connection is stale."""

    code = -118


class NotReadOnlyError(ApiError):
    """A write on a read-only server."""

    code = -119


class NoWatcherError(ApiError):
    """remove_watches found no such watch."""

    code = -121


class RequestTimeoutError(CoordSystemError):
    """The request was not served within the server's limit."""

    code = -122


class QuotaExceededError(ApiError):
    """A quota was exceeded."""

    code = -125


class ThrottledOpError(CoordSystemError):
    """The server is overloaded and refused the operation; retry later."""

    code = -127


class RolledBackError(ApiError):
    """In a failed multi: this op succeeded on its own but was rolled back."""

    code = 0


# --- coord's own codes --------------------------------------------------------------


class StorageFullError(CoordSystemError):
    """The server's disk or log map is full: the write was not made.

    Nothing acknowledged is lost; reads keep working. An operator must free space
    (or raise the map size) before writes succeed again.
    """

    code = -401


class StorageError(CoordSystemError):
    """The server could not make the write durable (an I/O error): it was not made."""

    code = -402


class NotLeaderError(CoordSystemError):
    """This server cannot order writes right now (no leader / not the leader)."""

    code = -403


class ServerBehindError(CoordSystemError):
    """The server has seen less than the client already has; try another server."""

    code = -404


_BY_CODE: dict[int, type[CoordError]] = {}


def _register() -> None:
    stack: list[type[CoordError]] = [CoordError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        # the most specific class owns a code; base families share theirs with none
        if cls.__subclasses__() and cls.code in _BY_CODE:
            continue
        _BY_CODE.setdefault(cls.code, cls)
    # families whose code is also a leaf's stay reachable through the family itself
    _BY_CODE[-1] = CoordSystemError
    _BY_CODE[-100] = ApiError


_register()


def error_for_code(code: int) -> type[CoordError]:
    """Map a wire error code to its exception class (unknown codes: CoordSystemError)."""
    return _BY_CODE.get(code, CoordSystemError)


def make_error(code: int, message: str = "") -> CoordError:
    """Build the exception for a wire code, with the server's message if any."""
    cls = error_for_code(code)
    if not message and cls.__doc__:
        message = cls.__doc__.splitlines()[0]
    return cls(message)


_ERROR_NAMES = [
    name for name, value in list(globals().items()) if isinstance(value, type) and issubclass(value, CoordError)
]
__all__ = [*_ERROR_NAMES, "error_for_code", "make_error"]
