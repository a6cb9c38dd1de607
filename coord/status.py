"""Session-less exchanges with a server's client port: its status, and reading raw replies.

``coord status`` (:mod:`coord.cli.commands`) and the test ensemble (:mod:`coord.testing`)
ask servers for their status this way: one :class:`~coord.protocol.StatusRequest` frame
instead of a handshake, one CBOR map back (what :meth:`coord.server.Server.status`
returns), then the server closes the connection. No session is opened.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from coord import protocol
from coord.config import Address

RECEIVE_BYTES = 65536


async def request_status(
    address: Address, *, open_stream: Callable[[str, int], Awaitable[Any]] = trio.open_tcp_stream
) -> dict[str, Any]:
    """Ask the server at ``address`` (``(host, port)``) for its status.

    ``open_stream`` reaches it (TCP by default; the CLI passes a TLS opener).

    Raises:
        OSError: it cannot be reached.
        CoordError: the TLS opener's refusal.
        ProtocolError: it closed the connection or answered something else than a map.
    """
    stream: trio.abc.Stream = await open_stream(*address)
    async with stream:
        await stream.send_all(protocol.encode_frame(protocol.StatusRequest().to_wire()))
        status = await receive_item(stream, protocol.FrameReader(protocol.frame_bytes_max()))
        if not isinstance(status, dict):
            raise protocol.ProtocolError("bad status reply")
        return status


async def receive_item(stream: trio.abc.ReceiveStream, reader: protocol.FrameReader) -> Any:
    """The next frame's CBOR item (``Any``: whatever the server sent), read through ``reader``.

    Raises:
        ProtocolError: the server closed the connection first, or sent a bad frame.
    """
    while True:
        for body in reader:
            return protocol.decode_body(body)
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            raise protocol.ProtocolError("the server closed the connection")
        reader.feed(data)


__all__ = ["receive_item", "request_status"]
