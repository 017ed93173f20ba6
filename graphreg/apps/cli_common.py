"""What every ``graphreg`` subcommand shares: the one way a command reports a bad input and stops,
its ``--threads`` option, and the command's start time."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer

_IMPORTED = time.perf_counter()


def process_age() -> float:
    """Seconds since this process started (Python start-up and imports included), from Linux's
    ``/proc/self/stat``; elsewhere, seconds since this module was imported."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError, IndexError):
        return time.perf_counter() - _IMPORTED


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr and end the command with exit ``code`` (2: bad input)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


#: help text of every command's ``--threads`` option
THREADS_HELP = ("CPU threads (default: $GRAPHREG_THREADS, else the cores this process may use); "
                "the count is recorded in report.json.")


REGION_HELP = ("Where the field is registered and trusted: 'lungs' (default: the registered field within "
               "region.margin_mm of the fixed lungs, decaying beyond to the body's translation) or 'body' (keypoint "
               "methods: the body outside the lungs registered too, sliding at the lung boundary, for dose warping). "
               "valid_mask.nii.gz marks the trusted part.")


def region_option(help: str = REGION_HELP):
    """The ``--region lungs|body`` option of a command that registers (``help``: its text)."""
    return typer.Option(None, "--region", metavar="lungs|body", help=help)


def threads_option(help: str = THREADS_HELP):
    """The ``--threads N`` option of a command that computes (``help``: its text)."""
    return typer.Option(None, "--threads", metavar="N", help=help)


@contextmanager
def command_threads(threads: Optional[str]) -> Iterator[int]:
    """Run a command's body with its thread count (:func:`graphreg.runtime.threads.use_threads`); yields the
    count. A bad ``--threads`` or ``$GRAPHREG_THREADS`` ends the command with one ``error:`` line."""
    from graphreg.errors import GraphregError
    from graphreg.runtime.threads import resolve_threads, use_threads

    try:
        count = resolve_threads(threads)
    except GraphregError as error:
        fail(str(error))
    with use_threads(count):
        yield count
