"""The trio shell of one server: sockets, the disk thread, the clock.

The shell owns no protocol logic: every decision is the sans-IO
:class:`~coord.server.core.ServerCore`'s (the pipeline and the ZAB core wired
together). The shell turns sockets, the disk and the clock into the core's inputs and
carries out its :class:`~coord.server.core.CoreOutput`; the
:class:`~coord.transport.PeerTransport` carries the messages to the other servers (none
when standalone). Tasks:

- per client connection, a reader (frames -> core, while the core wants input) and a
  writer that flushes everything queued for it in one ``send_all`` (replies coalesce
  under load) and reports the bytes sent back to the core (:mod:`coord.server.clients`,
  a base class of :class:`Server`);
- the record writer: drains every record the core asked to persist at that moment
  into one LMDB write transaction (group commit, one fsync) in a worker thread, then
  reports ``persisted``: ZAB acknowledges and delivers nothing before that;
- the ZAB ticker, the session ticker and the snapshotter.

Only LMDB writes and snapshot serialisation leave the trio thread (``trio.to_thread``).

A storage error makes this server drop its in-memory ZAB state and rejoin from its
durable state (docs/correctness.md, rule 4); everything in flight is answered with
the error, reads keep working, and a standalone server re-elects itself at once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import trio

from coord import protocol
from coord.config import ServerConfig
from coord.durable import LogDurableState, write_records
from coord.errors import CoordError, StorageError
from coord.peer_tls import PeerTls
from coord.pipeline import Mode, Pipeline, PipelineConfig
from coord.recovery import Recovered, recover
from coord.server.clients import HANDSHAKE_TIMEOUT_S as HANDSHAKE_TIMEOUT_S
from coord.server.clients import READ_BATCH_FRAMES as READ_BATCH_FRAMES
from coord.server.clients import RECEIVE_BYTES as RECEIVE_BYTES
from coord.server.clients import ClientConnection, ClientConnections
from coord.server.core import CoreOutput, ServerCore
from coord.storage import TxnLog
from coord.tls import ClientTls
from coord.transport import LinkGate, PeerTransport, peer_auth
from coord.tree import DataTree
from coord.zab import Peer, PeerConfig
from coord.zab.types import Record

log = logging.getLogger(__name__)

T = TypeVar("T")

OPTIMIZED_REFUSAL = (
    "coord does not run under python -O: its invariant checks are asserts, and -O would drop them silently"
)
"""Why :func:`open_server` refuses to start when ``__debug__`` is False."""
STANDALONE_TICK_MS = 20
"""The ZAB tick of an ensemble of one (it only paces its own election)."""
STORAGE_RETRY_MIN_S = 0.05  # the second retry after a failed disk write; doubling from there
STORAGE_RETRY_MAX_S = 1.0  # at most this long between retries while the disk keeps failing


class Server(ClientConnections):
    """A running server (standalone or a member of an ensemble). Made by :func:`open_server`.

    ``peer_gate`` is given to the peer transport (:class:`~coord.transport.LinkGate`):
    the production server has none; the test ensemble's
    :class:`~coord.testing.faults.FaultableServer` gives one that can cut the server off
    from its peers.
    """

    def __init__(self, config: ServerConfig, recovered: Recovered, *, peer_gate: LinkGate | None = None) -> None:
        self.config = config
        self._log = recovered.log
        self._snapshots = recovered.snapshots
        now_ms = self._now_ms()
        pipeline = Pipeline(
            recovered.tree,
            PipelineConfig(
                server_id=config.server_id,
                tick_ms=config.tick_ms,
                min_session_timeout_ms=config.min_session_timeout_ms,
                max_session_timeout_ms=config.max_session_timeout_ms,
                data_bytes_max=config.data_bytes_max,
                txn_bytes_max=config.txn_bytes_max,
                path_bytes_max=config.path_bytes_max,
                path_depth_max=config.path_depth_max,
                connection_outstanding_max=config.connection_outstanding_max,
                connection_inflight_bytes_max=config.connection_inflight_bytes_max,
                connection_outbox_bytes_max=config.connection_outbox_bytes_max,
                outbox_bytes_total_max=config.outbox_bytes_total_max,
                connection_stall_ms=config.connection_stall_ms,
            ),
            rng=random.Random(),
            now_ms=now_ms,
            epoch=0,
            wall_offset_ms=int(time.time() * 1000) - now_ms,
            mode=Mode.OFFLINE,
        )
        ensemble = config.ensemble
        self.is_standalone = ensemble is None
        self._zab_tick_s = (STANDALONE_TICK_MS if ensemble is None else ensemble.tick_ms) / 1000
        self._durable = LogDurableState(
            recovered.log,
            recovered.snapshot_zxid,
            lambda: self.core.tree,
            snapshots=self._snapshots,
            applied_zxid=recovered.tree.last_zxid,
        )
        peer_config = PeerConfig(
            server_id=config.server_id,
            voters=ensemble.voters if ensemble else (config.server_id,),
            **(
                {
                    "init_limit_ticks": ensemble.init_limit_ticks,
                    "sync_limit_ticks": ensemble.sync_limit_ticks,
                    "snap_chunk_bytes": ensemble.snap_chunk_bytes,
                }
                if ensemble
                else {}
            ),
        )
        self.core = ServerCore(
            pipeline,
            peer_config,
            self._durable,
            delivered_zxid=recovered.tree.last_zxid,
            snapshot_every_txns=config.snapshot_every_txns,
            snapshot_every_bytes=config.snapshot_every_bytes,
            snapshot_bytes=recovered.snapshot_bytes,
            standalone=self.is_standalone,
            rng=random.Random(),
        )
        self.transport: PeerTransport | None = None
        if ensemble is not None:
            self.transport = PeerTransport(
                server_id=config.server_id,
                peers=ensemble.peers,
                ensemble_id=ensemble.ensemble_id,
                on_message=self._on_peer_message,
                on_link_down=self._on_peer_link_down,
                gate=peer_gate,
                auth=peer_auth(ensemble),
                tls=PeerTls(config.tls) if config.tls is not None and config.tls.peers else None,
            )
        self.client_tls = ClientTls(config.tls) if config.tls is not None else None
        self._conns: dict[int, ClientConnection] = {}
        self._ids = itertools.count(1)
        self._records: list[Record] = []
        self._records_wakeup = trio.Event()
        self._log_lock = trio.Lock()  # one writer of the log at a time (records, purges)
        self._snapshot_wakeup = trio.Event()
        self._frame_bytes_max = protocol.frame_bytes_max(config.data_bytes_max)
        self.address: tuple[str, int] = ("", 0)
        self.snapshots_taken = 0
        self.last_storage_error: str | None = None
        self._storage_failures = 0  # failed disk writes in a row (backoff)
        self._backups_running = 0
        self._ready = trio.Event()

    # --- public ---------------------------------------------------------------------

    @property
    def connect_string(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def pipeline(self) -> Pipeline:
        return self.core.pipeline

    @property
    def zab(self) -> Peer:
        return self.core.zab

    @property
    def tree(self) -> DataTree:
        return self.core.tree

    @property
    def role(self) -> str:
        """``standalone``, ``leader``, ``follower`` or ``looking``."""
        return self.core.role

    @property
    def role_changes(self) -> list[str]:
        return self.core.role_changes

    @property
    def is_serving(self) -> bool:
        return self.core.is_serving

    async def wait_serving(self) -> None:
        """Wait until this server serves clients (it leads or follows an established leader)."""
        while not self.core.is_serving:
            await self._ready.wait()

    def status(self) -> dict[str, Any]:
        """Role, zxid, counts: what ``coord status`` shows."""
        status = self.core.status()
        status["address"] = self.connect_string
        status["snapshots_taken"] = self.snapshots_taken
        if self.config.ensemble is not None:
            status["peer_auth"] = peer_auth_mode(self.config)
        try:
            status["log"] = self._log.stats()
        except CoordError:
            status["log"] = {"state": "being reopened after a storage error"}
        if self.last_storage_error:
            status["last_storage_error"] = self.last_storage_error
        return status

    # --- for embedding and tests ------------------------------------------------------
    #
    # The whole surface the test ensemble's fault hooks (coord.testing.faults) use, besides
    # ``core``, ``transport`` and the constructor's ``peer_gate``: they subclass Server and
    # build it through open_server's ``server_type``. Nothing in the server calls these for
    # itself but ``admits_clients``.

    def close_client_connections(self) -> None:
        """Close every client connection now, as if the network dropped them. Sessions live
        on: their clients reconnect (here or elsewhere) within the session timeout."""
        for conn in list(self._conns.values()):
            conn.scope.cancel()

    def admits_clients(self) -> bool:
        """Whether a new client connection is taken (True). A subclass may refuse them for a
        while: a refused connection is closed before its handshake is read."""
        return True

    def drive(self, step: Callable[[ServerCore, int], T]) -> T:
        """Give the core an input from outside the shell's own tasks and carry out what it asks.

        Calls ``step(core, now_ms)`` on the trio thread (the core's inputs all take the
        time), then does at once what the core asked for; returns what ``step`` returned.
        E.g. ``server.drive(lambda core, now_ms: core.expire_session(session_id, now_ms))``.
        """
        result = step(self.core, self._now_ms())
        self._carry_out()
        return result

    def reload_tls(self) -> None:
        """Load the TLS certificates again (SIGHUP): new connections and links use them."""
        if self.client_tls is not None:
            self.client_tls.reload()
        if self.transport is not None and self.transport.tls is not None:
            self.transport.tls.reload()

    async def take_snapshot(self) -> int:
        """Snapshot the tree now; returns the zxid it covers."""
        return await self._snapshot()

    # --- the pump ---------------------------------------------------------------------

    @staticmethod
    def _now_ms() -> int:
        return int(trio.current_time() * 1000)

    def _on_peer_message(self, source: int, data: bytes) -> None:
        # A ProtocolError (a malformed message) makes the transport close this link only.
        self.core.peer_message(source, data, self._now_ms())
        self._carry_out()

    def _on_peer_link_down(self, source: int) -> None:
        self.core.peer_link_down(source, self._now_ms())
        self._carry_out()

    def _carry_out(self) -> None:
        """Do what the core asked since the last time."""
        out: CoreOutput = self.core.take_output()
        conns = self._conns
        for conn_id, frame in out.frames:
            conn = conns.get(conn_id)
            if conn is not None:
                conn.push(frame)
        for conn_id in out.close:
            conn = conns.get(conn_id)
            if conn is not None:
                conn.close_soon()
        for conn_id in out.abort:
            conn = conns.get(conn_id)
            if conn is not None:
                conn.outbox.clear()
                conn.scope.cancel()
        for conn_id in out.resume:
            conn = conns.get(conn_id)
            if conn is not None:
                conn.resume.set()
        transport = self.transport
        if transport is not None:
            for target, reason in out.disconnect:
                transport.disconnect(target, reason)
            for target, data in out.send:
                transport.send(target, data)
        if out.persist:
            self._records.extend(out.persist)
            self._records_wakeup.set()
        if out.snapshot_due:
            self._snapshot_wakeup.set()
        if out.serving_changed:
            if self.core.is_serving:
                self._ready.set()
            else:
                self._ready = trio.Event()

    # --- tasks ------------------------------------------------------------------------

    async def _serve_records(self) -> None:
        """Group commit: everything ZAB asked to persist while the last write ran goes into the next."""
        while True:
            await self._records_wakeup.wait()
            self._records_wakeup = trio.Event()
            records = self._records
            if not records:
                continue
            self._records = []
            try:
                async with self._log_lock:
                    installed = await trio.to_thread.run_sync(write_records, self._log, self._snapshots, records)
            except (StorageError, CoordError) as error:
                await self._storage_failed(error)
                continue
            self._storage_failures = 0
            if installed is not None:
                self._durable.hold_tree(installed)  # the core installs it as persisted() reports the SNAP
            self.core.persisted(records[-1].seq, self._now_ms())
            self._carry_out()

    async def _storage_failed(self, error: CoordError) -> None:
        """The disk refused a write: nothing after the last durable record is written.

        The core drops its in-memory ZAB state (see :meth:`ServerCore.storage_failed`);
        the shell reopens the log when it refuses writes, and the core rejoins from what
        is durable. A standalone server re-elects itself at once (that writes its new epoch).
        """
        self.last_storage_error = str(error)
        self._storage_failures += 1
        # Back off while the disk keeps failing (a full disk): each attempt costs a
        # reopened log, an election or a DIFF, a failed commit and log lines, and they
        # came back to back, hundreds a second. The first retry is at once.
        delay = min(STORAGE_RETRY_MAX_S, STORAGE_RETRY_MIN_S * 2 ** (self._storage_failures - 1))
        delay = 0.0 if self._storage_failures == 1 else delay
        log.error(
            "storage write failed: %s; rejoining from the durable state%s",
            error,
            f" in {delay:.2f} s (failure {self._storage_failures} in a row)" if delay else "",
        )
        self._records = []
        self.core.storage_failed(error)
        self._carry_out()
        if delay:
            await trio.sleep(delay)  # the core is suspended meanwhile: writes get the storage error
        if isinstance(error, StorageError) or self._log.refuses_writes:
            # After an I/O error (or a full disk) the log refuses writes until reopened.
            # The snapshotter's purge must not touch it meanwhile.
            async with self._log_lock:
                await trio.to_thread.run_sync(self._log.close)
                self._log = await trio.to_thread.run_sync(
                    lambda: TxnLog.open(self.config.data_dir / "log", map_bytes=self.config.log_map_bytes)
                )
        self._durable = LogDurableState(
            self._log,
            self._durable.snapshot_zxid,
            lambda: self.core.tree,
            snapshots=self._snapshots,
            applied_zxid=self._durable.applied_zxid(),
        )
        self.core.rejoin(self._durable, self._now_ms())
        self._carry_out()

    async def _serve_snapshots(self) -> None:
        while True:
            await self._snapshot_wakeup.wait()
            self._snapshot_wakeup = trio.Event()
            try:
                await self._snapshot()
            except (OSError, CoordError) as error:
                log.error("snapshot failed (the log still holds everything): %s", error)

    async def _snapshot(self) -> int:
        # The image is a shallow copy taken on the trio thread (nodes are immutable),
        # so serialising it in a worker thread sees one consistent zxid.
        self.core.snapshot_taken()
        image = self.tree.image()
        # Serialised a chunk of nodes at a time while it is written: a 200 MB tree's
        # snapshot never holds its whole image in memory.
        path = await trio.to_thread.run_sync(
            self._snapshots.write_pieces, image.last_zxid, DataTree.image_pieces(image)
        )
        self.core.snapshot_written(path.stat().st_size)
        await trio.to_thread.run_sync(self._snapshots.purge, self.config.snapshots_retained)
        retained = await trio.to_thread.run_sync(self._snapshots.list)
        if retained:
            # Keep the log after the OLDEST retained snapshot, so recovery can fall
            # back to it if a newer one turns out to be damaged. (A follower that
            # needs older entries gets a SNAP.) The purge is a write too: it takes
            # its turn with the record writer.
            oldest = retained[0][0]
            async with self._log_lock:
                await trio.to_thread.run_sync(self._log.purge_through, min(oldest, self._log.last_zxid))
        self.snapshots_taken += 1
        log.info("snapshot at zxid %#x taken", image.last_zxid)
        return image.last_zxid

    async def _serve_zab_ticks(self) -> None:
        while True:
            await trio.sleep(self._zab_tick_s)
            self.core.zab_tick(self._now_ms())
            self._carry_out()

    async def _serve_session_ticks(self) -> None:
        interval = self.config.tick_ms / 1000
        while True:
            await trio.sleep(interval)
            self.core.session_tick(self._now_ms())
            self._carry_out()


UNAUTHENTICATED_PEERS_WARNING = (
    "!!! THE PEERS OF THIS ENSEMBLE ARE NOT AUTHENTICATED: anyone who can reach a peer port can join "
    "as a server, vote, and read or change every znode. Set [ensemble] secret_file (the same secret on "
    "every server: `openssl rand -hex 32 > FILE`) or [tls] peers = true. !!!"
)


def peer_auth_mode(config: ServerConfig) -> str:
    """How this server's peers authenticate: ``tls`` (certificates), ``secret`` or ``none``."""
    if config.tls is not None and config.tls.peers:
        return "tls"
    return config.ensemble.peer_auth if config.ensemble is not None else "none"


