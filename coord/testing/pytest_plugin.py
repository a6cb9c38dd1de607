"""pytest fixtures that start a real coord ensemble: ``coord_ensemble`` and ``coord_client``.

Installed with coord (the ``pytest11`` entry point ``coord``), so a project that depends
on coord only writes its tests::

    import pytest

    @pytest.mark.coord_ensemble(size=3)
    async def test_config_survives_the_leader(coord_ensemble, coord_client):
        await coord_client.create("/app/config", b"v1", makepath=True)
        await coord_ensemble.kill(coord_ensemble.leader_id())
        await coord_ensemble.wait_for_leader()
        data, _stat = await coord_client.retry(coord_client.get, "/app/config")
        assert data == b"v1"

Fixtures
    ``coord_ensemble``
        A running ensemble whose leader is elected (a trio fixture: the test must be a
        trio test, with pytest-trio). With the default function scope it is a
        :class:`coord.testing.Ensemble` in the test's own loop; with a wider scope it is
        a :class:`coord.testing.SharedEnsemble` with the same async methods, backed by
        an ensemble on its own loop in a thread (trio fixtures cannot outlive a test).
        After each test of a shared ensemble, every server it stopped, paused or cut
        off is brought back.
    ``coord_client``
        A ``client.Client`` with a session on that ensemble (closed after the test).
    ``coord_ensemble_thread``
        The ensemble as a :class:`coord.testing.EnsembleThread` with blocking methods,
        for tests that are not trio (plain functions, unittest, asyncio).

Choosing the ensemble
    The marker ``@pytest.mark.coord_ensemble(size=3, processes=False, **options)`` takes
    the arguments of :func:`coord.testing.open_ensemble`; on a test, a class or a module
    (``pytestmark``). The ini options ``coord_ensemble_size`` (3),
    ``coord_ensemble_processes`` (false) and ``coord_ensemble_scope`` set the defaults.

    ``coord_ensemble_scope`` is ``function`` (a fresh ensemble per test: about 0.3-2.5 s
    to start and elect, in-process), or ``class``, ``module``, ``package``, ``session``:
    one ensemble shared by the tests of that scope, configured by the marker found on
    that scope's node (a module's ``pytestmark``, a class's marker). Shared ensembles
    keep their data between tests: use distinct paths.

The plugin imports coord's server code only when a fixture is used, so it costs
nothing in test runs that do not use it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Literal

import pytest

if TYPE_CHECKING:
    import client
    from coord.testing import Ensemble, EnsembleThread, SharedEnsemble

Scope = Literal["session", "package", "module", "class", "function"]
SCOPES: tuple[Scope, ...] = ("function", "class", "module", "package", "session")
MARKER = "coord_ensemble"
START_TIMEOUT_S = 60.0
RESTORE_TIMEOUT_S = 60.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "coord_ensemble_scope",
        "scope of the coord_ensemble fixture: function (default), class, module, package or session",
        default="function",
    )
    parser.addini("coord_ensemble_size", "servers in the coord_ensemble fixture (default 3)", default="3")
    parser.addini(
        "coord_ensemble_processes",
        "run the coord_ensemble servers as processes (default false: in the test's process)",
        type="bool",
        default=False,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(size=3, processes=False, **options): how to start the coord_ensemble fixture "
        "(the arguments of coord.testing.open_ensemble)",
    )


def _scope(fixture_name: str, config: pytest.Config) -> Scope:
    """The scope of the shared ensemble, from the ``coord_ensemble_scope`` ini option."""
    text = str(config.getini("coord_ensemble_scope") or "function").strip()
    for scope in SCOPES:
        if scope == text:
            return scope
    raise pytest.UsageError(f"coord_ensemble_scope: must be one of {', '.join(SCOPES)}, got {text!r}")


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """open_ensemble's arguments: the ini defaults, then the nearest marker's."""
    config = request.config
    size_text = str(config.getini("coord_ensemble_size")).strip()
    try:
        size = int(size_text)
    except ValueError:
        raise pytest.UsageError(f"coord_ensemble_size: must be a number, got {size_text!r}") from None
    options: dict[str, Any] = {"size": size, "processes": bool(config.getini("coord_ensemble_processes"))}
    marker = request.node.get_closest_marker(MARKER)
    if marker is not None:
        if marker.args:
            options["size"] = marker.args[0]
        options.update(marker.kwargs)
    return options


@pytest.fixture(scope=_scope)
def _coord_shared_ensemble(request: pytest.FixtureRequest) -> Iterator[EnsembleThread | None]:
    """The ensemble shared at the configured scope; None for function scope."""
    if request.scope == "function":
        yield None
        return
    from coord.testing import EnsembleThread

    options = _options(request)
    size = options.pop("size")
    with EnsembleThread(size, start_timeout=START_TIMEOUT_S, **options) as ensemble:
        yield ensemble


async def coord_ensemble(
    request: pytest.FixtureRequest, _coord_shared_ensemble: EnsembleThread | None
) -> AsyncIterator[Ensemble | SharedEnsemble]:
    """A running coord ensemble with an elected leader (see the module doc)."""
    import trio

    if _coord_shared_ensemble is not None:
        handle = _coord_shared_ensemble.async_handle()
        try:
            yield handle
        finally:
            with trio.CancelScope(shield=True):
                await handle.restore(RESTORE_TIMEOUT_S)
        return
    from coord.testing import open_ensemble

    options = _options(request)
    size = options.pop("size")
    async with open_ensemble(size, **options) as ensemble:
        await ensemble.wait_for_leader(START_TIMEOUT_S)
        yield ensemble


async def coord_client(coord_ensemble: Ensemble | SharedEnsemble) -> AsyncIterator[client.Client]:
    """A ``client.Client`` with a session on ``coord_ensemble``, closed after the test."""
    import client

    async with client.connect(coord_ensemble.connect_string, session_timeout=10.0) as zk:
        yield zk


# pytest-trio runs these in the test's trio loop: the marker below is what its
# trio_fixture decorator sets, written out so this module does not import pytest_trio
# (coord's users may not have it; only the trio fixtures need it).
coord_ensemble._force_trio_fixture = True  # type: ignore[attr-defined]
coord_client._force_trio_fixture = True  # type: ignore[attr-defined]
coord_ensemble = pytest.fixture(coord_ensemble)
coord_client = pytest.fixture(coord_client)


@pytest.fixture
def coord_ensemble_thread(
    request: pytest.FixtureRequest, _coord_shared_ensemble: EnsembleThread | None
) -> Iterator[EnsembleThread]:
    """The ensemble with blocking methods (:class:`coord.testing.EnsembleThread`), for
    tests that are not trio. Shares the ensemble of a wider ``coord_ensemble_scope``."""
    if _coord_shared_ensemble is not None:
        yield _coord_shared_ensemble
        _coord_shared_ensemble.restore(RESTORE_TIMEOUT_S)
        return
    from coord.testing import EnsembleThread

    options = _options(request)
    size = options.pop("size")
    with EnsembleThread(size, start_timeout=START_TIMEOUT_S, **options) as ensemble:
        yield ensemble
