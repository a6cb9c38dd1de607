"""Ensembles for code that is not trio: :class:`EnsembleThread`, and its async face :class:`SharedEnsemble`.

:class:`EnsembleThread` runs an ensemble (:func:`~coord.testing.open_ensemble`) on its
own trio loop in a background thread, driven by blocking calls: for a plain pytest or
unittest test, or an asyncio program. :class:`SharedEnsemble` gives trio code on another
loop the async methods of :class:`~coord.testing.Ensemble` over such a thread (the pytest
plugin shares one ensemble between tests this way).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import outcome
import trio

from coord.testing.common import SessionTarget
from coord.testing.ensemble import Ensemble, open_ensemble
from coord.testing.processes import PROCESS_STOP_GRACE_S

T = TypeVar("T")


class EnsembleThread:
    """An ensemble on its own trio loop in a background thread, driven by blocking calls.

    ::

        with EnsembleThread(size=3) as ensemble:      # returns once a leader serves
            run_my_code_against(ensemble.connect_string)
            ensemble.kill(ensemble.leader_id())
            ensemble.wait_for_leader()

    For code that is not trio: a plain pytest or unittest test, or an asyncio program
    (call the blocking methods through ``asyncio.to_thread``). Takes the arguments of
    :func:`open_ensemble`. Every method runs in the ensemble's loop and blocks until it
    is done there; :meth:`run` and :meth:`run_sync` reach the :class:`Ensemble` itself.

    Why a thread: the servers are trio tasks and need a trio loop that keeps running
    while the caller's own code (a sync test, or an asyncio loop) holds the main thread.
    ``trio.to_thread`` only works from inside a trio run, and a loop cannot share a
    thread with another, so the one place coord starts a bare thread is here: it owns
    one ``trio.run`` for the ensemble's lifetime, and every call crosses into it through
    ``trio.from_thread`` (thread-safe by design). The servers' own disk work still runs
    through ``trio.to_thread`` inside that loop. (The other way out, a subprocess per
    server, is ``processes=True``, which still needs a loop to supervise them.)
    """

    def __init__(self, size: int = 3, *, start_timeout: float = 60.0, **options: Any) -> None:
        self._size = size
        self._options = options
        self._start_timeout = start_timeout
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ensemble: Ensemble | None = None
        self._error: BaseException | None = None
        self.connect_string = ""
        """``host:port,...`` of every server (stable across kills and restarts)."""
        self.server_ids: list[int] = []

    # --- lifetime ---------------------------------------------------------------------

    def start(self) -> EnsembleThread:
        """Start the servers and wait until a leader serves (at most ``start_timeout`` s).

        Raises:
            Whatever starting the ensemble raised, or TimeoutError.
        """
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._main, name="coord-ensemble", daemon=True)
        self._thread.start()
        if not self._started.wait(self._start_timeout + 30):
            raise TimeoutError("the ensemble thread did not start")
        if self._error is not None:
            self._thread.join(30)
            raise self._error
        return self

    def close(self) -> None:
        """Stop every server and the thread. Idempotent."""
        thread = self._thread
        if thread is None:
            return
        if self._token is not None and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        thread.join(PROCESS_STOP_GRACE_S * 2 + 30)
        self._thread = None
        self._ensemble = None
        self._token = None
        if thread.is_alive():
            raise RuntimeError("the ensemble thread did not stop")

    def __enter__(self) -> EnsembleThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as error:  # handed to the thread that called start()
            self._error = error
        finally:
            self._started.set()

    async def _serve(self) -> None:
        async with open_ensemble(self._size, **self._options) as ensemble:
            await ensemble.wait_for_leader(self._start_timeout)
            self._ensemble = ensemble
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            self.connect_string = ensemble.connect_string
            self.server_ids = ensemble.server_ids
            self._started.set()
            await self._stop.wait()

    # --- reaching the loop ------------------------------------------------------------

    def run(self, async_fn: Callable[[Ensemble], Awaitable[T]]) -> T:
        """Run ``await async_fn(ensemble)`` in the ensemble's loop and return its result.

        Blocks until it is done, so not from a trio loop's thread (trio refuses): trio
        code uses :meth:`async_handle`, whose methods wait in a worker thread.
        """
        ensemble, token = self._loop()
        return trio.from_thread.run(async_fn, ensemble, trio_token=token)

    def run_sync(self, fn: Callable[[Ensemble], T]) -> T:
        """Run ``fn(ensemble)`` in the ensemble's loop and return its result.

        Safe from any thread, a trio loop's included (``trio.from_thread`` refuses
        those): it blocks the caller only for as long as ``fn`` runs, so keep ``fn`` quick.
        """
        ensemble, token = self._loop()
        if threading.current_thread() is self._thread:
            return fn(ensemble)
        done = threading.Event()
        result: list[outcome.Outcome[T]] = []

        def call() -> None:
            try:
                result.append(outcome.capture(fn, ensemble))
            finally:
                done.set()

        token.run_sync_soon(call)
        if not done.wait(60):
            raise TimeoutError("the ensemble's loop did not answer within 60 s")
        return result[0].unwrap()

    def _loop(self) -> tuple[Ensemble, trio.lowlevel.TrioToken]:
        if self._ensemble is None or self._token is None:
            raise RuntimeError("the ensemble is not running (use `with EnsembleThread(...) as ensemble:`)")
        return self._ensemble, self._token

    # --- the Ensemble's methods, blocking ---------------------------------------------

    @property
    def processes(self) -> bool:
        return bool(self._options.get("processes", False))

    def leader_id(self) -> int | None:
        return self.run_sync(lambda ensemble: ensemble.leader_id())

    def wait_for_leader(self, timeout: float = 30.0) -> int:
        return self.run(lambda ensemble: ensemble.wait_for_leader(timeout))

    def wait_converged(self, timeout: float = 30.0) -> int:
        return self.run(lambda ensemble: ensemble.wait_converged(timeout))

    def kill(self, server_id: int) -> None:
        self.run(lambda ensemble: ensemble.kill(server_id))

    def stop(self, server_id: int) -> None:
        self.run(lambda ensemble: ensemble.stop(server_id))

    def restart(self, server_id: int) -> None:
        """Start a stopped server again; returns once it listens (see :meth:`wait_for_leader`)."""
        self.run(lambda ensemble: _discard(ensemble.restart(server_id)))

    def pause(self, server_id: int) -> None:
        self.run_sync(lambda ensemble: ensemble.pause(server_id))

    def resume(self, server_id: int) -> None:
        self.run_sync(lambda ensemble: ensemble.resume(server_id))

    def isolate(self, server_id: int) -> None:
        self.run_sync(lambda ensemble: ensemble.isolate(server_id))

    def heal(self) -> None:
        self.run_sync(lambda ensemble: ensemble.heal())

    def expire_session(self, session: SessionTarget) -> None:
        """As :meth:`Ensemble.expire_session`; with a client of another loop, pass its ``client_id``."""
        if not isinstance(session, int | tuple):
            session = session.client_id  # read here: the client belongs to the caller's loop
        self.run(lambda ensemble: ensemble.expire_session(session))

    def restore(self, timeout: float = 60.0) -> int:
        return self.run(lambda ensemble: ensemble.restore(timeout))

    def status(self, server_id: int) -> dict[str, Any]:
        return self.run(lambda ensemble: ensemble.status(server_id))

    def is_running(self, server_id: int) -> bool:
        return self.run_sync(lambda ensemble: ensemble.is_running(server_id))

    def data_dir(self, server_id: int) -> Path:
        return self.run_sync(lambda ensemble: ensemble.data_dir(server_id))

    def connect_string_of(self, server_id: int) -> str:
        return self.run_sync(lambda ensemble: ensemble.connect_string_of(server_id))

    def server_id_at(self, address: tuple[str, int]) -> int:
        return self.run_sync(lambda ensemble: ensemble.server_id_at(address))

    def async_handle(self) -> SharedEnsemble:
        """The async face of this ensemble, for trio code running on another loop."""
        return SharedEnsemble(self)


async def _discard(awaitable: Awaitable[object]) -> None:
    await awaitable


class SharedEnsemble:
    """An :class:`EnsembleThread` seen from trio code on another loop: the methods of
    :class:`Ensemble`, awaited (each one waits in a worker thread for the ensemble's loop).

    The pytest plugin hands this out when the ensemble is shared between tests
    (``coord_ensemble_scope`` wider than ``function``): trio fixtures live in one test's
    loop, so a shared ensemble must run in a loop of its own.
    """

    def __init__(self, thread: EnsembleThread) -> None:
        self.thread = thread

    @property
    def connect_string(self) -> str:
        return self.thread.connect_string

    @property
    def server_ids(self) -> list[int]:
        return self.thread.server_ids

    @property
    def processes(self) -> bool:
        return self.thread.processes

    def leader_id(self) -> int | None:
        return self.thread.leader_id()

    def connect_string_of(self, server_id: int) -> str:
        return self.thread.connect_string_of(server_id)

    def server_id_at(self, address: tuple[str, int]) -> int:
        return self.thread.server_id_at(address)

    async def wait_for_leader(self, timeout: float = 30.0) -> int:
        return await trio.to_thread.run_sync(self.thread.wait_for_leader, timeout)

    async def wait_converged(self, timeout: float = 30.0) -> int:
        return await trio.to_thread.run_sync(self.thread.wait_converged, timeout)

    async def kill(self, server_id: int) -> None:
        await trio.to_thread.run_sync(self.thread.kill, server_id)

    async def stop(self, server_id: int) -> None:
        await trio.to_thread.run_sync(self.thread.stop, server_id)

    async def restart(self, server_id: int) -> None:
        await trio.to_thread.run_sync(self.thread.restart, server_id)

    def pause(self, server_id: int) -> None:
        self.thread.pause(server_id)

    def resume(self, server_id: int) -> None:
        self.thread.resume(server_id)

    def isolate(self, server_id: int) -> None:
        self.thread.isolate(server_id)

    def heal(self) -> None:
        self.thread.heal()

    async def expire_session(self, session: SessionTarget) -> None:
        if not isinstance(session, int | tuple):
            session = session.client_id
        await trio.to_thread.run_sync(self.thread.expire_session, session)

    async def restore(self, timeout: float = 60.0) -> int:
        return await trio.to_thread.run_sync(self.thread.restore, timeout)

    async def status(self, server_id: int) -> dict[str, Any]:
        return await trio.to_thread.run_sync(self.thread.status, server_id)


__all__ = ["EnsembleThread", "SharedEnsemble"]
