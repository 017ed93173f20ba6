"""What every ``graphreg`` subcommand shares: the one way a command reports a bad input and stops,
and the command's start time."""

from __future__ import annotations

import os
import time
from pathlib import Path

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
