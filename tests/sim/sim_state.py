"""The state of what the whole-server simulator simulates: servers, client connections, clients.

Plain data (:class:`SimServer`, :class:`Conn`, :class:`Pending`, :class:`Client`), kept
apart from the code that changes it because every part of the simulator reads it: the
server shell (:mod:`tests.sim.server_shell`), the clients (:mod:`tests.sim.sim_clients`),
the faults (:mod:`tests.sim.server_faults`) and the failure reports
(:mod:`tests.sim.servers`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from coord.pipeline import Mode
from coord.protocol import Request
from coord.server.core import ServerCore
from coord.tree import DataTree
from tests.sim.server_checks import Stint
from tests.sim.server_disk import TreeDisk


@dataclass(slots=True, eq=False)
class SimServer:
    """One simulated server: its disk (outlives crashes), its clock, its running core."""

    id: int
    disk: TreeDisk
    zab_period: int
    session_period: int
    disk_max: int
    core: ServerCore | None = None
    incarnation: int = 0
    offset: int = 0  # local clock = global time + offset
    jump_indices: list[int] = field(default_factory=lambda: [0])  # global numbers of this server's clock jumps
    offset_values: list[int] = field(default_factory=lambda: [0])  # its offset after each
    flush_scheduled: bool = False
    stalled_until: int = 0  # its disk writes nothing before this (an fsync stall)
    snapshot_busy: bool = False
    conns: dict[int, Conn] = field(default_factory=dict)
    seen_tree: DataTree | None = None
    seen_zxid: int = -1
    stint: Stint | None = None
    roles_seen: int = 0  # len(core.role_changes) when last observed
    mode: Mode = Mode.OFFLINE
    leader_since: tuple[int, int, int] = (0, 0, 0)  # (time, order, clock jumps) its pipeline became leader

    @property
    def is_up(self) -> bool:
        return self.core is not None


@dataclass(slots=True, eq=False)
class Conn:
    """A client connection: two FIFO byte streams and who still holds which end."""

    id: int
    client: Client
    sid: int
    incarnation: int
    opened_at: int
    answered: bool = False  # the client got the handshake answer
    server_open: bool = False  # the server's core has it (open_client called, not closed since)
    closing: bool = False  # the server asked to close it once its frames are sent
    s2c_cut: bool = False  # frames to the client are lost from now on
    c2s_cut: bool = False
    s2c_last: int = 0
    c2s_last: int = 0
    inbound: deque[tuple[int, Request, int]] = field(default_factory=deque)


@dataclass(slots=True)
class Pending:
    """A request sent and not answered yet."""

    xid: int
    request: Request
    what: str
    required: int | None = None  # synced_get: the zxid the read must reach; setwatches: the relative zxid
    then: Request | None = None  # sync: the get to send once it is answered


@dataclass(slots=True, eq=False)
class Client:
    """A simulated client: one session at a time, one connection at a time."""

    id: int
    requested_timeout: int
    session_id: int = 0
    password: bytes = b""
    timeout: int = 0
    last_zxid: int = 0  # the newest zxid seen in a reply or event
    conn: Conn | None = None
    xid: int = 0
    pending: deque[Pending] = field(default_factory=deque)
    watches: dict[str, dict[str, int]] = field(default_factory=dict)  # path -> kind -> registration zxid
    replaying: bool = False  # a SetWatches is in flight: events before its reply are replays
    versions: dict[str, int] = field(default_factory=dict)
    ephemerals: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)  # the last children of /q seen
    last_sent: int = 0
    last_heard: int = 0
    next_op_at: int = 0
    silent_until: int = 0
    wake_at: int = -1
    wake_token: int = 0
    counter: int = 0
    prefer: int | None = None  # the server to connect to next (None: any)
    script: deque[Request] = field(default_factory=deque)  # scripted ops instead of random ones
    acked: list[int] = field(default_factory=list)  # zxids of this client's acknowledged writes
    sessions: int = 0
    hint: str | None = None  # another client told it of a write to this path: sync, then read it
    write_share: float = 0.5  # the share of its operations that write