@contextlib.asynccontextmanager
async def open_server(
    config: ServerConfig,
    *,
    client_listener: trio.SocketListener | None = None,
    peer_listener: trio.SocketListener | None = None,
    server_type: type[Server] = Server,
) -> AsyncIterator[Server]:
    """Recover the state under ``config.data_dir`` and serve until the block ends.

    Yields the running :class:`Server`, already listening (``server.address``). A
    standalone server is serving by then; a member of an ensemble serves once ZAB
    has an established leader (``await server.wait_serving()``).

    Args:
        config: the server's configuration.
        client_listener, peer_listener: pre-bound listeners to use instead of binding
            the configured addresses (the embedded test ensemble binds port 0 for every
            server first, then writes the real ports into each server's configuration).
        server_type: the :class:`Server` subclass to run (the test ensemble's adds
            fault hooks: :mod:`coord.testing.faults`).

    Raises:
        coord.recovery.RecoveryError: the data directory is damaged beyond what can
            be recovered without losing acknowledged writes.
        RuntimeError: Python runs with ``-O`` (see :data:`OPTIMIZED_REFUSAL`).
    """
    if not __debug__:
        raise RuntimeError(OPTIMIZED_REFUSAL)
    # A standalone server replays its log at start, as ZooKeeper's does: it is its own
    # quorum, so everything it logged is committed (and as the leader of its next epoch
    # it would deliver its whole log anyway), and replaying here, in the recovery thread,
    # costs a third of delivering it through ZAB and the pipeline. An ensemble member
    # may hold proposals a new leader truncates: ZAB delivers its log (rule 4).
    replay = config.ensemble is None
    recovered = await trio.to_thread.run_sync(
        lambda: recover(config.data_dir, log_map_bytes=config.log_map_bytes, replay=replay)
    )
    server = server_type(config, recovered)
    if config.ensemble is not None and peer_auth_mode(config) == "none":
        log.warning(UNAUTHENTICATED_PEERS_WARNING)
    try:
        if client_listener is not None:
            listeners = [client_listener]
        else:
            listeners = await trio.open_tcp_listeners(config.listen_port, host=config.listen_host)
        async with trio.open_nursery() as nursery:
            server.address = listeners[0].socket.getsockname()[:2]
            nursery.start_soon(server._serve_records)
            nursery.start_soon(server._serve_zab_ticks)
            nursery.start_soon(server._serve_session_ticks)
            nursery.start_soon(server._serve_snapshots)
            transport = server.transport
            if transport is not None:
                await nursery.start(
                    lambda task_status: transport.serve(listener=peer_listener, task_status=task_status)
                )
            nursery.start_soon(trio.serve_listeners, server._handle, listeners)
            server.core.start(server._now_ms())  # the first election at once
            server._carry_out()
            log.info("server %d: clients on %s", config.server_id, server.connect_string)
            if server.is_standalone:
                # A quorum of one: it elects itself as soon as its epoch is on disk.
                with trio.fail_after(60):
                    await server.wait_serving()
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
    finally:
        # Shielded: a cancelled (killed) server must still let go of its LMDB files,
        # so that it can be started again in this process.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server._log.close)


async def serve(config: ServerConfig, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a server until cancelled; ``task_status.started(server)`` once listening."""
    async with open_server(config) as server:
        task_status.started(server)
        await trio.sleep_forever()
