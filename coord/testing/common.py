"""What the test ensemble's modules share: the loopback host, timeouts, status requests."""

from __future__ import annotations

from typing import Any, Protocol

import trio

from coord import protocol
from coord.config import Address
from coord.status import request_status

HOST = "127.0.0.1"
STATUS_TIMEOUT_S = 1.0
"""How long one status request may take (a paused server never answers)."""

SERVER_ROLES = ("leader", "standalone")
"""The roles of a server that leads an established epoch."""

STATUS_ERRORS = (
    OSError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    protocol.ProtocolError,
)
"""What asking a server that is down, starting, stopping or paused may raise."""


class HasClientId(Protocol):
    """Anything with kazoo's ``client_id``: ``(session_id, password)`` (a ``client.Client``)."""

    @property
    def client_id(self) -> tuple[int, bytes]: ...


SessionTarget = int | tuple[int, bytes] | HasClientId
"""What :meth:`Ensemble.expire_session <coord.testing.Ensemble.expire_session>` takes: a
session id (in-process only), a ``(session_id, password)`` pair, or a client."""


async def fetch_status(address: Address) -> dict[str, Any]:
    """A server's status (a JSON-like map), asked over its client port within :data:`STATUS_TIMEOUT_S`.

    Raises:
        One of :data:`STATUS_ERRORS`.
    """
    with trio.fail_after(STATUS_TIMEOUT_S):
        return await request_status(address)


__all__ = [
    "HOST",
    "SERVER_ROLES",
    "STATUS_ERRORS",
    "STATUS_TIMEOUT_S",
    "Address",
    "HasClientId",
    "SessionTarget",
    "fetch_status",
]
