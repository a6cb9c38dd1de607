"""Ending a session from outside, the way Curator's ``KillSession`` does.

A second connection presents the session's credentials (id and password): the server
moves the session to it (dropping the owner's connection), then this connection closes
the session. Its ephemerals go, and the owner learns on its next reconnect that the
session expired. It works on any server, in any process: a process ensemble expires
sessions this way (an in-process one asks its leader directly).
"""

from __future__ import annotations

import trio

from coord import protocol
from coord.config import Address, format_address
from coord.errors import SessionExpiredError
from coord.status import receive_item
from coord.testing.common import STATUS_ERRORS

CLOSE_TIMEOUT_S = 10.0
"""How long closing a session through one server may take."""
CLOSE_XID = 1


async def close_session(addresses: list[Address], session_id: int, password: bytes) -> None:
    """Close a session from a new connection that presents its credentials.

    The server binds the session to this connection (dropping the owner's), then
    commits a close: ephemerals go, and the owner learns on reconnect that the session
    expired. A session already gone counts as done.

    Raises:
        RuntimeError: no server in ``addresses`` would take the session.
    """
    failures: list[str] = []
    for address in addresses:
        try:
            with trio.fail_after(CLOSE_TIMEOUT_S):
                if await _close_session_at(address, session_id, password):
                    return
        except STATUS_ERRORS as error:
            failures.append(f"{format_address(address)}: {error!r}")
            continue
        return
    raise RuntimeError(f"could not close session {session_id:#x}: " + "; ".join(failures))


async def _close_session_at(address: Address, session_id: int, password: bytes) -> bool:
    """True once the session is closed (or was gone); raises OSError-like errors to try elsewhere."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        handshake = protocol.ConnectRequest(session_id=session_id, password=password, timeout_ms=10_000)
        await stream.send_all(protocol.encode_frame(handshake.to_wire()))
        reader = protocol.FrameReader(protocol.frame_bytes_max())
        answer = protocol.decode_handshake_reply(await receive_item(stream, reader))
        if isinstance(answer, tuple):
            code, message = answer
            if code == SessionExpiredError.code:
                return True
            raise protocol.ProtocolError(f"refused ({code}): {message}")
        request = protocol.encode_request(CLOSE_XID, protocol.CloseSessionRequest())
        await stream.send_all(protocol.encode_frame(request))
        while True:
            xid, _zxid, err, _result = protocol.decode_reply(await receive_item(stream, reader))
            if xid == CLOSE_XID:
                if err:
                    raise protocol.ProtocolError(f"close answered error {err}")
                return True


__all__ = ["close_session"]
