"""What the request pipeline is configured with and what it hands its shell.

These are the types of the boundary between the pure pipeline
(:class:`coord.pipeline.Pipeline`) and the trio shell that feeds it: its limits
(:class:`PipelineConfig`), its role (:class:`Mode`) and what it produced for the shell
to carry out (:class:`PipelineOutput`). They live apart from the pipeline so that the
parts it is built from (:mod:`coord.connections`) can use them without importing it;
:mod:`coord.pipeline` re-exports them, and that is the way in for everyone else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from coord import protocol
from coord.prepare import PATH_BYTES_MAX_DEFAULT, PATH_DEPTH_MAX_DEFAULT, TXN_BYTES_MAX_DEFAULT
from coord.txn import Txn


class Mode(enum.Enum):
    """What this server does with writes."""

    LEADER = "leader"  # prepares and proposes them
    FOLLOWER = "follower"  # forwards them to the leader
    OFFLINE = "offline"  # no established leader: serves nobody


@dataclass(slots=True)
class PipelineOutput:
    """What the pipeline produced since the last :meth:`Pipeline.take_output`."""

    frames: list[tuple[int, bytes]] = field(default_factory=list)
    proposals: list[Txn] = field(default_factory=list)
    close: list[int] = field(default_factory=list)
    to_leader: list[bytes] = field(default_factory=list)  # follower: forwarded requests, touches, syncs
    to_followers: list[tuple[int, bytes]] = field(default_factory=list)  # leader: (server id, sync answer)
    barriers: list[tuple[int, int, int]] = field(default_factory=list)  # leader: (origin server, session, xid)
    abort: list[int] = field(default_factory=list)  # connections to close now, dropping what is unsent
    bad_peers: list[int] = field(default_factory=list)  # servers that sent a malformed message: drop their link
    resume: list[int] = field(default_factory=list)  # paused connections to read again


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineConfig:
    server_id: int = 1
    tick_ms: int = 1000
    min_session_timeout_ms: int = 2000
    max_session_timeout_ms: int = 20000
    data_bytes_max: int = protocol.DATA_BYTES_MAX_DEFAULT
    txn_bytes_max: int = TXN_BYTES_MAX_DEFAULT
    path_bytes_max: int = PATH_BYTES_MAX_DEFAULT
    path_depth_max: int = PATH_DEPTH_MAX_DEFAULT
    connection_outstanding_max: int = 1000
    connection_inflight_bytes_max: int = 4 << 20
    connection_outbox_bytes_max: int = 1 << 20
    outbox_bytes_total_max: int = 256 << 20
    connection_stall_ms: int = 30_000

    @property
    def outbox_abort_bytes(self) -> int:
        """Unsent bytes past which a connection is aborted: its bound plus one largest reply."""
        return self.connection_outbox_bytes_max + protocol.frame_bytes_max(self.data_bytes_max)
