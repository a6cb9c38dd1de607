"""What every layer of the whole-server simulator shares: the clock, the event queue, the random source, the trace.

:class:`~tests.sim.servers.ServerSimulation` is one object built in layers, each a
subclass of the one below and each in its own module (the list is in the docstring of
:mod:`tests.sim.servers`). It is one object because every layer reads and moves the same
clock, schedules on the same queue, draws from the same ``random.Random(seed)`` in one
order (which is what makes a seed replay) and appends to the same trace.
:class:`SimulationBase` is the bottom layer: it declares that shared state (set up by
``ServerSimulation.__init__``) and the plumbing every layer uses.
"""

from __future__ import annotations

import bisect
import heapq
import random
from typing import Any

from coord.protocol import WATCH_XID
from coord.server.core import ServerCore
from coord.zab import PeerConfig, decode_message
from tests.sim.network import Network
from tests.sim.server_checks import ServerChecker
from tests.sim.server_options import ServerSimOptions
from tests.sim.sim_state import Client, SimServer
from tests.sim.trace import format_message, zxid_str

TICK_MS = 100  # the ZAB tick (PeerConfig limits are in ticks)
SESSION_TICK_MS = 100  # the pipeline's tick_ms and the session ticker's period
STALE_LATE_MS = 300  # the latest a message that survived a break or crash arrives after it

# Event kinds.
PEER, ZTICK, STICK, FLUSH, SNAP_START, SNAP_WRITE, C2S, S2C, RESET, WAKE, FAULT, RESTART, LINK_UP, HEAL = range(14)
HANDSHAKE = "hs"
EOF = "eof"


class SimulationBase:
    """The state every layer shares, and the plumbing they use; see the module docstring."""

    # Set up by ServerSimulation.__init__ (which has the comments on what they mean).
    options: ServerSimOptions
    core_class: type[ServerCore]
    known_findings: frozenset[str]
    rng: random.Random
    ids: list[int]
    now: int
    _seq: int
    _events: list[tuple[int, int, int, Any]]
    _trace: list[tuple[int, str, tuple[Any, ...]]]
    network: Network
    servers: dict[int, SimServer]
    clients: list[Client]
    checker: ServerChecker
    losses: dict[tuple[int, int], list[int]]
    heard: dict[tuple[int, int], int]
    clients_working: bool
    conn_ids: int
    jumps: int
    _partition: int
    links_down_until: dict[tuple[int, int], int]

    # --- plumbing --------------------------------------------------------------------------

    def _schedule(self, delay: int, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (self.now + max(0, delay), self._seq, kind, payload))

    def _at(self, time: int, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (time, self._seq, kind, payload))

    def _exp(self, mean: int) -> int:
        return 1 + int(self.rng.expovariate(1 / mean))

    def note(self, kind: str, *args: Any) -> None:
        self._trace.append((self.now, kind, args))

    def local(self, server: SimServer) -> int:
        return self.now + server.offset

    def _lost(self, source: int, target: int) -> None:
        times = self.losses.get((source, target))
        if times is None:
            self.losses[(source, target)] = [self.now]
        elif times[-1] != self.now:
            times.append(self.now)

    def lost_between(self, source: int, target: int, start: int, end: int) -> bool:
        """Whether a message from ``source`` to ``target`` was lost in [start, end]."""
        times = self.losses.get((source, target))
        if not times:
            return False
        index = bisect.bisect_left(times, start)
        return index < len(times) and times[index] <= end

    def clock_offset_at(self, sid: int, jumps: int) -> int:
        """Server ``sid``'s clock offset once the first ``jumps`` clock jumps (of any server) happened."""
        server = self.servers[sid]
        return server.offset_values[bisect.bisect_right(server.jump_indices, jumps) - 1]

    @property
    def trace(self) -> list[str]:
        return [_format(time, kind, args) for time, kind, args in self._trace]

    def trace_tail(self, lines: int = 60) -> list[str]:
        return [_format(time, kind, args) for time, kind, args in self._trace[-lines:]]

    def peer_config(self, sid: int) -> PeerConfig:
        return PeerConfig(
            server_id=sid,
            voters=tuple(self.ids),
            init_limit_ticks=self.options.init_limit_ticks,
            sync_limit_ticks=self.options.sync_limit_ticks,
            snap_chunk_bytes=self.options.snap_chunk_bytes,
            snap_window_chunks=self.options.snap_window_chunks,
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _format(time: int, kind: str, args: tuple[Any, ...]) -> str:
    """One trace line (formatted only when read)."""
    match kind:
        case "recv":
            source, target, data = args
            try:
                message = format_message(decode_message(data))
            except ValueError:
                message = f"<{len(data)} undecodable bytes>"
            return f"{time:>7} s{target} <- s{source} {message}"
        case "send":
            cid, sid, xid, request = args
            return f"{time:>7} c{cid} -> s{sid} #{xid} {_short(request)}"
        case "recv_c":
            cid, conn, xid, zxid, err, result = args
            what = "event" if xid == WATCH_XID else f"#{xid}"
            return f"{time:>7} c{cid} <- conn{conn} {what} zxid={zxid_str(zxid)} err={err} {_short(result)}"
        case "recv_hs":
            cid, conn, text = args
            return f"{time:>7} c{cid} <- conn{conn} handshake: {text}"
        case "conn":
            cid, sid, conn, text = args
            return f"{time:>7} c{cid} conn{conn} s{sid}: {text}"
        case "tree":
            sid, zxid = args
            return f"{time:>7} s{sid} tree at {zxid_str(zxid)}"
        case "durable":
            sid, seq, count = args
            return f"{time:>7} s{sid} durable through seq {seq} ({count} records)"
        case "role":
            sid, role, epoch = args
            return f"{time:>7} s{sid} is {role} (epoch {epoch})"
        case _:
            return f"{time:>7} {kind}: " + " ".join(str(arg) for arg in args)
