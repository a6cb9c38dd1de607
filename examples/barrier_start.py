"""A barrier-synchronised start: N processes begin their work together, and finish together.

Each copy enters the double barrier ``/examples/start`` and blocks until all
``--participants`` copies have entered; then all start at once. When done, each
leaves, and waits until every copy has finished (so, for instance, nobody tears
down shared state while another still uses it)::

    coord ensemble &                                  # in another terminal
    for i in 1 2 3; do python examples/barrier_start.py --participants 3 --id p$i & done

Prints ``entering``, ``started`` and ``finished`` lines with ``time.monotonic()``
stamps (comparable between processes of one machine).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import trio

import client
from recipes import DoubleBarrier


async def main(servers: str, participants: int, identifier: str, path: str) -> int:
    async with client.connect(servers) as zk:
        barrier = DoubleBarrier(zk, path, participants, identifier)
        print(f"entering: {identifier} {time.monotonic():.6f}", flush=True)
        await barrier.enter()
        print(f"started: {identifier} {time.monotonic():.6f}", flush=True)
        await trio.sleep(random.uniform(0.05, 0.3))  # the work, of uneven length
        await barrier.leave()
        print(f"finished: {identifier} {time.monotonic():.6f}", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("COORD_SERVERS", "127.0.0.1:2281"))
    parser.add_argument("--participants", type=int, default=3)
    parser.add_argument("--id", default=f"p{os.getpid()}")
    parser.add_argument("--path", default="/examples/start")
    arguments = parser.parse_args()
    sys.exit(trio.run(main, arguments.server, arguments.participants, arguments.id, arguments.path))
