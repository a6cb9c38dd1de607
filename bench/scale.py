"""coord at real sizes: a million znodes, side by side with ZooKeeper 3.8 on this machine.

Usage (from the repository root)::

    .venv/bin/python -m bench.scale                          # 1,000,000 znodes of 100 bytes
    .venv/bin/python -m bench.scale --nodes 20000 --systems coord
    .venv/bin/python -m bench.scale --skip-ensemble          # standalone servers only

The other benchmarks measure speed on a small tree; this one asks what a big tree costs. For
each system (ZooKeeper is skipped, with "ZooKeeper not installed", when java, its jar or kazoo
is missing; coord still runs) it measures, one server or ensemble at a time:

1. **load**: a fresh standalone server (coord: ``coord serve`` with its defaults, fsync on;
   ZooKeeper: the ``zoo.cfg`` of :mod:`bench.zk_server`, ``forceSync=yes``) gets ``--nodes``
   persistent znodes of ``--value-bytes`` each, spread round-robin over ``--parents`` parents
   under ``/scale``, written through one session as multis (transactions) of ``--batch``
   creates with ``--in-flight`` multis outstanding (coord: our trio client, ``zk.transaction()``;
   ZooKeeper: kazoo, ``transaction().commit_async()``). Reported: znodes/s, from the first
   multi sent to the last one acknowledged. A failed multi stops the run (exit status 1).
2. **memory and disk**: the server's RSS (``VmRSS`` in ``/proc/PID/status``) once loaded, minus
   its RSS with an empty tree (measured after a first session made the parents), per znode;
   and ``du`` of its data directory (coord: ``data/``; ZooKeeper: ``dataDir`` + ``dataLogDir``),
   in total and per znode.
3. **restart**: the server is SIGKILLed and started again on the same port and data; reported
   is the time from starting it to a client having read the last znode created (the client
   retries every 50 ms), and the RSS per znode once it serves again.
4. **ensemble catch-up**: a fresh 3-server ensemble (coord:
   ``coord.testing.open_ensemble(3, processes=True)`` with the timing of ``coord serve``,
   ``tick_ms=100, init_limit_ticks=20, sync_limit_ticks=5``, and its default LMDB map size;
   ZooKeeper: :func:`bench.zk_server.run_zookeeper_ensemble`, ``tickTime=2000, initLimit=10,
   syncLimit=5``) is loaded with ``--ensemble-nodes`` znodes through its leader. Then one
   follower is stopped (SIGTERM), its data deleted (coord: its data directory; ZooKeeper: the
   ``version-2`` directories of its ``dataDir`` and ``dataLogDir``, ``myid`` kept) and started
   again. Reported: the time from starting it to its status showing ``follower`` at the
   leader's zxid (coord: ``ensemble.status(id)``; ZooKeeper: ``srvr``, polled every 20 ms);
   the peak RSS of the follower and of the leader meanwhile (``/proc`` sampled every 50 ms
   in a background thread); and whether any server process exited other than the one
   stopped on purpose (none may: exit status 1 otherwise). A client connected to that
   follower alone then reads the last znode after a ``sync``, as a check.

Everything listens on 127.0.0.1 only (free ports, as the other benchmarks pick them), runs in
temp dirs that are deleted afterwards, and one system's servers are stopped before the next
start, so only one tree is in memory at a time (the ensembles hold three). Every wait is bounded
by ``--deadline`` seconds. It prints one table (metric | coord | ZooKeeper | ratio coord/ZK)
and writes everything to ``bench/results/scale-YYYYmmdd-HHMMSS.json`` (git-ignored).

Exit status: 0 if everything that ran was measured, 1 if a step failed or a server exited on
its own, 130 on Ctrl-C or SIGTERM (servers are stopped and temp dirs removed in every case).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if __package__ in (None, ""):  # run as `python bench/scale.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

import client
from bench._process import LOOPBACK, free_loopback_port, is_listening, log_tail, stop_process
from bench.coord_server import ENSEMBLE_TIMING, CoordNotAvailableError, coord_status, find_coord
from bench.zk_server import (
    ZooKeeperNotInstalledError,
    ZooKeeperStartError,
    find_zookeeper,
    four_letter_word,
    run_zookeeper_ensemble,
)
from coord.config import ServerConfig
from coord.testing import open_ensemble

if TYPE_CHECKING:
    from kazoo.client import KazooClient

    from client import Client
    from coord.testing import Ensemble

RESULTS_DIR = Path(__file__).resolve().parent / "results"
COORD = "coord"
ZOOKEEPER = "zookeeper"
ROOT = "/scale"
MIB = 1 << 20
T = TypeVar("T")


class ScaleError(RuntimeError):
    """A step failed (a multi, a start, a wait past its deadline); the message says which."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Sizes and bounds, the same for both systems."""

    nodes: int = 1_000_000
    ensemble_nodes: int = 1_000_000
    value_bytes: int = 100
    parents: int = 10
    batch: int = 500
    in_flight: int = 4
    deadline: float = 900.0
    session_timeout: float = 30.0

    @property
    def value(self) -> bytes:
        """The payload of every znode."""
        return (b"coord-scale-value-" * (self.value_bytes // 18 + 1))[: self.value_bytes]

    def parent_paths(self) -> list[str]:
        return [f"{ROOT}/p{parent:03d}" for parent in range(self.parents)]

    def node_path(self, index: int) -> str:
        return f"{ROOT}/p{index % self.parents:03d}/n{index:08d}"

    def batches(self, count: int) -> list[range]:
        """The creates of a load of ``count`` znodes, one range of indices per multi."""
        return [range(start, min(start + self.batch, count)) for start in range(0, count, self.batch)]


@dataclass(frozen=True, slots=True)
class LoadResult:
    znodes: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.znodes / max(self.seconds, 1e-9)


class _LoadProgress:
    """Prints a line to stderr at every tenth of a load."""

    def __init__(self, system: str, total: int) -> None:
        self.system, self.total, self.done, self.started = system, total, 0, time.perf_counter()
        self._next = max(total // 10, 1)

    def add(self, count: int) -> None:
        self.done += count
        if self.done >= self._next or self.done == self.total:
            self._next += max(self.total // 10, 1)
            rate = self.done / max(time.perf_counter() - self.started, 1e-9)
            print(f"  {self.system} load: {self.done:,}/{self.total:,} znodes, {rate:,.0f}/s", file=sys.stderr)


def _cause(failed: list[BaseException]) -> BaseException:
    """The op error that failed a multi: both clients also give the other ops an error (rolled back)."""
    consequences = {"RolledBackError", "RuntimeInconsistencyError", "RuntimeInconsistency"}
    return next((error for error in failed if type(error).__name__ not in consequences), failed[0])


# --------------------------------------------------------------------------- /proc and disk


def rss_bytes(pid: int | None) -> int | None:
    """Resident set size of a process (``VmRSS``), None if it is gone."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def disk_usage(*paths: Path) -> tuple[int, int]:
    """``(allocated, apparent)`` bytes of every file under ``paths``: what ``du`` and ``du -b`` say."""
    allocated = apparent = 0
    seen: set[tuple[int, int]] = set()
    for top in paths:
        for directory, _dirs, files in os.walk(top):
            for name in files:
                with contextlib.suppress(OSError):
                    info = os.lstat(os.path.join(directory, name))
                    if (info.st_dev, info.st_ino) not in seen:
                        seen.add((info.st_dev, info.st_ino))
                        allocated += info.st_blocks * 512
                        apparent += info.st_size
    return allocated, apparent


class PeakRss:
    """Samples the RSS of some processes every ``interval`` seconds in a background thread and keeps
    each one's peak. Each process is named with a function giving its current pid (None while down),
    so a restarted process is followed."""

    def __init__(self, pids: dict[str, Callable[[], int | None]], interval: float = 0.05) -> None:
        self._pids = pids
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.peaks: dict[str, int] = {}

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self._pids.items():
                rss = rss_bytes(pid())
                if rss is not None and rss > self.peaks.get(name, 0):
                    self.peaks[name] = rss
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / MIB, 1)


def _per_znode(loaded: int | None, empty: int | None, znodes: int) -> float | None:
    return None if loaded is None or empty is None or znodes <= 0 else round((loaded - empty) / znodes, 1)


# --------------------------------------------------------------------------- standalone servers


class StandaloneServer:
    """One standalone server process that can be SIGKILLed and started again on its port and data.

    The launchers of :mod:`bench.coord_server` and :mod:`bench.zk_server` start a server once;
    the restart step needs the same command run again, so this holds it.
    """

    def __init__(
        self,
        *,
        command: list[str],
        port: int,
        work_dir: Path,
        data_paths: list[Path],
        log_paths: list[Path],
        stop_signals: tuple[int, ...],
        stop_timeout: float,
        ready: Callable[[], bool],
    ) -> None:
        self.command, self.port, self.work_dir = command, port, work_dir
        self.data_paths, self.log_paths = data_paths, log_paths
        self._stop_signals, self._stop_timeout, self._ready = stop_signals, stop_timeout, ready
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def launch(self) -> None:
        """Start the process (its output appended to the first log); do not wait for it."""
        with self.log_paths[0].open("ab") as log:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.work_dir
            )

    def wait_ready(self, timeout: float) -> None:
        """Poll until the server is ready.

        Raises:
            ScaleError: it exited, or was not ready within ``timeout`` (with its log tail).
        """
        deadline = time.monotonic() + timeout
        while not self._ready():
            if not self.running:
                raise ScaleError(f"`{' '.join(self.command)}` exited\n{log_tail(*self.log_paths)}")
            if time.monotonic() > deadline:
                raise ScaleError(f"server on port {self.port} not ready in {timeout:g}s\n{log_tail(*self.log_paths)}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, signals=self._stop_signals, timeout=self._stop_timeout)


def _coord_standalone(work_dir: Path, port: int) -> StandaloneServer:
    """``coord serve --data-dir TMP/data --listen 127.0.0.1:PORT``, as :func:`bench.coord_server.run_coord`."""
    data = work_dir / "data"
    return StandaloneServer(
        command=[find_coord(), "serve", "--data-dir", str(data), "--listen", f"{LOOPBACK}:{port}"],
        port=port,
        work_dir=work_dir,
        data_paths=[data],
        log_paths=[work_dir / "server.log"],
        # SIGINT first: the server shuts down through its cancel scopes (see bench.coord_server).
        stop_signals=(signal.SIGINT, signal.SIGTERM),
        stop_timeout=5.0,
        ready=lambda: is_listening(port),
    )


def _zookeeper_serving(port: int) -> bool:
    """``ruok`` answers and ``srvr`` shows a mode (it says "not currently serving" while loading)."""
    with contextlib.suppress(OSError):
        return four_letter_word(LOOPBACK, port, "ruok") == "imok" and "Mode:" in four_letter_word(
            LOOPBACK, port, "srvr"
        )
    return False


def _zookeeper_standalone(work_dir: Path, port: int) -> StandaloneServer:
    """The standalone JVM of :func:`bench.zk_server.run_zookeeper`: same ``zoo.cfg``, same command."""
    from bench.zk_server import _command, _write_config  # the one place that knows ZooKeeper's setup

    java, jar = find_zookeeper()
    config = _write_config(work_dir, port)
    return StandaloneServer(
        command=_command(java, jar, work_dir, config),
        port=port,
        work_dir=work_dir,
        data_paths=[work_dir / "data", work_dir / "datalog"],
        log_paths=[work_dir / "log" / "stdout.txt", work_dir / "log" / "zookeeper.log"],
        stop_signals=(signal.SIGTERM,),
        stop_timeout=10.0,
        ready=lambda: _zookeeper_serving(port),
    )


@contextlib.contextmanager
def run_standalone(system: str, *, startup_timeout: float = 60.0, attempts: int = 3) -> Iterator[StandaloneServer]:
    """A fresh standalone server of ``system`` on a free loopback port, in a temp dir, for the block.

    Each attempt uses a new port (another process may take the one picked before the server binds
    it). On leaving the block, also on errors and Ctrl-C, the server is stopped and the dir deleted.
    """
    make = _coord_standalone if system == COORD else _zookeeper_standalone
    failures: list[str] = []
    for _attempt in range(attempts):
        work_dir = Path(tempfile.mkdtemp(prefix=f"coord-bench-scale-{system}-"))
        server: StandaloneServer | None = None
        try:
            server = make(work_dir, free_loopback_port())
            server.launch()
            try:
                server.wait_ready(startup_timeout)
            except ScaleError as error:
                failures.append(str(error))
                continue
            yield server
            return
        finally:
            if server is not None:
                server.stop()
            shutil.rmtree(work_dir, ignore_errors=True)
    raise ScaleError(f"{system} did not start after {attempts} attempts; last: {failures[-1]}")


# --------------------------------------------------------------------------- coord (trio client)


async def coord_prepare(address: str, settings: Settings) -> None:
    """Create ``/scale`` and its parents."""
    with trio.fail_after(settings.deadline):
        async with client.connect(address, session_timeout=settings.session_timeout) as zk:
            for parent in settings.parent_paths():
                await zk.ensure_path(parent)


async def coord_load(address: str, settings: Settings, count: int) -> LoadResult:
    """Create ``count`` znodes through multis of ``settings.batch``, ``settings.in_flight`` at a time."""
    batches = settings.batches(count)
    progress = _LoadProgress(COORD, count)
    next_batch = 0

    async def worker(zk: Client) -> None:
        nonlocal next_batch
        while next_batch < len(batches):
            indices = batches[next_batch]  # no await between read and increment
            next_batch += 1
            transaction = zk.transaction()
            for index in indices:
                transaction.create(settings.node_path(index), settings.value)
            results = await transaction.commit()
            failed = [result for result in results if isinstance(result, BaseException)]
            if failed:
                raise ScaleError(f"a multi of {len(indices)} creates failed: {_cause(failed)!r}")
            progress.add(len(indices))

    with trio.fail_after(settings.deadline):
        async with client.connect(address, session_timeout=settings.session_timeout) as zk:
            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(settings.in_flight):
                    nursery.start_soon(worker, zk)
            return LoadResult(count, time.perf_counter() - started)


async def coord_read_when_up(address: str, path: str, value: bytes, alive: Callable[[], bool], timeout: float) -> None:
    """Wait until a client can read ``path`` from the server at ``address``.

    The client keeps trying to connect (every 50 ms at most) until ``timeout``.

    Raises:
        ScaleError: the server process exited meanwhile, or the value read is not ``value``.
        trio.TooSlowError: not within ``timeout``.
    """

    async def watch_process() -> None:
        while alive():
            await trio.sleep(0.05)
        raise ScaleError("the server exited while starting")

    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_process)
            async with client.connect(address, connect_timeout=timeout, max_reconnect_delay=0.05) as zk:
                data, _stat = await zk.get(path)
            nursery.cancel_scope.cancel()
    if data != value:
        raise ScaleError(f"{path} holds {len(data)} bytes, not the value written")


async def coord_read_after_sync(address: str, path: str, value: bytes, timeout: float) -> None:
    """Read ``path`` after a ``sync`` through a session on ``address`` alone (a check)."""
    with trio.fail_after(timeout):
        async with client.connect(address, connect_timeout=timeout) as zk:
            await zk.sync(path)
            data, _stat = await zk.get(path)
    if data != value:
        raise ScaleError(f"{path} read from {address} holds {len(data)} bytes, not the value written")


def _trio_run(function: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``trio.run``, ended cleanly by SIGTERM (as by Ctrl-C: raises KeyboardInterrupt); a lone
    error from inside comes back unwrapped."""

    async def main() -> T:
        with trio.open_signal_receiver(signal.SIGTERM) as received:
            async with trio.open_nursery() as nursery:

                async def on_sigterm() -> None:
                    async for _ in received:
                        raise KeyboardInterrupt

                nursery.start_soon(on_sigterm)
                result = await function(*args)
                nursery.cancel_scope.cancel()
        return result

    try:
        return trio.run(main)
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from None
        raise _innermost(group) from None


def _innermost(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


# --------------------------------------------------------------------------- ZooKeeper (kazoo)


def _kazoo(hosts: str, settings: Settings, *, fast_retry: bool = False) -> KazooClient:
    """A started kazoo client; with ``fast_retry`` it tries to connect every 50 ms, forever."""
    from kazoo.client import KazooClient

    retry = {"max_tries": -1, "delay": 0.05, "backoff": 1, "max_jitter": 0.0, "max_delay": 0.05}
    return KazooClient(hosts=hosts, timeout=settings.session_timeout, connection_retry=retry if fast_retry else None)


def kazoo_prepare(address: str, settings: Settings) -> None:
    zk = _kazoo(address, settings)
    zk.start(timeout=30)
    try:
        for parent in settings.parent_paths():
            zk.ensure_path(parent)
    finally:
        zk.stop()
        zk.close()


def kazoo_load(address: str, settings: Settings, count: int) -> LoadResult:
    """As :func:`coord_load`, with kazoo: ``commit_async`` under a window of ``settings.in_flight``."""
    zk = _kazoo(address, settings)
    zk.start(timeout=30)
    progress = _LoadProgress("ZooKeeper", count)
    slots = threading.Semaphore(settings.in_flight)
    failures: list[str] = []

    def on_done(size: int, result: Any) -> None:  # kazoo's completion thread
        try:
            outcome = result.get_nowait()
            failed = [item for item in outcome if isinstance(item, BaseException)]
            if failed:
                failures.append(f"a multi of {size} creates failed: {_cause(failed)!r}")
            else:
                progress.add(size)
        except Exception as error:  # the whole multi failed (connection loss, ...)
            failures.append(f"a multi of {size} creates failed: {error!r}")
        finally:
            slots.release()

    try:
        started = time.perf_counter()
        deadline = time.monotonic() + settings.deadline
        for indices in settings.batches(count):
            if failures:
                break
            if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise ScaleError(f"load not done within {settings.deadline:g}s")
            transaction = zk.transaction()
            for index in indices:
                transaction.create(settings.node_path(index), settings.value)
            transaction.commit_async().rawlink(functools.partial(on_done, len(indices)))
        for _ in range(settings.in_flight):  # holding every slot: nothing outstanding
            if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise ScaleError(f"load not done within {settings.deadline:g}s")
        seconds = time.perf_counter() - started
        if failures:
            raise ScaleError(failures[0])
        return LoadResult(count, seconds)
    finally:
        zk.stop()
        zk.close()


def kazoo_read_when_up(address: str, path: str, value: bytes, alive: Callable[[], bool], settings: Settings) -> None:
    """As :func:`coord_read_when_up`, with kazoo (connection retried every 50 ms)."""
    from kazoo.exceptions import KazooException

    zk = _kazoo(address, settings, fast_retry=True)
    deadline = time.monotonic() + settings.deadline
    try:
        connected = zk.start_async()
        data: bytes | None = None
        while data is None:
            if not alive():
                raise ScaleError("the server exited while starting")
            if time.monotonic() > deadline:
                raise ScaleError(f"{path} not read from {address} within {settings.deadline:g}s")
            if connected.wait(timeout=0.05):
                try:
                    data, _stat = zk.get(path)
                except KazooException:  # dropped again while the server finishes starting
                    time.sleep(0.05)
        if data != value:
            raise ScaleError(f"{path} holds {len(data)} bytes, not the value written")
    finally:
        zk.stop()
        zk.close()


def kazoo_read_after_sync(address: str, path: str, value: bytes, settings: Settings) -> None:
    zk = _kazoo(address, settings)
    zk.start(timeout=30)
    try:
        zk.sync(path)
        data, _stat = zk.get(path)
        if data != value:
            raise ScaleError(f"{path} read from {address} holds {len(data)} bytes, not the value written")
    finally:
        zk.stop()
        zk.close()


def _srvr_field(status: str | None, name: str) -> str | None:
    """A field of a ``srvr`` reply (``Mode``, ``Zxid``, ``Node count``), None if absent."""
    for line in (status or "").splitlines():
        key, _, field_value = line.partition(":")
        if key.strip() == name:
            return field_value.strip()
    return None


def _zookeeper_znodes(port: int) -> int | None:
    with contextlib.suppress(OSError):
        count = _srvr_field(four_letter_word(LOOPBACK, port, "srvr"), "Node count")
        return int(count) if count and count.isdigit() else None
    return None


# --------------------------------------------------------------------------- the measurements


class Driver:
    """One system's client side for the standalone steps: the same calls for coord and kazoo."""

    def __init__(self, system: str, settings: Settings) -> None:
        self.system, self.settings = system, settings

    def prepare(self, address: str) -> None:
        if self.system == COORD:
            _trio_run(coord_prepare, address, self.settings)
        else:
            kazoo_prepare(address, self.settings)

    def load(self, address: str, count: int) -> LoadResult:
        if self.system == COORD:
            return _trio_run(coord_load, address, self.settings, count)
        return kazoo_load(address, self.settings, count)

    def read_when_up(self, address: str, path: str, alive: Callable[[], bool]) -> None:
        value, deadline = self.settings.value, self.settings.deadline
        if self.system == COORD:
            _trio_run(coord_read_when_up, address, path, value, alive, deadline)
        else:
            kazoo_read_when_up(address, path, value, alive, self.settings)

    def znodes(self, server: StandaloneServer) -> int | None:
        if self.system == COORD:
            with contextlib.suppress(Exception):
                return int(coord_status(server.address, timeout=5.0)["znodes"])
            return None
        return _zookeeper_znodes(server.port)


def measure_standalone(system: str, settings: Settings, metrics: dict[str, Any], details: dict[str, Any]) -> None:
    """Steps 1-3 on a fresh standalone server; fills ``metrics`` as it goes."""
    driver = Driver(system, settings)
    count = settings.nodes
    last = settings.node_path(count - 1)
    with run_standalone(system) as server:
        print(f"{system}: standalone at {server.address} (pid {server.pid}), loading {count:,} znodes", file=sys.stderr)
        try:
            driver.prepare(server.address)
            empty = rss_bytes(server.pid)
            load = driver.load(server.address, count)
            loaded = rss_bytes(server.pid)
            allocated, apparent = disk_usage(*server.data_paths)
            znodes = driver.znodes(server)
            details.update(load_seconds=round(load.seconds, 3), znodes_reported=znodes, data_dir_apparent=apparent)
            metrics.update(
                load_znodes_per_s=round(load.rate, 1),
                rss_empty_mib=_mib(empty),
                rss_loaded_mib=_mib(loaded),
                rss_bytes_per_znode=_per_znode(loaded, empty, count),
                data_dir_mib=_mib(allocated),
                disk_bytes_per_znode=round(allocated / count, 1),
            )
            if znodes is not None and znodes < count:
                raise ScaleError(f"{count} znodes created but the server reports {znodes}")
            server.kill()
            started = time.monotonic()
            server.launch()
            driver.read_when_up(server.address, last, lambda: server.running)
            metrics["restart_s"] = round(time.monotonic() - started, 3)
            restarted = rss_bytes(server.pid)
            metrics["rss_restart_bytes_per_znode"] = _per_znode(restarted, empty, count)
            details["rss_restart_mib"] = _mib(restarted)
        except Exception:  # not on Ctrl-C
            print(f"{system} server log:\n{log_tail(*server.log_paths)}", file=sys.stderr)
            raise


async def measure_coord_ensemble(settings: Settings, metrics: dict[str, Any], details: dict[str, Any]) -> None:
    """Step 4 for coord: a 3-process ensemble, a follower wiped and restarted."""
    count, value, deadline = settings.ensemble_nodes, settings.value, settings.deadline
    last = settings.node_path(count - 1)
    # coord serve's timing (bench.coord_server) and LMDB map size, not the tests' faster ones.
    async with open_ensemble(
        3,
        processes=True,
        tick_ms=ENSEMBLE_TIMING["tick_ms"],
        init_limit_ticks=ENSEMBLE_TIMING["init_limit_ticks"],
        sync_limit_ticks=ENSEMBLE_TIMING["sync_limit_ticks"],
        log_map_bytes=ServerConfig().log_map_bytes,
    ) as ensemble:
        wiped = _Wiped()
        try:
            leader = await ensemble.wait_for_leader(timeout=60)
            follower = next(server_id for server_id in ensemble.server_ids if server_id != leader)
            address = ensemble.connect_string_of(leader)
            print(f"coord: 3-server ensemble, leader {leader}, loading {count:,} znodes", file=sys.stderr)
            await coord_prepare(address, settings)
            load = await coord_load(address, settings, count)
            metrics["ensemble_load_znodes_per_s"] = round(load.rate, 1)
            details["ensemble_rss_after_load_mib"] = {
                sid: _mib(rss_bytes(ensemble.process(sid).pid)) for sid in ensemble.server_ids
            }
            wiped.server_id = follower
            await ensemble.stop(follower)
            shutil.rmtree(ensemble.data_dir(follower))
            print(f"coord: follower {follower} stopped, data deleted, starting it again", file=sys.stderr)
            with PeakRss(_pids(ensemble, {"follower": follower, "leader": leader})) as peaks:
                started = time.monotonic()
                with trio.fail_after(deadline):
                    await ensemble.restart(follower)
                    wiped.restarted = True
                    while not await _coord_caught_up(ensemble, follower, leader):
                        if not ensemble.is_running(follower):
                            raise ScaleError(f"follower {follower} exited during the catch-up")
                        await trio.sleep(0.02)
                metrics["catch_up_s"] = round(time.monotonic() - started, 3)
            metrics["follower_peak_rss_mib"] = _mib(peaks.peaks.get("follower"))
            metrics["leader_peak_rss_mib"] = _mib(peaks.peaks.get("leader"))
            await coord_read_after_sync(ensemble.connect_string_of(follower), last, value, deadline)
        except Exception:  # not on Ctrl-C
            for server_id in ensemble.server_ids:
                print(f"coord server {server_id} log:\n{ensemble.process(server_id).log_tail(30)}", file=sys.stderr)
            raise
        finally:
            processes = {sid: ensemble.process(sid) for sid in ensemble.server_ids}
            exits = wiped.unexpected_exits({sid: (p.exit_codes, p.is_running) for sid, p in processes.items()})
            metrics["server_exits"] = len(exits)
            details["server_exits"] = exits


@dataclass(slots=True)
class _Wiped:
    """Which follower the ensemble step stopped on purpose, and whether it was started again:
    every other exit of a server, and that one being down after its restart, is unexpected."""

    server_id: int | None = None
    restarted: bool = False

    def unexpected_exits(self, servers: dict[int, tuple[list[int], bool]]) -> list[str]:
        """``servers``: id -> (exit codes of its earlier processes, running now)."""
        exits = []
        for server_id, (codes, running) in servers.items():
            stopped = server_id == self.server_id
            unexpected = codes[1:] if stopped else codes
            if unexpected or (not running and not (stopped and not self.restarted)):
                exits.append(f"server {server_id}: exit codes {unexpected}, running {running}")
        return exits


def _pids(ensemble: Ensemble, roles: dict[str, int]) -> dict[str, Callable[[], int | None]]:
    """Name -> a function giving the current pid of that server, for :class:`PeakRss`."""

    def pid_of(server_id: int) -> int | None:
        return ensemble.process(server_id).pid

    return {name: functools.partial(pid_of, server_id) for name, server_id in roles.items()}


async def _coord_caught_up(ensemble: Ensemble, follower: int, leader: int) -> bool:
    """The follower reports ``follower`` at the leader's zxid (False while either does not answer)."""
    try:
        mine = await ensemble.status(follower)
        theirs = await ensemble.status(leader)
    except Exception:  # starting, busy or restarting: not yet
        return False
    return mine.get("role") == "follower" and mine.get("zxid") == theirs.get("zxid")


def measure_zookeeper_ensemble(settings: Settings, metrics: dict[str, Any], details: dict[str, Any]) -> None:
    """Step 4 for ZooKeeper: a 3-JVM ensemble, a follower wiped and restarted."""
    count, value, deadline = settings.ensemble_nodes, settings.value, settings.deadline
    last = settings.node_path(count - 1)
    with run_zookeeper_ensemble(3) as ensemble:
        wiped = _Wiped()
        try:
            leader = ensemble.wait_for_quorum()
            follower = next(server_id for server_id in ensemble.server_ids if server_id != leader)
            address = ensemble.client_address(leader)
            print(f"ZooKeeper: 3-server ensemble, leader {leader}, loading {count:,} znodes", file=sys.stderr)
            kazoo_prepare(address, settings)
            load = kazoo_load(address, settings, count)
            metrics["ensemble_load_znodes_per_s"] = round(load.rate, 1)
            details["ensemble_rss_after_load_mib"] = {
                sid: _mib(rss_bytes(ensemble.pid(sid))) for sid in ensemble.server_ids
            }
            member = ensemble.members[follower]
            assert member.process is not None
            wiped.server_id = follower
            stop_process(member.process, signals=(signal.SIGTERM,), timeout=30.0)
            member.exit_codes.append(member.process.returncode)  # as ensemble.kill() notes a kill
            member.process = None
            for sub in ("data", "datalog"):
                shutil.rmtree(member.work_dir / sub / "version-2", ignore_errors=True)
            print(f"ZooKeeper: follower {follower} stopped, data deleted, starting it again", file=sys.stderr)
            pids = {"follower": lambda: ensemble.pid(follower), "leader": lambda: ensemble.pid(leader)}
            with PeakRss(pids) as peaks:
                started = time.monotonic()
                ensemble.restart(follower, timeout=deadline)
                wiped.restarted = True
                while not _zookeeper_caught_up(ensemble.srvr(follower), ensemble.srvr(leader)):
                    if not member.running:
                        raise ScaleError(f"follower {follower} exited during the catch-up")
                    if time.monotonic() - started > deadline:
                        raise ScaleError(f"follower {follower} not caught up within {deadline:g}s")
                    time.sleep(0.02)
                metrics["catch_up_s"] = round(time.monotonic() - started, 3)
            metrics["follower_peak_rss_mib"] = _mib(peaks.peaks.get("follower"))
            metrics["leader_peak_rss_mib"] = _mib(peaks.peaks.get("leader"))
            kazoo_read_after_sync(ensemble.client_address(follower), last, value, settings)
        except Exception:  # not on Ctrl-C
            print(f"ZooKeeper logs:\n{ensemble.log_tails()}", file=sys.stderr)
            raise
        finally:
            exits = wiped.unexpected_exits({sid: (m.exit_codes, m.running) for sid, m in ensemble.members.items()})
            metrics["server_exits"] = len(exits)
            details["server_exits"] = exits


def _zookeeper_caught_up(follower_srvr: str | None, leader_srvr: str | None) -> bool:
    zxid = _srvr_field(follower_srvr, "Zxid")
    return (
        _srvr_field(follower_srvr, "Mode") == "follower"
        and zxid is not None
        and zxid == _srvr_field(leader_srvr, "Zxid")
    )


# --------------------------------------------------------------------------- report


METRICS: tuple[tuple[str, str, str], ...] = (
    ("load_znodes_per_s", "load, znodes/s", "{:,.0f}"),
    ("rss_empty_mib", "RSS, empty tree, MiB", "{:,.1f}"),
    ("rss_loaded_mib", "RSS, loaded, MiB", "{:,.1f}"),
    ("rss_bytes_per_znode", "RSS per znode, bytes", "{:,.0f}"),
    ("data_dir_mib", "data dir (du), MiB", "{:,.1f}"),
    ("disk_bytes_per_znode", "data dir per znode, bytes", "{:,.0f}"),
    ("restart_s", "kill -9 -> restart -> read, s", "{:,.2f}"),
    ("rss_restart_bytes_per_znode", "RSS per znode after restart, bytes", "{:,.0f}"),
    ("ensemble_load_znodes_per_s", "ensemble load, znodes/s", "{:,.0f}"),
    ("catch_up_s", "wiped follower catch-up, s", "{:,.2f}"),
    ("follower_peak_rss_mib", "follower peak RSS in catch-up, MiB", "{:,.1f}"),
    ("leader_peak_rss_mib", "leader peak RSS in catch-up, MiB", "{:,.1f}"),
    ("server_exits", "server processes that exited", "{:d}"),
)
"""Table rows: metric key, label, format."""


def format_table(report: dict[str, Any]) -> str:
    """metric | coord | ZooKeeper | ratio coord/ZK, one row per metric either system has."""
    results = report["results"]
    header = ("metric", "coord", "ZooKeeper", "ratio coord/ZK")
    rows: list[tuple[str, ...]] = []
    for key, label, form in METRICS:
        coord, zk = results.get(COORD, {}).get(key), results.get(ZOOKEEPER, {}).get(key)
        if coord is None and zk is None:
            continue
        ratio = f"{coord / zk:.2f}x" if coord is not None and zk and key != "server_exits" else "-"
        rows.append(
            (label, "-" if coord is None else form.format(coord), "-" if zk is None else form.format(zk), ratio)
        )
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return " | ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    settings = report["settings"]
    title = (
        f"{settings['nodes']:,} znodes standalone, {settings['ensemble_nodes']:,} in the 3-server ensembles, "
        f"{settings['value_bytes']} bytes each, multis of {settings['batch']}, {settings['in_flight']} in flight"
    )
    legend = "ratio = coord / ZooKeeper: higher is better for znodes/s, lower is better for the rest."
    return "\n".join(
        [title, "", line(header), "-+-".join("-" * width for width in widths), *map(line, rows), "", legend]
    )


def _describe(error: BaseException) -> str:
    """``Type: message`` of an error, looking inside exception groups (trio wraps errors in them)."""
    error = _innermost(error)
    if isinstance(error, trio.TooSlowError):
        return "not done within --deadline"
    return f"{type(error).__name__}: {error}"


def _zookeeper_missing() -> str | None:
    """Why ZooKeeper cannot run here, or None if it can."""
    try:
        find_zookeeper()
        import kazoo  # noqa: F401  (only checking that it is installed)
    except ZooKeeperNotInstalledError as error:
        return str(error)
    except ImportError:
        return "kazoo is not installed (pip install -e '.[bench]')"
    return None


EXPECTED_FAILURES = (ScaleError, ZooKeeperStartError, CoordNotAvailableError, trio.TooSlowError)
"""Failures reported in a line; anything else also gets its traceback."""


def _terminate_like_ctrl_c(signum: int, frame: object) -> None:
    """SIGTERM outside trio: clean up exactly as on Ctrl-C (inside, :func:`_trio_run` takes it)."""
    raise KeyboardInterrupt


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=defaults.nodes, help="znodes in the standalone steps")
    parser.add_argument(
        "--ensemble-nodes", type=int, default=None, help="znodes in the ensemble step (default --nodes)"
    )
    parser.add_argument("--value-bytes", type=int, default=defaults.value_bytes, help="size of each znode value")
    parser.add_argument("--parents", type=int, default=defaults.parents, help="parents the znodes are spread over")
    parser.add_argument("--batch", type=int, default=defaults.batch, help="creates per multi")
    parser.add_argument("--in-flight", type=int, default=defaults.in_flight, help="multis outstanding")
    parser.add_argument("--deadline", type=float, default=defaults.deadline, help="bound on every step, seconds")
    parser.add_argument("--systems", default=f"{COORD},{ZOOKEEPER}", help=f"subset of {COORD},{ZOOKEEPER}")
    parser.add_argument("--skip-single", action="store_true", help="skip the standalone steps (1-3)")
    parser.add_argument("--skip-ensemble", action="store_true", help="skip the ensemble step (4)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="directory for the JSON report")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the clients' own log warnings")
    args = parser.parse_args(argv)
    args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    if set(args.systems) - {COORD, ZOOKEEPER}:
        parser.error(f"--systems: choose from {COORD}, {ZOOKEEPER}")
    if args.ensemble_nodes is None:
        args.ensemble_nodes = args.nodes
    if min(args.nodes, args.ensemble_nodes, args.parents, args.batch, args.in_flight) < 1 or args.value_bytes < 0:
        parser.error("sizes must be positive (--value-bytes may be 0)")
    if args.deadline <= 0:
        parser.error("--deadline must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the steps; return the process exit status."""
    args = _parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate_like_ctrl_c)
    if not args.verbose:  # the restart polls make the clients warn about every refused connection
        for name in ("kazoo", "client"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    settings = Settings(
        nodes=args.nodes,
        ensemble_nodes=args.ensemble_nodes,
        value_bytes=args.value_bytes,
        parents=args.parents,
        batch=args.batch,
        in_flight=args.in_flight,
        deadline=args.deadline,
    )
    started = datetime.datetime.now(datetime.UTC)
    report: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": asdict(settings),
        "results": {},
        "details": {},
        "notes": {},
    }
    systems = list(args.systems)
    if ZOOKEEPER in systems and (missing := _zookeeper_missing()) is not None:
        print(f"ZooKeeper not installed ({missing}); measuring coord only", file=sys.stderr)
        report["notes"][ZOOKEEPER] = f"ZooKeeper not installed: {missing}"
        systems.remove(ZOOKEEPER)
    steps: list[tuple[str, str, Callable[[Settings, dict[str, Any], dict[str, Any]], None]]] = []
    if not args.skip_single:
        steps += [(system, "standalone", functools.partial(measure_standalone, system)) for system in systems]
    if not args.skip_ensemble:
        if COORD in systems:
            steps.append((COORD, "ensemble", functools.partial(_trio_run, measure_coord_ensemble)))
        if ZOOKEEPER in systems:
            steps.append((ZOOKEEPER, "ensemble", measure_zookeeper_ensemble))
    failed = False
    try:
        for system, step, run in steps:
            metrics = report["results"].setdefault(system, {})
            details = report["details"].setdefault(system, {})
            try:
                run(settings, metrics, details)
            except Exception as error:
                if not isinstance(error, EXPECTED_FAILURES):
                    traceback.print_exc()
                failed = True
                report["notes"][system] = report["notes"].get(system, "") + f"{step} failed: {_describe(error)}. "
            if metrics.get("server_exits"):
                failed = True
    except KeyboardInterrupt:
        print("interrupted; servers stopped, temp dirs removed", file=sys.stderr)
        return 130
    print()
    print(format_table(report))
    for system, note in report["notes"].items():
        print(f"note: {system}: {note.strip()}")
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"scale-{started:%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
