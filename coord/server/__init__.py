"""One server: the sans-IO :mod:`~coord.server.core` and its trio :mod:`~coord.server.shell`.

``from coord.server import open_server, serve, Server`` is the way in.
"""

from coord.server.core import CoreOutput, ServerCore
from coord.server.shell import (
    HANDSHAKE_TIMEOUT_S,
    OPTIMIZED_REFUSAL,
    RECEIVE_BYTES,
    STANDALONE_TICK_MS,
    Server,
    open_server,
    serve,
)

__all__ = [
    "HANDSHAKE_TIMEOUT_S",
    "OPTIMIZED_REFUSAL",
    "RECEIVE_BYTES",
    "STANDALONE_TICK_MS",
    "CoreOutput",
    "Server",
    "ServerCore",
    "open_server",
    "serve",
]
