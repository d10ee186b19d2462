"""One shared rich console and progress-bar helper; library code never calls print()."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Only rank 0 of a distributed run talks; the other ranks would repeat every line.
CONSOLE = Console(width=120, stderr=False, quiet=int(os.environ.get("RANK", "0")) != 0)
# Errors go to stderr, so `pcas ... > log` still shows them and a pipe reading stdout never parses one.
ERRORS = Console(width=120, stderr=True, quiet=int(os.environ.get("RANK", "0")) != 0)


def progress(transient: bool = False) -> Progress:
    """A progress bar with count, elapsed and remaining time. Disabled on non-zero ranks of a distributed run."""
    disable = int(os.environ.get("RANK", "0")) != 0
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=CONSOLE,
        transient=transient,
        disable=disable,
    )
