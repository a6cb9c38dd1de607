"""What a client is told when its reconnect handshake is refused."""

from __future__ import annotations

from coord import errors, protocol
from coord.protocol import ConnectRequest
from tests.unit.test_pipeline import Harness, decode_frames


def test_a_wrong_password_is_refused_as_expired_saying_the_password_may_be_wrong() -> None:
    # ZooKeeper answers a wrong password as an expired session; so do we (the client
    # gives the session up either way), but the message must not claim it expired.
    h = Harness()
    session_id = h.connect(1)
    h.pipeline.open_connection(2, ConnectRequest(session_id=session_id, password=b"wrong"), h.now_ms)
    (reply,) = decode_frames(h.pipeline.take_output(), 2)
    code, message = protocol.decode_handshake_reply(reply)
    assert code == errors.SessionExpiredError.code
    assert message == f"session {session_id:#x} has expired or its password is wrong"
