"""A service watching its configuration znode, and applying every new version.

The service reads ``/examples/config`` and then follows it with a
:class:`recipes.DataWatch` (an async iterator: the current value first, then the value
after every change). It keeps running across server failures (the client reconnects
and re-arms the watch, and changes made meanwhile are not missed)::

    coord ensemble &                                  # in another terminal
    python examples/config_watch.py &
    coord set /examples/config '{"workers": 4}'       # or coord create ... the first time

Prints ``config: VALUE`` for each version (``config: <absent>`` while there is no
node); with ``--until VALUE`` it exits once the configuration is ``VALUE``.
"""

from __future__ import annotations

import argparse
import os
import sys

import trio

import client
from recipes import DataWatch


async def main(servers: str, path: str, until: str | None) -> int:
    async with client.connect(servers) as zk:
        async for data, stat in DataWatch(zk, path):
            if data is None or stat is None:
                print("config: <absent>", flush=True)
                continue
            value = data.decode()
            print(f"config: {value} (version {stat.version})", flush=True)
            if value == until:
                break
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("COORD_SERVERS", "127.0.0.1:2281"))
    parser.add_argument("--path", default="/examples/config")
    parser.add_argument("--until", default=None, help="exit once the configuration has this value")
    arguments = parser.parse_args()
    sys.exit(trio.run(main, arguments.server, arguments.path, arguments.until))
