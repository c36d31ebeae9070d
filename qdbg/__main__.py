"""`python -m qdbg`: the same command line as the `qdbg` script."""

from __future__ import annotations

import sys

from qdbg.cli import main

if __name__ == "__main__":
    sys.exit(main())
