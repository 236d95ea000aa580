"""The rich console the CLI prints its tables on.

On a terminal, rich fits a table to the terminal's width. Piped to a file or another
program there is no width to fit: a fixed guess (rich's 80 columns) wraps headers and cuts
names to "mcsf-bre…". Such output gets an unlimited width instead; tables still take only
the columns they need, so nothing is padded, wrapped or cut.
"""

from __future__ import annotations

import sys

PIPE_WIDTH = 10_000  # wide enough for any table kvsched prints, without a limit in practice


def stdout_console():
    """A rich Console on stdout: the terminal's width, or PIPE_WIDTH when stdout is not a terminal."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
