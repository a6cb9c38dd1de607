"""Errors the client adds to the shared hierarchy of :mod:`coord.errors`."""

from __future__ import annotations

from coord.errors import SessionExpiredError


class ConnectionClosedError(SessionExpiredError):
    """The client was closed, so its session is over (kazoo's name for it).

    A subclass of :class:`~coord.errors.SessionExpiredError`: code that handles the
    loss of a session handles a closed client the same way.
    """


__all__ = ["ConnectionClosedError"]
