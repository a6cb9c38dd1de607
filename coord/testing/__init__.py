"""An embedded ensemble for tests: real servers on loopback ephemeral ports, temp data dirs.

::

    async with open_ensemble(3) as ensemble:            # in this process (the default)
        await ensemble.wait_for_leader()
        async with client.connect(ensemble.connect_string) as zk:
            ...
        await ensemble.kill(ensemble.leader_id())       # as kill -9
        await ensemble.wait_for_leader()

    async with open_ensemble(3, processes=True) as ensemble:   # one OS process per server
        ensemble.pause(2)                                        # SIGSTOP ... SIGCONT
        ensemble.resume(2)

    with EnsembleThread(size=3) as ensemble:            # from code that is not trio
        connect_to(ensemble.connect_string)
        ensemble.kill(ensemble.wait_for_leader())

Two ways to run the servers
    In-process (default): every server is the real one (:func:`coord.server.open_server`)
    as a task of the caller's trio loop, with real sockets on 127.0.0.1, real LMDB files
    and real ZAB between them. ``kill`` cancels the server's task: nothing more reaches
    its disk, as with ``kill -9`` (every acknowledged write was already fsynced), and its
    sockets close at once. Fast to start, and the test can reach into each
    :class:`~coord.server.Server` (``ensemble.server(1).tree``); ``isolate`` and
    ``expire_session(session_id)`` use the server's fault hooks
    (:class:`~coord.testing.faults.FaultableServer`). See :mod:`coord.testing.inprocess`.

    Processes (``processes=True``): every server is ``python -m coord.testing.serve
    --config FILE`` (``coord serve`` with the fault hooks) with a generated TOML file (the
    ``[ensemble]`` table of :mod:`coord.config`). ``kill`` is SIGKILL, ``pause``/``resume``
    are SIGSTOP/SIGCONT, and the servers really run in parallel. Roles are learnt over the
    client port (:mod:`coord.status`), polled in the background, so
    :meth:`Ensemble.leader_id` may lag a change by ~0.1 s; :meth:`Ensemble.wait_for_leader`
    always asks afresh. Each server's output goes to ``server-N.log`` beside its data
    directory (:meth:`ServerProcess.log_tail`). See :mod:`coord.testing.processes`.

    ``isolate``/``heal`` of a process send it SIGUSR1/SIGUSR2, which its fault hooks turn
    into the same isolation: its peer links close and its clients are dropped until
    healed. ``expire_session`` works in both modes when given the
    client (or its ``client_id``): a process ensemble closes the session from a second
    connection that presents its credentials (what Curator's ``KillSession`` does), which
    removes its ephemerals and makes the client's next reconnect see the expiry
    (:mod:`coord.testing.sessions`).

Controls, both modes: ``kill``/``stop``/``restart``, ``wait_for_leader`` (a leader and
every running server serving), ``wait_converged`` (every server at the same zxid),
``status(i)`` (what ``coord status`` shows), ``expire_session`` and ``restore`` (undo
every fault: resume, heal, restart, then wait for a leader). A 3-server ensemble is
ready (leader elected, all serving) in about 0.2 s in-process and 1.5-2.5 s as
processes (mostly interpreter start-up).

Ports: in-process servers bind port 0 and keep the ports they got across restarts.
Process servers need their ports before they start (each must be written into every
server's file), so they get free ports picked below the kernel's ephemeral range (where
no outgoing connection can take one between the pick and the bind); a start that still
loses the race is retried on new ports.

Temporary data directories are removed when the block ends unless ``data_dir`` is given.

:class:`EnsembleThread` runs an ensemble on its own trio loop in a background thread, for
code that is not trio: a plain pytest or unittest test, or an asyncio program
(:mod:`coord.testing.thread`).

Also here: the pytest plugin (:mod:`coord.testing.pytest_plugin`), and the checkers of
recorded histories, against the servers' logs (:mod:`coord.testing.history`) and
black-box (:mod:`coord.testing.linearizability`).

The names below are imported on first use, so that importing the pytest plugin (which
pytest does at start-up wherever coord is installed) loads no server code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coord.testing.common import HOST as HOST
    from coord.testing.common import SessionTarget as SessionTarget
    from coord.testing.ensemble import Ensemble as Ensemble
    from coord.testing.ensemble import open_ensemble as open_ensemble
    from coord.testing.faults import FaultableServer as FaultableServer
    from coord.testing.processes import ServerProcess as ServerProcess
    from coord.testing.sessions import close_session as close_session
    from coord.testing.thread import EnsembleThread as EnsembleThread
    from coord.testing.thread import SharedEnsemble as SharedEnsemble


_EXPORTS = frozenset(
    {
        "HOST",
        "SessionTarget",
        "Ensemble",
        "open_ensemble",
        "FaultableServer",
        "ServerProcess",
        "close_session",
        "EnsembleThread",
        "SharedEnsemble",
    }
)


def __getattr__(name: str) -> object:
    # Checked first: ``from coord.testing import thread`` below asks for the submodules
    # as attributes, and must be told they are none.
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # On first use (see the module doc); then they are plain attributes.
    from coord.testing import common, ensemble, faults, processes, sessions, thread

    exports: dict[str, object] = {
        "HOST": common.HOST,
        "SessionTarget": common.SessionTarget,
        "Ensemble": ensemble.Ensemble,
        "open_ensemble": ensemble.open_ensemble,
        "FaultableServer": faults.FaultableServer,
        "ServerProcess": processes.ServerProcess,
        "close_session": sessions.close_session,
        "EnsembleThread": thread.EnsembleThread,
        "SharedEnsemble": thread.SharedEnsemble,
    }
    globals().update(exports)
    return exports[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "Ensemble",
    "EnsembleThread",
    "FaultableServer",
    "ServerProcess",
    "SessionTarget",
    "SharedEnsemble",
    "close_session",
    "open_ensemble",
]
