"""A result folder written by ``graphreg register`` / :meth:`Registration.save`, read back for use.

Convention:
    The forward field (fixed -> moving) is read from ``transform.h5`` (ITK transform file) or, in
    folders without one, from ``field.nii.gz`` / ``field.mha``; either lies on a grid covering the
    fixed image (the working lattice grown to cover it; older folders hold the fixed grid itself). The inverse
    (moving -> fixed, on the moving grid) is read from ``inverse_transform.h5`` when the folder has
    it, else computed once (:func:`graphreg.ops.inverse.invert_field`) on the moving grid recorded in
    ``report.json``. Directions: :mod:`graphreg.result.mapping`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional

from graphreg.result.mapping import TwoWayMapping
from graphreg.errors import GeometryError, InputFileError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid

#: the forward field's files, in the order they are looked for
FORWARD_FILES = ("transform.h5", "field.nii.gz", "field.mha")
INVERSE_FILE = "inverse_transform.h5"


def _read_field(path: Path) -> DisplacementField:
    from graphreg.io.fields import read_itk_field, read_itk_transform

    return read_itk_transform(path) if path.suffix == ".h5" else read_itk_field(path)


def _one_line(grid: Grid) -> str:
    return " ".join(grid.describe().split())


def _check_grid(path: Path, field: DisplacementField, grid: Grid, which: str) -> None:
    if not field.grid.same_as(grid, tol_mm=1e-3):
        raise GeometryError(f"{path}: expected a field on the {which} grid of report.json "
                            f"[{_one_line(grid)}], got [{_one_line(field.grid)}]")


def _check_covers(path: Path, field: DisplacementField, grid: Grid) -> None:
    if not field.grid.extended_to_cover(grid).same_as(field.grid, tol_mm=1e-3):
        raise GeometryError(f"{path}: expected a field covering the fixed grid of report.json "
                            f"[{_one_line(grid)}], got one on [{_one_line(field.grid)}]")


@dataclass(eq=False)
class RegistrationResult(TwoWayMapping):
    """A result folder: the forward field, the grids, the report; maps points and images both ways.

    Attributes:
        path: the folder.
        forward: forward field (fixed -> moving) as read, on a grid covering the fixed image.
        fixed_grid: the fixed image's grid (from ``report.json``).
        report: the folder's ``report.json``.
        moving_grid_or_none: the moving image's grid from ``report.json`` (None in folders written
            before it was recorded: then only a stored ``inverse_transform.h5`` gives the inverse).
    """

    path: Path
    forward: DisplacementField
    fixed_grid: Grid
    report: dict
    moving_grid_or_none: Optional[Grid]

    @cached_property
    def field(self) -> DisplacementField:
        """The forward field on the fixed grid (images are pulled through it)."""
        from graphreg.result.registration import resample_field

        return self.forward if self.forward.grid.same_as(self.fixed_grid) else \
            resample_field(self.forward, self.fixed_grid)

    @property
    def moving_grid(self) -> Grid:
        if self.moving_grid_or_none is not None:
            return self.moving_grid_or_none
        return self.inverse_field().grid

    @cached_property
    def _inverse(self) -> DisplacementField:
        stored = self.path / INVERSE_FILE
        if stored.is_file():
            inverse = _read_field(stored)
            if self.moving_grid_or_none is not None:
                _check_grid(stored, inverse, self.moving_grid_or_none, "moving")
            return inverse
        if self.moving_grid_or_none is None:
            raise InputFileError(f"{self.path}: the inverse needs {INVERSE_FILE} or the moving grid in "
                                 f"report.json; the folder has neither (re-run graphreg register --inverse)")
        from graphreg.ops.inverse import invert_field

        return invert_field(self.forward, self.moving_grid_or_none)[0]

    def inverse_field(self) -> DisplacementField:
        """The inverse field (moving -> fixed) on the moving grid: stored, or computed once."""
        return self._inverse

    def _point_field(self) -> DisplacementField:
        return self.forward

    def _image_field(self) -> DisplacementField:
        return self.field

    def _transform_field(self) -> DisplacementField:
        return self.forward


def load_result(path: str | os.PathLike) -> RegistrationResult:
    """Read a result folder (see the module docstring).

    Raises:
        InputFileError: the folder, its ``report.json`` or every forward field file is missing, or
            a file is unreadable.
        GeometryError: the forward field does not cover the fixed grid recorded in ``report.json``.
    """
    from graphreg.result.registration import grid_from_dict

    path = Path(path)
    if not path.is_dir():
        raise InputFileError(f"{path}: result folder not found")
    report_path = path / "report.json"
    if not report_path.is_file():
        raise InputFileError(f"{path}: not a graphreg result folder (no report.json)")
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        fixed_grid = grid_from_dict(report["fixed_grid"])
        moving_grid = grid_from_dict(report["moving_grid"]) if "moving_grid" in report else None
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise InputFileError(f"{report_path}: unreadable report ({type(error).__name__}: {error})") from error
    found = next((path / name for name in FORWARD_FILES if (path / name).is_file()), None)
    if found is None:
        raise InputFileError(f"{path}: no forward field; expected one of {', '.join(FORWARD_FILES)}")
    forward = _read_field(found)
    _check_covers(found, forward, fixed_grid)
    return RegistrationResult(path, forward, fixed_grid, report, moving_grid)
