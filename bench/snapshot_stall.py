"""How long a snapshot of a 100k-znode tree stalls the event loop.

The snapshot takes a shallow image on the trio thread, then serialises it in a
worker thread in chunks (so the GIL returns to the trio thread between chunks).
This measures the image time and the worst lateness of a 1 ms ticker meanwhile.

    .venv/bin/python -m bench.snapshot_stall [--nodes 100000]
"""

from __future__ import annotations

import argparse
import time

import trio

from coord.protocol import CreateMode
from coord.tree import DataTree
from coord.txn import CreateTxn, Txn


def build_tree(count: int) -> DataTree:
    tree = DataTree()
    tree.apply(
        Txn(zxid=1, time_ms=0, session_id=0, xid=0, body=CreateTxn(path="/n", data=b"", mode=CreateMode.PERSISTENT))
    )
    for index in range(count):
        body = CreateTxn(path=f"/n/{index:07d}", data=b"x" * 100, mode=CreateMode.PERSISTENT)
        tree.apply(Txn(zxid=index + 2, time_ms=0, session_id=0, xid=0, body=body))
    return tree


async def measure(tree: DataTree) -> dict[str, float]:
    worst = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            start = time.perf_counter()
            await trio.sleep(0.001)
            worst = max(worst, time.perf_counter() - start - 0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.sleep(0.05)
        start = time.perf_counter()
        image = tree.image()
        image_s = time.perf_counter() - start
        data = await trio.to_thread.run_sync(DataTree.serialize_image, image)
        total_s = time.perf_counter() - start
        done = True
    return {
        "image_ms": image_s * 1000,
        "snapshot_ms": total_s * 1000,
        "mb": len(data) / 1e6,
        "worst_stall_ms": worst * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=100_000)
    args = parser.parse_args()
    tree = build_tree(args.nodes)
    result = trio.run(measure, tree)
    print(
        f"{args.nodes} znodes: image() {result['image_ms']:.1f} ms on the trio thread, snapshot "
        f"{result['snapshot_ms']:.0f} ms in a worker ({result['mb']:.1f} MB), worst event-loop stall "
        f"{result['worst_stall_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
