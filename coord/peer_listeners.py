"""Peer listeners bound before the transports start, so an ensemble can run on ephemeral ports.

Every server must know every other's peer address before any of them starts, which
port 0 does not allow: the port is known only once bound. So tests bind the listeners
first with :func:`bind_peer_listeners`, build ``peers`` from their addresses, and hand
each listener to its transport's :meth:`~coord.transport.PeerTransport.serve`
(``listener=``)::

    listeners = await bind_peer_listeners(3)
    peers = {server_id: listener_address(listener) for server_id, listener in listeners.items()}
    transports = {server_id: PeerTransport(server_id=server_id, peers=peers, ensemble_id=digest)
                  for server_id in peers}
    for server_id, transport in transports.items():
        await nursery.start(partial(transport.serve, listener=listeners[server_id]))
"""

from __future__ import annotations

import trio

from coord.config import Address


async def bind_peer_listeners(count: int, *, host: str = "127.0.0.1") -> dict[int, trio.SocketListener]:
    """Bind ``count`` listeners on ephemeral ports, for servers ``1..count`` (tests).

    Every server must know every other's peer address before any starts; binding
    first lets tests use port 0. Pass each to :meth:`PeerTransport.serve` as
    ``listener=``, with ``peers`` built by :func:`listener_address`.
    """
    listeners: dict[int, trio.SocketListener] = {}
    try:
        for server_id in range(1, count + 1):
            listeners[server_id] = (await trio.open_tcp_listeners(0, host=host))[0]
    except BaseException:
        for listener in listeners.values():
            await trio.aclose_forcefully(listener)
        raise
    return listeners


def listener_address(listener: trio.SocketListener) -> Address:
    """The ``(host, port)`` a listener is bound to."""
    host, port = listener.socket.getsockname()[:2]
    return host, port


__all__ = ["bind_peer_listeners", "listener_address"]
