"""The simulator's fake network: one FIFO link per ordered pair of servers.

A link behaves like the TCP connection the shell keeps to a peer:

- messages arrive in the order they were sent, each after a random delay (a message
  never overtakes an earlier one on the same link);
- a link can *break*: the messages in flight are lost, and new ones are dropped until
  it comes back up. As docs/architecture.md warns, a message from before the break may still turn
  up after the reconnect (the old connection's reader had it buffered): each message
  in flight at a break survives with a small probability and is delivered late, out of
  order with the new connection's messages;
- a *block* (a partition, symmetric or one-way) drops everything sent across it.

The network does not own the clock or the event queue; the simulator asks it where a
message should go (:meth:`Network.send`) and whether a delivery is still valid
(:meth:`Network.take`).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from coord.zab.types import Envelope


class InFlight:
    """One message on its way. ``state`` is ``"live"``, ``"stale"`` (survived a break) or ``"lost"``."""

    __slots__ = ("due", "envelope", "generation", "incarnation", "sent_at", "state")

    def __init__(self, envelope: Envelope, generation: int, sent_at: int, incarnation: int) -> None:
        self.envelope = envelope
        self.generation = generation
        self.state = "live"
        self.sent_at = sent_at
        # The target's incarnation when sent: a message never reaches a restarted process.
        self.incarnation = incarnation
        self.due = sent_at  # when its delivery event is scheduled (kept by the simulator)


@dataclass(slots=True)
class Link:
    """The connection from ``source`` to ``target``."""

    source: int
    target: int
    generation: int = 0
    up: bool = True
    last_arrival: int = 0  # FIFO: no message on this link arrives before this time
    in_flight: deque[InFlight] = field(default_factory=deque)


class Network:
    """All links of an ensemble plus the partition state. See the module docstring."""

    def __init__(self, servers: list[int]) -> None:
        self.links: dict[tuple[int, int], Link] = {
            (a, b): Link(source=a, target=b) for a in servers for b in servers if a != b
        }
        self.blocked: set[tuple[int, int]] = set()

    def send(self, envelope: Envelope, now: int, delay: int, incarnation: int) -> InFlight | None:
        """Put a message on its link; returns it with its arrival time set, or None if dropped."""
        link = self.links.get((envelope.source, envelope.target))
        if link is None or not link.up or (envelope.source, envelope.target) in self.blocked:
            return None
        message = InFlight(envelope, link.generation, now, incarnation)
        link.last_arrival = max(now + delay, link.last_arrival)
        link.in_flight.append(message)
        return message

    def arrival(self, message: InFlight) -> int:
        """When ``message`` (just sent) arrives."""
        return self.links[(message.envelope.source, message.envelope.target)].last_arrival

    def take(self, message: InFlight) -> bool:
        """A delivery event fired: whether the message still arrives."""
        if message.state == "lost":
            return False
        if message.state == "stale":
            return True
        link = self.links[(message.envelope.source, message.envelope.target)]
        if link.in_flight and link.in_flight[0] is message:
            link.in_flight.popleft()
        else:  # pragma: no cover - FIFO is kept by construction
            raise AssertionError(f"link {link.source}->{link.target} delivered out of order")
        return message.generation == link.generation

    def front(self, message: InFlight) -> InFlight:
        """The oldest live message on ``message``'s link (``message`` itself unless one waits before it)."""
        link = self.links[(message.envelope.source, message.envelope.target)]
        assert message in link.in_flight, "a live message is always on its link"
        return link.in_flight[0]

    def break_link(self, source: int, target: int, rng: random.Random, stale_prob: float) -> list[InFlight]:
        """Break a link: bump its generation, lose its messages in flight.

        Returns:
            The messages that survive as stale (the caller schedules them after the reconnect).
        """
        link = self.links[(source, target)]
        link.generation += 1
        link.up = False
        survivors = []
        while link.in_flight:
            message = link.in_flight.popleft()
            if stale_prob and rng.random() < stale_prob:
                message.state = "stale"
                survivors.append(message)
            else:
                message.state = "lost"
        return survivors

    def restore_link(self, source: int, target: int) -> None:
        """The connection is re-established (messages flow again unless blocked)."""
        self.links[(source, target)].up = True

    def is_up(self, source: int, target: int) -> bool:
        """Whether a message sent now from ``source`` to ``target`` would travel."""
        return self.links[(source, target)].up and (source, target) not in self.blocked
