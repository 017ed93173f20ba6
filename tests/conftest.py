"""Shared test fixtures: paths of the shared reference data and of the bundled assets; grid helpers."""

from pathlib import Path

import numpy as np
import pytest

import graphreg  # noqa: F401  (before any test imports torch: idle OpenMP threads sleep, docs/threads.md)
from graphreg.core.geometry import Grid

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DEMO_PAIR = ROOT / "assets" / "demo"


def grid_centre_mm(grid: Grid) -> np.ndarray:
    """World mm ``(x, y, z)`` of the centre of ``grid``'s voxel block."""
    return grid.voxel_to_world((np.array(grid.shape) - 1) / 2.0)


def grid_centred_on(reference: Grid, shape, spacing, direction) -> Grid:
    """A grid of ``shape``, ``spacing`` and ``direction`` whose centre is ``reference``'s centre."""
    grid = Grid(shape, spacing=spacing, direction=direction)
    return Grid(grid.shape, grid.spacing, tuple(grid_centre_mm(reference) - grid_centre_mm(grid)), grid.direction)


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

    from graphreg.apps.cli import main

    def run(args):
        monkeypatch.setattr(sys, "argv", ["graphreg", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err

    return run
