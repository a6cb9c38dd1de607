"""``python -m coord.cli``: the ``coord`` command."""

import sys

from coord.cli import main

if __name__ == "__main__":
    sys.exit(main())
