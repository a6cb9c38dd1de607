"""What clients that never read cost a server: its RSS with N of them connected.

Starts one ``coord serve`` process (default limits), writes a znode of ``--value-kib``,
then opens ``--clients`` raw connections. Each sends its handshake, then pipelines
``--gets`` gets of that znode and never reads a byte. The server must hold their reads
(docs/limits.md) instead of queueing the replies; this prints its RSS before, at the
peak while they are connected, and per slow client, and the server's own count of
unsent reply bytes. ``--stall-ms`` sets the server's ``connection_stall_ms`` (the
slow clients are closed after it; the measurement ends before).

    .venv/bin/python -m bench.slow_clients [--clients 1000] [--gets 200] [--value-kib 1024]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

import client
from bench._process import free_loopback_port, is_listening, stop_process
from coord import protocol
from coord.protocol import GetDataRequest
from coord.status import request_status


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def slow_client(address: tuple[str, int], gets: bytes, opened: list[trio.SocketStream]) -> None:
    stream = await trio.open_tcp_stream(*address)
    opened.append(stream)
    await stream.send_all(protocol.encode_frame(protocol.ConnectRequest(timeout_ms=60_000).to_wire()))
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(gets)  # blocks once the server stops reading us: that is the point


async def measure(args: argparse.Namespace, pid: int, port: int) -> dict[str, float]:
    address = ("127.0.0.1", port)
    connect = f"127.0.0.1:{port}"
    async with client.connect(connect) as zk:
        await zk.create("/big", b"x" * (args.value_kib * 1024))
        before = rss_mib(pid)
        gets = b"".join(
            protocol.encode_frame(protocol.encode_request(xid, GetDataRequest(path="/big")))
            for xid in range(1, args.gets + 1)
        )
        opened: list[trio.SocketStream] = []
        peak = before
        unsent = 0
        async with trio.open_nursery() as nursery:
            for _ in range(args.clients):
                nursery.start_soon(slow_client, address, gets, opened)
            deadline = trio.current_time() + args.seconds
            while trio.current_time() < deadline:
                await trio.sleep(0.25)  # sampling interval of the measurement
                peak = max(peak, rss_mib(pid))
                status = await request_status(address)
                unsent = max(unsent, int(status.get("unsent_bytes", 0)))
            # one well-behaved request still gets its answer
            started = time.perf_counter()
            await zk.get("/big")
            served_s = time.perf_counter() - started
            nursery.cancel_scope.cancel()
        for stream in opened:
            with contextlib.suppress(Exception):
                await stream.aclose()
    return {
        "rss_before_mib": before,
        "rss_peak_mib": peak,
        "per_client_kib": (peak - before) * 1024 / max(1, args.clients),
        "unsent_peak_mib": unsent / (1 << 20),
        "good_get_s": served_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--gets", type=int, default=200)
    parser.add_argument("--value-kib", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to sample (keep below --stall-ms)")
    parser.add_argument("--stall-ms", type=int, default=60_000)
    args = parser.parse_args()
    port = free_loopback_port()
    with tempfile.TemporaryDirectory(prefix="coord-slow-clients-") as tmp:
        config = Path(tmp) / "coord.toml"
        config.write_text(
            f'[server]\ndata_dir = "{tmp}/data"\nlisten = "127.0.0.1:{port}"\nmax_connections = {args.clients + 100}\n'
            f"[limits]\nconnection_stall_ms = {args.stall_ms}\n"
        )
        log = (Path(tmp) / "server.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "coord.cli", "serve", "--config", str(config)], stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 30
            while not is_listening(port) and time.monotonic() < deadline:
                time.sleep(0.05)  # polling for the server's port, bounded by the deadline
            result = trio.run(measure, args, process.pid, port)
        finally:
            stop_process(process, signals=(2, 15, 9))
            log.close()
    print(
        f"{args.clients} clients x {args.gets} unread gets of {args.value_kib} KiB: "
        f"server RSS {result['rss_before_mib']:.0f} -> peak {result['rss_peak_mib']:.0f} MiB "
        f"({result['per_client_kib']:.0f} KiB per slow client), peak unsent replies "
        f"{result['unsent_peak_mib']:.1f} MiB, a good client's get took {result['good_get_s'] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
