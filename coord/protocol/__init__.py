"""The wire protocol: frames, handshake, requests, replies and watch events.

This package is the service's contract with its clients. It is pure (no I/O) and
imports nothing of the server except :mod:`coord.errors` and :mod:`coord.cbor`; the
client imports it. Everything is re-exported here, so ``from coord.protocol import
X`` is the way in; the submodules say where each part lives:

- :mod:`~coord.protocol.framing`: frames and their size limits;
- :mod:`~coord.protocol.handshake`: the first frame each way;
- :mod:`~coord.protocol.requests`: request objects and their wire arrays;
- :mod:`~coord.protocol.replies`: replies and pushed watch events;
- :mod:`~coord.protocol.types`: op codes, modes, event types and :class:`Stat`;
- :mod:`~coord.protocol.paths`: znode path rules;
- :mod:`~coord.protocol.shapes`: :class:`ProtocolError` and the value checks.

Framing
    Every frame is a 4-byte big-endian length followed by exactly one CBOR item.
    The length is checked against the limit *before* the body is read
    (:class:`FrameReader`), each frame is decoded on its own, CBOR tags are refused
    (no datetimes, bignums or anything else a hostile peer could smuggle in),
    trailing bytes after the item are refused, and the item's shape is then
    validated strictly. Any violation raises :class:`ProtocolError`.

Handshake (maps, because they are rare and must be readable)
    client -> ``{"type": "connect", "protocol": 1, "last_zxid": Z, "session_id": S,
    "password": b"..", "timeout_ms": T}`` (session_id 0 and an empty password ask
    for a new session), or ``{"type": "status"}`` / ``{"type": "backup"}`` for the admin
    status and backup commands (docs/protocol.md).
    server -> ``{"protocol": 1, "session_id": S, "password": b"..", "timeout_ms": T,
    "zxid": Z, "server_id": N}`` or ``{"error": code, "message": ".."}`` and close.

Requests and replies (arrays, because they are the hot path)
    request: ``[xid, op, *fields]`` with fields per :class:`Op` (see ``_decode_op``
    in :mod:`coord.protocol.requests`; every op, field and result: docs/protocol.md).
    reply:   ``[xid, zxid, err, result]`` where ``zxid`` is the server's last applied
    zxid after the op, ``err`` is 0 or an error code of :mod:`coord.errors` and
    ``result`` is the op's result (or a message string when ``err`` is not 0).
    event:   ``[WATCH_XID, zxid, 0, [event_type, path]]``, pushed by the server.

Why not ZooKeeper's jute encoding: CBOR is self-describing, has a fast C codec in
cbor2, and lets us validate shapes strictly; the op and error numbers are
ZooKeeper's so that its documentation still applies.
"""

from coord.protocol.framing import DATA_BYTES_MAX_DEFAULT as DATA_BYTES_MAX_DEFAULT
from coord.protocol.framing import FRAME_OVERHEAD_BYTES as FRAME_OVERHEAD_BYTES
from coord.protocol.framing import HEADER as HEADER
from coord.protocol.framing import FrameReader as FrameReader
from coord.protocol.framing import decode_body as decode_body
from coord.protocol.framing import encode_frame as encode_frame
from coord.protocol.framing import frame_bytes_max as frame_bytes_max
from coord.protocol.handshake import PROTOCOL_VERSION as PROTOCOL_VERSION
from coord.protocol.handshake import ConnectRequest as ConnectRequest
from coord.protocol.handshake import ConnectResponse as ConnectResponse
from coord.protocol.handshake import StatusRequest as StatusRequest
from coord.protocol.handshake import decode_handshake as decode_handshake
from coord.protocol.handshake import decode_handshake_reply as decode_handshake_reply
from coord.protocol.handshake import handshake_error as handshake_error
from coord.protocol.paths import RESERVED_PATH as RESERVED_PATH
from coord.protocol.paths import basename as basename
from coord.protocol.paths import is_reserved as is_reserved
from coord.protocol.paths import join as join
from coord.protocol.paths import parent_of as parent_of
from coord.protocol.paths import validate_path as validate_path
from coord.protocol.replies import WATCH_XID as WATCH_XID
from coord.protocol.replies import WatchEvent as WatchEvent
from coord.protocol.replies import decode_event as decode_event
from coord.protocol.replies import decode_reply as decode_reply
from coord.protocol.replies import encode_event as encode_event
from coord.protocol.replies import encode_reply as encode_reply
from coord.protocol.requests import WRITE_OPS as WRITE_OPS
from coord.protocol.requests import AddWatchRequest as AddWatchRequest
from coord.protocol.requests import CheckRequest as CheckRequest
from coord.protocol.requests import CloseSessionRequest as CloseSessionRequest
from coord.protocol.requests import CreateRequest as CreateRequest
from coord.protocol.requests import DeleteRequest as DeleteRequest
from coord.protocol.requests import ExistsRequest as ExistsRequest
from coord.protocol.requests import GetChildrenRequest as GetChildrenRequest
from coord.protocol.requests import GetDataRequest as GetDataRequest
from coord.protocol.requests import MultiOp as MultiOp
from coord.protocol.requests import MultiRequest as MultiRequest
from coord.protocol.requests import PingRequest as PingRequest
from coord.protocol.requests import RemoveWatchesRequest as RemoveWatchesRequest
from coord.protocol.requests import Request as Request
from coord.protocol.requests import SetDataRequest as SetDataRequest
from coord.protocol.requests import SetWatchesRequest as SetWatchesRequest
from coord.protocol.requests import SyncRequest as SyncRequest
from coord.protocol.requests import decode_request as decode_request
from coord.protocol.requests import encode_request as encode_request
from coord.protocol.requests import op_of as op_of
from coord.protocol.shapes import ProtocolError as ProtocolError
from coord.protocol.types import AddWatchMode as AddWatchMode
from coord.protocol.types import CreateMode as CreateMode
from coord.protocol.types import EventType as EventType
from coord.protocol.types import Op as Op
from coord.protocol.types import Stat as Stat
from coord.protocol.types import WatcherType as WatcherType

__all__ = [
    "DATA_BYTES_MAX_DEFAULT",
    "PROTOCOL_VERSION",
    "RESERVED_PATH",
    "WATCH_XID",
    "WRITE_OPS",
    "AddWatchMode",
    "AddWatchRequest",
    "CheckRequest",
    "CloseSessionRequest",
    "ConnectRequest",
    "ConnectResponse",
    "CreateMode",
    "CreateRequest",
    "DeleteRequest",
    "EventType",
    "ExistsRequest",
    "FrameReader",
    "GetChildrenRequest",
    "GetDataRequest",
    "MultiOp",
    "MultiRequest",
    "Op",
    "PingRequest",
    "ProtocolError",
    "RemoveWatchesRequest",
    "Request",
    "SetDataRequest",
    "SetWatchesRequest",
    "Stat",
    "StatusRequest",
    "SyncRequest",
    "WatchEvent",
    "WatcherType",
    "decode_body",
    "decode_event",
    "decode_handshake",
    "decode_handshake_reply",
    "decode_reply",
    "decode_request",
    "encode_event",
    "encode_frame",
    "encode_reply",
    "encode_request",
    "frame_bytes_max",
    "handshake_error",
    "basename",
    "is_reserved",
    "join",
    "parent_of",
    "validate_path",
]
