"""How often random seeds catch each deliberately broken variant (tests/sim/broken.py).

A simulator that catches a broken core only through a hand-written scenario misses a
whole class of interleavings; this measures the random side. For each variant it runs
seeds ``0 .. N-1`` with the variant on and counts a seed as a catch when it fails with
the variant *and passes without it* (the failure is the variant's, not another finding).

Running::

    python -m tests.sim.catch_rates                      # 300 seeds per variant
    python -m tests.sim.catch_rates --seeds 1000 --variant count_old_epoch_acks

The ZAB variants run in the ZAB simulator with the aggressive mix
(``SimOptions.from_seed(..., aggressive=True)``: faster faults, slower disks, and the
buggify crashes of an epoch change); the server variant runs in the whole-server
simulator with the CI mix. Steps per seed are those of the CI tests
(:data:`ZAB_STEPS`, tests/sim/test_server_sim.py's ``BROKEN_STEPS``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from tests.sim.broken import BROKEN_VARIANTS, EagerSyncCore
from tests.sim.servers import InvariantError as ServerInvariantError
from tests.sim.servers import LivenessError as ServerLivenessError
from tests.sim.servers import ServerSimOptions, run_server_seed
from tests.sim.sim import InvariantError, LivenessError, SimOptions, run_seed

ZAB_STEPS = {"ack_before_fsync": 1_000, "skip_trunc": 1_000, "count_old_epoch_acks": 3_000}
"""Steps per seed for each ZAB variant (count_old_epoch_acks needs longer runs: its
interleaving takes three failed epochs in a row)."""
SERVER_STEPS = 2_000


@dataclass(frozen=True, slots=True)
class CatchRate:
    variant: str
    seeds: int
    caught: list[int]
    other: list[int]  # failed with and without the variant
    seconds: float

    def __str__(self) -> str:
        first = self.caught[0] if self.caught else "-"
        return (
            f"{self.variant:22} {len(self.caught):4}/{self.seeds} ({100 * len(self.caught) / self.seeds:5.1f}%)  "
            f"first seed {first}  failing both ways {len(self.other)}  {self.seconds:.0f} s"
        )


def _fails(run: Callable[[], object], errors: tuple[type[BaseException], ...]) -> bool:
    try:
        run()
    except errors:
        return True
    return False


def zab_catch_rate(variant: str, seeds: int, servers: int = 3) -> CatchRate:
    steps = ZAB_STEPS[variant]
    errors = (InvariantError, LivenessError)
    caught, other = [], []
    started = time.monotonic()
    for seed in range(seeds):
        broken = SimOptions.from_seed(seed, servers=servers, aggressive=True, bugs=frozenset({variant}))
        if not _fails(partial(run_seed, broken, steps), errors):
            continue
        correct = SimOptions.from_seed(seed, servers=servers, aggressive=True)
        (other if _fails(partial(run_seed, correct, steps), errors) else caught).append(seed)
    return CatchRate(variant, seeds, caught, other, time.monotonic() - started)


def server_catch_rate(seeds: int) -> CatchRate:
    errors = (ServerInvariantError, ServerLivenessError)
    caught, other = [], []
    started = time.monotonic()
    for seed in range(seeds):
        options = ServerSimOptions.from_seed(seed, servers=3)
        if not _fails(partial(run_server_seed, options, SERVER_STEPS, EagerSyncCore), errors):
            continue
        (other if _fails(partial(run_server_seed, options, SERVER_STEPS), errors) else caught).append(seed)
    return CatchRate("eager_sync (server)", seeds, caught, other, time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=300)
    parser.add_argument("--variant", choices=[*sorted(BROKEN_VARIANTS), "eager_sync"], action="append")
    args = parser.parse_args()
    for variant in args.variant or [*sorted(BROKEN_VARIANTS), "eager_sync"]:
        rate = server_catch_rate(args.seeds) if variant == "eager_sync" else zab_catch_rate(variant, args.seeds)
        print(rate, flush=True)


if __name__ == "__main__":
    main()
