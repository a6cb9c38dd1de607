"""``python -m coord.testing.serve --config FILE``: one server of a process ensemble.

What ``coord serve --config FILE`` does (the same code, :func:`coord.server.run.run_server`:
the same checks, output and exit statuses), with the fault hooks of
:mod:`coord.testing.faults`: SIGUSR1 cuts the server off from its peers and clients,
SIGUSR2 heals it. :class:`~coord.testing.ServerProcess` starts servers this way.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from coord.config import ConfigError, load_config
from coord.server import OPTIMIZED_REFUSAL
from coord.server.run import run_server
from coord.testing.faults import SIGNAL_HANDLERS, FaultableServer

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coord.testing.serve", description="one server of a test ensemble, with fault hooks"
    )
    parser.add_argument("--config", type=Path, required=True, help="TOML configuration file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not __debug__:
        print(f"coord: {OPTIMIZED_REFUSAL}", file=sys.stderr)
        return 1
    try:
        config = load_config(args.config)
        return run_server(config, server_type=FaultableServer, signal_handlers=SIGNAL_HANDLERS)
    except ConfigError as error:
        print(f"coord: configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
