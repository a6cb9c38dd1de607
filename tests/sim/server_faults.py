"""The faults the whole-server simulator injects: :class:`FaultInjection`.

Crashes (of one server, or of all at once) and restarts, partitions (both ways or one
way), link breaks, disk stalls, clock jumps, dropped client connections, and clients
that go silent until their session expires. A seed switches whole kinds on
(``ServerSimOptions.faults``, :mod:`tests.sim.server_options`); each ``FAULT`` event
picks one of them; :meth:`~tests.sim.servers.ServerSimulation.heal_and_settle` ends
them all. Kept together so that everything the simulator does to an ensemble is in one
place.
"""

from __future__ import annotations

from tests.sim.server_options import EVENT_FAULTS
from tests.sim.server_sim_base import HEAL, LINK_UP, RESTART, STALE_LATE_MS, STICK, ZTICK
from tests.sim.sim_clients import ClientActions


class FaultInjection(ClientActions):
    """The faults: see the module docstring."""

    # --- crashes and restarts ---------------------------------------------------------------------

    def crash(self, sid: int, *, keep: int | None = None) -> None:
        server = self.servers[sid]
        if server.core is None:
            return
        pending = len(server.disk.pending)
        if keep is None:
            keep = self.rng.randint(0, pending) if pending and self.rng.random() < self.options.crash_keep_prob else 0
        server.core = None
        server.disk.crash(keep)
        self._drain_disk_problems()
        self.note("note", f"s{sid} CRASH (kept {keep} of {pending} queued writes)")
        if server.stint is not None:
            server.stint.end = self.now
            server.stint = None
        for conn in server.conns.values():
            conn.s2c_cut = conn.c2s_cut = True
            conn.server_open = False
            self._reset_client(conn)
        server.conns.clear()
        for other in self.ids:
            if other != sid:
                self._lost(sid, other)
                self._lost(other, sid)
                for message in self.network.break_link(sid, other, self.rng, self.options.stale_prob):
                    self._push_delivery(message, self.now + self.rng.randint(1, STALE_LATE_MS))
                self.network.break_link(other, sid, self.rng, 0.0)
        self._schedule(self.rng.randint(50, 2_000), RESTART, sid)

    def restart(self, sid: int) -> None:
        if not self.servers[sid].is_up:
            self._start(self.servers[sid])
            server = self.servers[sid]
            self._schedule(self.rng.randrange(1, server.zab_period), ZTICK, (sid, server.incarnation))
            self._schedule(self.rng.randrange(1, server.session_period), STICK, (sid, server.incarnation))

    # --- links and partitions ---------------------------------------------------------------------

    def _link_down(self, a: int, b: int) -> None:
        """Tell both ends that the link between ``a`` and ``b`` closed."""
        for me, other in ((a, b), (b, a)):
            server = self.servers[me]
            if server.core is not None:
                server.core.peer_link_down(other, self.local(server))
                self._after(server)

    def break_link(self, source: int, target: int, *, down_for: int) -> None:
        self.note("note", f"link s{source}->s{target} BREAK for {down_for}")
        self._lost(source, target)
        for message in self.network.break_link(source, target, self.rng, self.options.stale_prob):
            self._push_delivery(message, self.now + down_for + self.rng.randint(1, STALE_LATE_MS - 150))
        self.links_down_until[(source, target)] = self.now + down_for
        self._schedule(down_for, LINK_UP, (source, target))

    def partition(self, pairs: set[tuple[int, int]], text: str) -> None:
        self._partition += 1
        self.network.blocked = set(pairs)
        self.note("note", text)
        for source, target in sorted(pairs):
            self._lost(source, target)
            self.network.break_link(source, target, self.rng, 0.0)
            if self.servers[source].is_up and self.servers[target].is_up:
                self.network.restore_link(source, target)

    def heal(self) -> None:
        self._partition += 1
        self.network.blocked = set()
        self.note("note", "HEAL")

    # --- fault events ------------------------------------------------------------------------------

    def _fault(self) -> bool:
        kinds = [kind for kind in EVENT_FAULTS if kind in self.options.faults]
        kind = self.rng.choice(kinds)
        rng = self.rng
        up = [sid for sid in self.ids if self.servers[sid].is_up]
        if kind == "disk_delays":
            if not up:
                return False
            server = self.servers[rng.choice(up)]
            stall = rng.randint(20, 400)
            server.stalled_until = self.now + stall
            self.note("note", f"s{server.id} DISK STALL for {stall} ms")
        elif kind == "crashes":
            if not up or len(self.ids) - len(up) >= self.options.max_down:
                return False
            self.crash(rng.choice(up))
        elif kind == "crash_all":
            if rng.random() > 0.15 or not up:
                return False
            self.note("note", "POWER FAILURE")
            for sid in up:
                self.crash(sid)
        elif kind == "partitions":
            if rng.random() < self.options.one_way_prob:
                pairs = set()
                for _ in range(rng.randint(1, len(self.ids))):
                    a, b = rng.sample(self.ids, 2)
                    pairs.add((a, b))
                text = "ONE-WAY " + " ".join(f"s{a}-/->s{b}" for a, b in sorted(pairs))
            else:
                shuffled = self.ids[:]
                rng.shuffle(shuffled)
                cut = rng.randint(1, len(shuffled) - 1)
                side_a, side_b = sorted(shuffled[:cut]), sorted(shuffled[cut:])
                pairs = {(a, b) for a in side_a for b in side_b} | {(b, a) for a in side_a for b in side_b}
                text = f"PARTITION {side_a} | {side_b}"
            self.partition(pairs, text)
            self._schedule(rng.randint(100, 3_000), HEAL, self._partition)
        elif kind == "link_breaks":
            a, b = rng.sample(self.ids, 2)
            down_for = rng.randint(1, 150)
            self.break_link(a, b, down_for=down_for)
            self.break_link(b, a, down_for=down_for)
            self._link_down(a, b)
        elif kind == "clock_jumps":
            if not up:
                return False
            server = self.servers[rng.choice(up)]
            jump = rng.randint(100, 1_500)
            server.offset += jump
            self.jumps += 1
            server.jump_indices.append(self.jumps)
            server.offset_values.append(server.offset)
            self.note("note", f"s{server.id} CLOCK JUMP +{jump} ms")
            core = server.core
            assert core is not None
            for _ in range(rng.randint(1, 3)):
                core.zab_tick(self.local(server))
                self._after(server)
            core.session_tick(self.local(server))
            self._after(server)
        elif kind == "client_disconnects":
            connected = [client for client in self.clients if client.conn is not None]
            if not connected:
                return False
            client = rng.choice(connected)
            self._client_hang_up(client, "DISCONNECT (fault)")
        elif kind == "session_expiry":
            candidates = [c for c in self.clients if c.session_id and c.silent_until <= self.now]
            if not candidates:
                return False
            client = rng.choice(candidates)
            silence = int(client.timeout * rng.uniform(1.2, 2.5))
            client.silent_until = self.now + silence
            self.note("note", f"c{client.id} goes SILENT for {silence} ms (timeout {client.timeout})")
            self._client_next_wake(client)
        return True
