"""Shared test fixtures: paths of the shared reference data and of the bundled assets."""

from pathlib import Path

import pytest

import graphreg  # noqa: F401  (before any test imports torch: idle OpenMP threads sleep, docs/threads.md)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DEMO_PAIR = ROOT / "assets" / "demo"


@pytest.fixture(scope="session")
def dirlab_dir() -> Path:
    """The real DIR-Lab landmark files (../shared/data/dirlab)."""
    path = SHARED_DATA / "dirlab"
    if not path.is_dir():
        pytest.fail(f"reference data missing: {path} (the project expects ../shared beside the repository)")
    return path


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run ``graphreg ARGS`` through its console-script entry point in this process; the fixture
    returns a function ``args -> (exit code, stdout, stderr)``."""
    import sys

    from graphreg.cli import main

    def run(args):
        monkeypatch.setattr(sys, "argv", ["graphreg", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err

    return run
