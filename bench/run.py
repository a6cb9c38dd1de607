"""Side-by-side benchmark: coord against ZooKeeper 3.8 on this machine, same workload, same client process.

Usage (from the repository root)::

    make bench                          # or:
    .venv/bin/python -m bench.run       # or: .venv/bin/python bench/run.py
    .venv/bin/python -m bench.run --ops 2000 --seconds 10 --systems coord
    .venv/bin/python -m bench.run --rounds 3     # fresh servers each round; the table shows medians
    .venv/bin/python -m bench.run --ensemble     # 3-server ensembles instead (same as --servers 3)

It starts a throwaway standalone ZooKeeper (skipped, with a message, if it is not installed:
``apt-get install zookeeper``) and runs the phases of :mod:`bench.load` against it with kazoo;
then starts a throwaway standalone ``coord serve`` subprocess and runs the same phases with
our trio client. Both servers listen on 127.0.0.1 only, keep their data in temp dirs that are
deleted afterwards, and fsync before acknowledging a write. It prints one table
(phase | ZooKeeper (kazoo) | coord | ratio coord/ZK) and writes the full results as JSON to
``bench/results/`` (git-ignored).

With ``--ensemble`` (or ``--servers N``, N > 1) both sides are replicated ensembles instead:
N ZooKeeper JVMs (:func:`bench.zk_server.run_zookeeper_ensemble`) and N ``coord serve``
processes (:func:`bench.coord_server.run_coord_ensemble`), started fresh for each round and
each system, with the client given every server's address (it picks one at random, as a user's
client would: the report says whether that was the leader or a follower, since writes through a
follower take one more hop). The phases, the table and the checks are the same.

Exit status: 0 if every system that is installed was measured without errors (including the
check afterwards that the acknowledged creates are all there), 1 otherwise, 130 on Ctrl-C or
SIGTERM (servers are stopped and temp dirs removed in every case).
"""

from __future__ import annotations

