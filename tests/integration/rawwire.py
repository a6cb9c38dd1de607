"""A bare-bones wire client for tests that must send what no real client would."""

from __future__ import annotations

from typing import Any

import trio

from coord import protocol


class RawConnection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = protocol.FrameReader(protocol.frame_bytes_max() * 4)

    @classmethod
    async def open(cls, address: tuple[str, int]) -> RawConnection:
        return cls(await trio.open_tcp_stream(*address))

    async def send(self, item: Any) -> None:
        await self.stream.send_all(protocol.encode_frame(item))

    async def send_bytes(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self) -> Any | None:
        """The next item, or None once the server closed the connection."""
        while True:
            for body in self.reader:
                return protocol.decode_body(body)
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            self.reader.feed(data)

    async def handshake(self, **fields: Any) -> protocol.ConnectResponse:
        await self.send(protocol.ConnectRequest(**fields).to_wire())
        reply = protocol.decode_handshake_reply(await self.receive())
        assert isinstance(reply, protocol.ConnectResponse), reply
        return reply

    async def call(self, xid: int, request: protocol.Request) -> list[Any]:
        await self.send(protocol.encode_request(xid, request))
        while True:
            reply = await self.receive()
            assert reply is not None, "the server closed the connection"
            if reply[0] != protocol.WATCH_XID:
                return reply

    async def aclose(self) -> None:
        await self.stream.aclose()
