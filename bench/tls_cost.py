"""What TLS on the client port costs: the same workload against plain and TLS ``coord serve``.

Usage (from the repository root)::

    .venv/bin/python -m bench.tls_cost                 # 3 rounds, medians
    .venv/bin/python -m bench.tls_cost --ops 500 --rounds 1

For each round and each mode a fresh standalone ``coord serve`` (fsync on, loopback,
temp data dir) runs three phases with our trio client: sequential creates, sequential
gets, and gets with 64 outstanding. The TLS server gets a certificate from a throwaway
CA made with ``openssl`` (as the README's recipe does), the client verifies it. It
prints ops/s per phase and mode and the ratio TLS/plain (no speed is asserted anywhere:
this is a measurement, reported in the notes).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import client
from bench._process import free_loopback_port, is_listening, stop_process
from bench.coord_server import find_coord

_RECIPE = """
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
    -keyout ca.key -out ca.pem
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=bench" -keyout server.key -out server.csr
printf 'subjectAltName = IP:127.0.0.1\\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem
"""


def make_certificates(directory: Path) -> None:
    subprocess.run(["sh", "-ec", _RECIPE], cwd=directory, check=True, capture_output=True)


async def phases(address: str, ops: int, context: object) -> dict[str, float]:
    kwargs = {"ssl_context": context} if context is not None else {}
    results: dict[str, float] = {}
    async with client.connect(address, **kwargs) as zk:  # type: ignore[arg-type]
        started = time.perf_counter()
        for index in range(ops):
            await zk.create(f"/n{index:06d}", b"x" * 100)
        results["sequential creates"] = ops / (time.perf_counter() - started)
        started = time.perf_counter()
        for index in range(ops):
            await zk.get(f"/n{index:06d}")
        results["sequential gets"] = ops / (time.perf_counter() - started)
        many = ops * 10
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while next_index < many:
                index = next_index
                next_index += 1
                await zk.get(f"/n{index % ops:06d}")

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(64):
                nursery.start_soon(worker)
        results["gets, 64 outstanding"] = many / (time.perf_counter() - started)
    return results


def run_round(mode: str, ops: int, work: Path) -> dict[str, float]:
    port = free_loopback_port()
    config = work / f"{mode}.toml"
    text = f'[server]\ndata_dir = "{work / mode}"\nlisten = "127.0.0.1:{port}"\n'
    if mode == "tls":
        text += f'[tls]\ncert_file = "{work / "server.pem"}"\nkey_file = "{work / "server.key"}"\n'
    config.write_text(text)
    process = subprocess.Popen(
        [find_coord(), "serve", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while not is_listening(port):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"coord serve ({mode}) did not start")
            time.sleep(0.05)
        context = client.client_context(work / "ca.pem") if mode == "tls" else None
        return trio.run(phases, f"127.0.0.1:{port}", ops, context)
    finally:
        stop_process(process, signals=(signal.SIGINT, signal.SIGTERM), timeout=5.0)
        shutil.rmtree(work / mode, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ops", type=int, default=2000, help="creates (and gets) per sequential phase")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="coord-tls-cost-") as temp:
        work = Path(temp)
        make_certificates(work)
        runs: dict[str, list[dict[str, float]]] = {"plain": [], "tls": []}
        for _ in range(args.rounds):
            for mode in ("plain", "tls"):
                runs[mode].append(run_round(mode, args.ops, work))
    print(f"{'phase':24} | {'plain, ops/s':>12} | {'TLS, ops/s':>12} | TLS/plain")
    for phase in runs["plain"][0]:
        plain = statistics.median(run[phase] for run in runs["plain"])
        tls = statistics.median(run[phase] for run in runs["tls"])
        print(f"{phase:24} | {plain:12,.0f} | {tls:12,.0f} | {tls / plain:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
