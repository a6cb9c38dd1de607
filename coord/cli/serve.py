"""``coord serve``: run one server until SIGINT or SIGTERM.

It checks its addresses before starting and says in one line why it could not start
(:mod:`coord.server.run`, which does the work).
"""

from __future__ import annotations

import argparse
import sys

from coord.config import load_config
from coord.server.run import run_server


def serve(args: argparse.Namespace) -> int:
    """``coord serve``: run one server until SIGINT or SIGTERM.

    Raises:
        ConfigError: the configuration (file or flags) is wrong.
    """
    if not __debug__:
        from coord.server import OPTIMIZED_REFUSAL

        print(f"coord: {OPTIMIZED_REFUSAL}", file=sys.stderr)
        return 1
    overrides: dict[str, object] = {}
    if args.data_dir is not None:
        overrides["server.data_dir"] = args.data_dir
    if args.listen is not None:
        overrides["server.listen"] = args.listen
    return run_server(load_config(args.config, overrides=overrides))
