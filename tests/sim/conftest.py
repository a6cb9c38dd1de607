"""pytest options for the simulation tests.

``--seed N``   replay one seed: every test parametrized over ``seed`` runs with N only
               (the ``@pytest.mark.parametrize("seed", ...)`` list is replaced).
``--soak``     also run the tests marked ``soak`` (many more seeds and steps; with
               ``--seed N`` the soak test replays seed N at its length).
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("coord simulation")
    group.addoption("--seed", type=int, default=None, help="replay one simulation seed")
    group.addoption("--soak", action="store_true", default=False, help="run the long simulation soak tests")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: long simulation runs, only with --soak")


SOAK_SEEDS = range(10_000, 12_000)


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "soak_seed" in metafunc.fixturenames:
        # Generated here, not listed with parametrize, so that a normal run shows one
        # skipped test rather than thousands.
        seed = metafunc.config.getoption("--seed", default=None)
        soak = metafunc.config.getoption("--soak", default=False)
        metafunc.parametrize("soak_seed", [seed] if seed is not None else SOAK_SEEDS if soak else [])
        return
    seed = metafunc.config.getoption("--seed", default=None)
    if seed is None or "seed" not in metafunc.fixturenames:
        return
    definition = metafunc.definition
    # Drop the test's own seed list so that pytest's parametrize hook (which runs after
    # this one) does not see it, and run the requested seed instead.
    definition.own_markers = [
        marker
        for marker in definition.own_markers
        if not (marker.name == "parametrize" and marker.args and marker.args[0] == "seed")
    ]
    metafunc.parametrize("seed", [seed])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak", default=False):
        return
    skip = pytest.mark.skip(reason="soak test: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
