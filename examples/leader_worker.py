"""A leader-elected worker: of all the copies running, exactly one works.

Every copy campaigns in the election ``/examples/leader``. The one elected does the
work (here: counting jobs in ``/examples/leader/jobs``, stamped with its fencing
token) until it has done ``--jobs`` of them (0: forever), then steps down so the next
copy takes over. If it loses its session, its block is cancelled and it stops
working at once (``LeadershipLostError``); if it dies, the next copy is elected when
its session expires::

    coord ensemble &                                  # in another terminal
    python examples/leader_worker.py --id a &
    python examples/leader_worker.py --id b           # waits; kill a, and b takes over

Prints ``elected: ID (token T)``, one line per job, and ``resigned: ID``.
"""

from __future__ import annotations

import argparse
import os
import sys

import trio

import client
from recipes import Counter, LeaderElection, LeadershipLostError

ELECTION = "/examples/leader/election"


async def main(servers: str, identifier: str, jobs: int, session_timeout: float) -> int:
    async with client.connect(servers, session_timeout=session_timeout) as zk:
        election = LeaderElection(zk, ELECTION, identifier)
        counter = Counter(zk, "/examples/leader/jobs")
        print(f"campaigning: {identifier} (leader now: {await election.leader()})", flush=True)
        try:
            async with election.campaign():
                print(f"elected: {identifier} (token {election.token})", flush=True)
                done = 0
                while jobs == 0 or done < jobs:
                    total = await counter.add(1)
                    done += 1
                    print(f"{identifier}: job {total} (token {election.token})", flush=True)
                    await trio.sleep(0.1)
        except LeadershipLostError as error:
            print(f"lost leadership: {identifier}: {error}", flush=True)
            return 1
        print(f"resigned: {identifier}", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("COORD_SERVERS", "127.0.0.1:2281"))
    parser.add_argument("--id", default=f"worker-{os.getpid()}")
    parser.add_argument("--jobs", type=int, default=0, help="step down after this many jobs (0: never)")
    parser.add_argument("--session-timeout", type=float, default=10.0)
    arguments = parser.parse_args()
    sys.exit(trio.run(main, arguments.server, arguments.id, arguments.jobs, arguments.session_timeout))
