"""What every ``graphreg`` subcommand shares: the one way a command reports a bad input and stops."""

from __future__ import annotations

import typer


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr and end the command with exit ``code`` (2: bad input)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