import argparse
import datetime
import enum
import functools
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/run.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from bench import load
from bench._process import log_tail
from bench.coord_server import CoordNotAvailableError, CoordStartError, run_coord, run_coord_ensemble
from bench.load import PhaseResult
from bench.zk_server import (
    ZooKeeperNotInstalledError,
    ZooKeeperStartError,
    four_letter_word,
    run_zookeeper,
    run_zookeeper_ensemble,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent
ZOOKEEPER = "zookeeper"
COORD = "coord"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = load.Workload()
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=defaults.ops_per_phase, help="operations per phase")
    parser.add_argument("--seconds", type=float, default=defaults.seconds_per_phase, help="time bound per phase")
    parser.add_argument("--value-bytes", type=int, default=defaults.value_bytes, help="size of each znode value")
    parser.add_argument("--warmup", type=int, default=defaults.warmup_ops, help="unreported warm-up operations")
    parser.add_argument(
        "--systems",
        default=f"{ZOOKEEPER},{COORD}",
        help=f"comma-separated subset of {ZOOKEEPER},{COORD} to measure",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat everything; the table shows the median (noisy machines)"
    )
    parser.add_argument(
        "--servers",
        type=int,
        default=1,
        help="servers per system: 1 = standalone (default), N > 1 = N-server ensembles",
    )
    parser.add_argument("--ensemble", action="store_true", help="3-server ensembles (short for --servers 3)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="directory for the JSON report")
    args = parser.parse_args(argv)
    if args.ensemble:
        if args.servers not in (1, 3):
            parser.error("--ensemble means --servers 3; give one or the other")
        args.servers = 3
    if not 1 <= args.servers <= 9:
        parser.error("--servers must be between 1 and 9")
    args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = set(args.systems) - {ZOOKEEPER, COORD}
    if unknown:
        parser.error(f"unknown system(s) {sorted(unknown)}; choose from {ZOOKEEPER}, {COORD}")
    if args.ops <= 0 or args.rounds <= 0 or args.seconds <= 0 or args.value_bytes < 0 or args.warmup < 0:
        parser.error("--ops, --rounds and --seconds must be positive, --value-bytes and --warmup not negative")
    return args


def _command_output(command: list[str], *, cwd: Path | None = None) -> str | None:
    """First line of a command's output (stdout, else stderr), or None if it cannot run."""
    try:
        done = subprocess.run(command, capture_output=True, timeout=10, check=False, cwd=cwd, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stdout or done.stderr).decode(errors="replace").strip().splitlines()
    return lines[0] if done.returncode == 0 and lines else None


def _describe(error: BaseException) -> str:
    """``Type: message`` of an error, looking inside exception groups (trio wraps errors in them)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}"


def _zookeeper_stats(host: str, port: int) -> dict[str, str]:
    """ZooKeeper's own counters after the run (``mntr``): server-side latencies, packets, znodes."""
    keep = ("zk_avg_latency", "zk_max_latency", "zk_min_latency", "zk_packets_received", "zk_znode_count")
    try:
        text = four_letter_word(host, port, "mntr")
    except OSError:
        return {}
    pairs = (line.split("\t", 1) for line in text.splitlines() if "\t" in line)
    return {key: value for key, value in pairs if key in keep}


class _Outcome(enum.Enum):
    MEASURED = "measured"
    SKIPPED = "skipped"  # not installed: not a failure
    FAILED = "failed"


def _measure_zookeeper(workload: load.Workload, report: dict[str, Any]) -> tuple[_Outcome, list[PhaseResult]]:
    """Start ZooKeeper, run the phases with kazoo, stop it. Notes a skip or failure in ``report``."""
    try:
        import kazoo  # noqa: F401  (only checking that it is installed)
    except ImportError:
        report["notes"][ZOOKEEPER] = "skipped: kazoo is not installed (pip install -e '.[bench]')"
        return _Outcome.SKIPPED, []
    try:
        with run_zookeeper() as server:
            print(f"ZooKeeper {server.version} at {server.connect_string} (kazoo, threading handler)", file=sys.stderr)
            report["servers"][ZOOKEEPER] = {
                "version": server.version,
                "java": _command_output(["java", "-version"]),
                "client": f"kazoo {importlib.metadata.version('kazoo')}",
            }
            try:
                results = load.run_kazoo_phases(server.connect_string, workload)
            except Exception:
                print(f"ZooKeeper log:\n{log_tail(server.work_dir / 'log' / 'zookeeper.log')}", file=sys.stderr)
                raise
            report["servers"][ZOOKEEPER]["mntr"] = _zookeeper_stats(server.host, server.port)
    except ZooKeeperNotInstalledError as error:
        report["notes"][ZOOKEEPER] = f"skipped: {error}"
        return _Outcome.SKIPPED, []
    except ZooKeeperStartError as error:
        report["notes"][ZOOKEEPER] = f"failed: {error}"
        return _Outcome.FAILED, []
    except Exception as error:
        traceback.print_exc()
        report["notes"][ZOOKEEPER] = f"failed: {_describe(error)}"
        return _Outcome.FAILED, []
    return _Outcome.MEASURED, results


def _measure_coord(workload: load.Workload, report: dict[str, Any]) -> tuple[_Outcome, list[PhaseResult]]:
    """Start a coord subprocess, run the phases with the trio client, stop it. Notes a skip or failure."""
    try:
        with run_coord() as server:
            print(f"coord at {server.connect_string} (trio client)", file=sys.stderr)
            report["servers"][COORD] = {
                "git": _command_output(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT)
            }
            try:
                results = trio.run(_run_coord_phases, server.connect_string, workload)
            except Exception:
                print(f"coord server log:\n{log_tail(server.work_dir / 'server.log')}", file=sys.stderr)
                raise
    except CoordNotAvailableError as error:
        report["notes"][COORD] = f"skipped: {error}"
        return _Outcome.SKIPPED, []
    except CoordStartError as error:
        report["notes"][COORD] = f"failed: {error}"
        return _Outcome.FAILED, []
    except Exception as error:
        traceback.print_exc()
        report["notes"][COORD] = f"failed: {_describe(error)}"
        return _Outcome.FAILED, []
    return _Outcome.MEASURED, results


def _role_of(address: str | None, addresses: dict[int, str], roles: dict[int, str]) -> dict[str, Any]:
    """Which ensemble member ``address`` is, and its role then (for the report)."""
    server_id = next((sid for sid, member in addresses.items() if member == address), None)
    return {"address": address, "server_id": server_id, "role": roles.get(server_id) if server_id else None}


def _note_ensemble_round(report: dict[str, Any], system: str, info: dict[str, Any]) -> None:
    """Keep one round's ensemble facts (leader, where the client went) and show them."""
    report.setdefault("ensemble_rounds", {}).setdefault(system, []).append(info)
    client = info.get("client") or {}
    print(
        f"  {system}: leader {info.get('leader')}, client on server {client.get('server_id')} "
        f"({client.get('role')}) {client.get('address')}",
        file=sys.stderr,
    )


def _measure_zookeeper_ensemble(
    workload: load.Workload, report: dict[str, Any], size: int
) -> tuple[_Outcome, list[PhaseResult]]:
    """Start a ``size``-server ZooKeeper ensemble, run the phases with kazoo (given every server), stop it."""
    try:
        import kazoo  # noqa: F401  (only checking that it is installed)
    except ImportError:
        report["notes"][ZOOKEEPER] = "skipped: kazoo is not installed (pip install -e '.[bench]')"
        return _Outcome.SKIPPED, []
    try:
        with run_zookeeper_ensemble(size) as ensemble:
            print(
                f"ZooKeeper {ensemble.version} {size}-server ensemble at {ensemble.connect_string} "
                "(kazoo, threading handler)",
                file=sys.stderr,
            )
            roles = ensemble.roles()
            addresses = {sid: ensemble.client_address(sid) for sid in ensemble.server_ids}
            connected: list[str | None] = []
            report["servers"][ZOOKEEPER] = {
                "version": ensemble.version,
                "java": _command_output(["java", "-version"]),
                "client": f"kazoo {importlib.metadata.version('kazoo')}",
                "ensemble_size": size,
            }
            try:
                results = load.run_kazoo_phases(ensemble.connect_string, workload, on_connect=connected.append)
            except Exception:
                print(f"ZooKeeper logs:\n{ensemble.log_tails()}", file=sys.stderr)
                raise
            report["servers"][ZOOKEEPER]["mntr"] = {
                sid: _zookeeper_stats(ensemble.host, member.client_port) for sid, member in ensemble.members.items()
            }
            _note_ensemble_round(
                report,
                ZOOKEEPER,
                {
                    "leader": next((sid for sid, role in roles.items() if role == "leader"), None),
                    "roles": roles,
                    "client": _role_of(connected[0] if connected else None, addresses, roles),
                    "roles_after": ensemble.roles(),
                },
            )
    except ZooKeeperNotInstalledError as error:
        report["notes"][ZOOKEEPER] = f"skipped: {error}"
        return _Outcome.SKIPPED, []
    except ZooKeeperStartError as error:
        report["notes"][ZOOKEEPER] = f"failed: {error}"
        return _Outcome.FAILED, []
    except Exception as error:
        traceback.print_exc()
        report["notes"][ZOOKEEPER] = f"failed: {_describe(error)}"
        return _Outcome.FAILED, []
    return _Outcome.MEASURED, results


def _measure_coord_ensemble(
    workload: load.Workload, report: dict[str, Any], size: int
) -> tuple[_Outcome, list[PhaseResult]]:
    """Start a ``size``-server coord ensemble, run the phases with the trio client (given every server), stop it."""
    try:
        with run_coord_ensemble(size) as ensemble:
            print(f"coord {size}-server ensemble at {ensemble.connect_string} (trio client)", file=sys.stderr)
            roles = ensemble.roles()
            addresses = {sid: ensemble.client_address(sid) for sid in ensemble.server_ids}
            connected: list[str | None] = []
            report["servers"][COORD] = {
                "git": _command_output(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT),
                "ensemble_size": size,
            }
            try:
                results = trio.run(
                    functools.partial(_run_coord_phases, on_connect=connected.append),
                    ensemble.connect_string,
                    workload,
                )
            except Exception:
                print(f"coord server logs:\n{ensemble.log_tails()}", file=sys.stderr)
                raise
            _note_ensemble_round(
                report,
                COORD,
                {
                    "leader": next((sid for sid, role in roles.items() if role == "leader"), None),
                    "roles": roles,
                    "client": _role_of(connected[0] if connected else None, addresses, roles),
                    "roles_after": ensemble.roles(),
                },
            )
    except CoordNotAvailableError as error:
        report["notes"][COORD] = f"skipped: {error}"
        return _Outcome.SKIPPED, []
    except CoordStartError as error:
        report["notes"][COORD] = f"failed: {error}"
        return _Outcome.FAILED, []
    except Exception as error:
        traceback.print_exc()
        report["notes"][COORD] = f"failed: {_describe(error)}"
        return _Outcome.FAILED, []
    return _Outcome.MEASURED, results


def median_results(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per phase, the median of each metric over the rounds (errors: the total).

    Args:
        rounds: One list of phase rows (:meth:`PhaseResult.as_dict`) per round.

    Returns:
        One row per phase, shaped like the inputs.
    """
    merged: list[dict[str, Any]] = []
    for rows in zip(*rounds, strict=True):
        row = dict(rows[0])
        for metric in ("ops", "seconds", "ops_per_s", "p50_ms", "p99_ms", "max_ms"):
            row[metric] = statistics.median(other[metric] for other in rows)
        row["errors"] = sum(other["errors"] for other in rows)
        row["first_error"] = next((other["first_error"] for other in rows if other["first_error"]), None)
        merged.append(row)
    return merged


def _format_number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if unit == "ops/s" else f"{value:.2f}"


def format_table(report: dict[str, Any]) -> str:
    """The comparison table: one row per phase and metric, ZooKeeper and coord side by side.

    Ratios are coord / ZooKeeper: above 1 is better for ops/s, worse for latencies.
    """
    by_system = {system: {row["phase"]: row for row in rows} for system, rows in report["results"].items()}
    header = ("phase", "metric", "ZooKeeper (kazoo)", "coord", "ratio coord/ZK")
    rows: list[tuple[str, ...]] = []
    for phase in load.PHASES:
        for metric, unit in (("ops_per_s", "ops/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")):
            zk = by_system.get(ZOOKEEPER, {}).get(phase.name, {}).get(metric)
            coord = by_system.get(COORD, {}).get(phase.name, {}).get(metric)
            ratio = f"{coord / zk:.2f}x" if zk and coord is not None else "-"
            rows.append((phase.name, unit, _format_number(zk, unit), _format_number(coord, unit), ratio))
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return " | ".join(
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    separator = "-+-".join("-" * width for width in widths)
    legend = "ratio = coord / ZooKeeper: higher is better for ops/s, lower is better for p50/p99 latency."
    title: list[str] = []
    size = report.get("servers_per_system", 1)
    if size > 1:
        title = [f"{size}-server ensembles, the client given every server's address", ""]
        for system, rounds in report.get("ensemble_rounds", {}).items():
            where = ", ".join(str((info.get("client") or {}).get("role")) for info in rounds)
            legend += f"\n{system}: client on a {where} (per round)"
    return "\n".join([*title, line(header), separator, *(line(row) for row in rows), "", legend])


def _terminate_like_ctrl_c(signum: int, frame: object) -> None:
    """SIGTERM handler outside trio: clean up exactly as on Ctrl-C (stop servers, delete temp dirs).

    Inside ``trio.run`` :func:`_run_coord_phases` receives SIGTERM itself instead, since an
    exception raised from a signal handler could land inside trio's own machinery.
    """
    raise KeyboardInterrupt


async def _run_coord_phases(
    connect_string: str, workload: load.Workload, *, on_connect: Callable[[str | None], None] | None = None
) -> list[PhaseResult]:
    """:func:`bench.load.run_coord_phases`, ended cleanly by SIGTERM or Ctrl-C (raises KeyboardInterrupt)."""
    terminated = False
    results: list[PhaseResult] = []
    try:
        with trio.open_signal_receiver(signal.SIGTERM) as received:
            async with trio.open_nursery() as nursery:

                async def cancel_on_sigterm() -> None:
                    nonlocal terminated
                    async for _ in received:
                        terminated = True
                        nursery.cancel_scope.cancel()

                nursery.start_soon(cancel_on_sigterm)
                results = await load.run_coord_phases(connect_string, workload, on_connect=on_connect)
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Ctrl-C lands in whichever task is running and reaches us wrapped in a group.
        if group.subgroup(KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from None
        raise
    if terminated:
        raise KeyboardInterrupt
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the process exit status."""
    args = _parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate_like_ctrl_c)
    workload = load.Workload(
        ops_per_phase=args.ops, seconds_per_phase=args.seconds, value_bytes=args.value_bytes, warmup_ops=args.warmup
    )
    started = datetime.datetime.now(datetime.UTC)
    report: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "workload": asdict(workload),
        "servers_per_system": args.servers,
        "phases": {phase.name: phase.description for phase in load.PHASES},
        "servers": {},
        "rounds": [],  # every round's rows, per system
        "results": {},  # per system: the median over the rounds (what the table shows)
        "notes": {},
    }
    measure: dict[str, Callable[[load.Workload, dict[str, Any]], tuple[_Outcome, list[PhaseResult]]]]
    if args.servers == 1:
        measure = {ZOOKEEPER: _measure_zookeeper, COORD: _measure_coord}
    else:
        measure = {
            ZOOKEEPER: functools.partial(_measure_zookeeper_ensemble, size=args.servers),
            COORD: functools.partial(_measure_coord_ensemble, size=args.servers),
        }
    systems = list(args.systems)
    failed: set[str] = set()
    try:
        for round_number in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"round {round_number}/{args.rounds}", file=sys.stderr)
            this_round: dict[str, list[dict[str, Any]]] = {}
            for system in list(systems):
                outcome, results = measure[system](workload, report)
                if outcome is _Outcome.MEASURED:
                    this_round[system] = [result.as_dict() for result in results]
                    if any(result.errors for result in results):
                        failed.add(system)
                else:  # neither a skip nor a start failure will fix itself in the next round
                    print(f"{system}: {report['notes'][system]}", file=sys.stderr)
                    systems.remove(system)
                    if outcome is _Outcome.FAILED:
                        failed.add(system)
            report["rounds"].append(this_round)
    except KeyboardInterrupt:
        print("interrupted; servers stopped, temp dirs removed", file=sys.stderr)
        return 130
    for system in args.systems:
        measured = [this_round[system] for this_round in report["rounds"] if system in this_round]
        if measured:
            report["results"][system] = median_results(measured)
    print()
    print(format_table(report))
    for system, note in report["notes"].items():
        print(f"note: {system}: {note}")
    args.output.mkdir(parents=True, exist_ok=True)
    kind = "" if args.servers == 1 else f"ensemble{args.servers}-"
    path = args.output / f"bench-{kind}{started:%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
