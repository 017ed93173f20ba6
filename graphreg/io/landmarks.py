"""Landmark point sets: DIR-Lab text files, Learn2Reg CSV and world-millimetre CSV.

Convention:
    Inside the library points are ``(N, 3)`` float64 arrays either in **voxel** coordinates
    ``(z, y, x)``, 0-based, voxel centres at integers, of some grid, or in **world** coordinates
    ``(x, y, z)`` mm (ITK LPS). :class:`Landmarks` keeps the points together with the name of their
    space; :meth:`Landmarks.to_world` / :meth:`Landmarks.to_voxel` convert with a
    :class:`~graphreg.core.geometry.Grid`. The three file formats:

    ============  ==============================================  ===========================
    ``fmt``       file content                                    read into
    ============  ==============================================  ===========================
    ``"dirlab"``  ``x y z`` per line, whitespace separated,       voxel ``(z, y, x)``, 0-based
                  **1-based** voxel indices; header lines before
                  the first point (text, or one number such as
                  the point count) are skipped
    ``"l2r"``     ``x,y,z`` per line, no header, **0-based**      voxel ``(z, y, x)``, 0-based
                  voxel indices in NIfTI/ITK index order
                  ``(i, j, k) = (x, y, z)`` (Learn2Reg)
    ``"world"``   header ``x,y,z`` then one point per line, mm    world ``(x, y, z)`` mm
    ============  ==============================================  ===========================
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from graphreg.errors import GraphregError, InputFileError, ShapeError
from graphreg.core.geometry import Grid
from graphreg.io.atomic import atomic_write_text

#: Names of the two coordinate spaces a :class:`Landmarks` set can be in.
SPACES = ("voxel", "world")
#: Landmark file formats understood by :func:`read_landmarks` and :func:`write_landmarks`.
FORMATS = ("dirlab", "l2r", "world")
_WORLD_HEADER = ["x", "y", "z"]


@dataclass(frozen=True)
class Landmarks:
    """A set of points and the space they are expressed in.

    Attributes:
        points: ``(N, 3)`` float64; voxel ``(z, y, x)`` 0-based when ``space == "voxel"``, world
            ``(x, y, z)`` mm when ``space == "world"``. Numpy arrays, sequences and tensors are
            accepted and copied to float64 numpy.
        space: ``"voxel"`` or ``"world"``.

    Raises:
        ShapeError: ``points`` is not ``(N, 3)``.
        GraphregError: ``space`` is unknown or a coordinate is NaN/Inf.
    """

    points: np.ndarray
    space: str = "voxel"

    def __post_init__(self) -> None:
        points = self.points
        if isinstance(points, torch.Tensor):
            points = points.detach().cpu().numpy()
        points = np.array(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ShapeError(f"points: expected shape (N, 3), got {points.shape}")
        if self.space not in SPACES:
            raise GraphregError(f"space: expected one of {SPACES}, got {self.space!r}")
        if not np.isfinite(points).all():
            raise GraphregError(f"points: expected finite coordinates, found "
                                f"{int((~np.isfinite(points)).sum())} NaN/Inf values")
        points.setflags(write=False)
        object.__setattr__(self, "points", points)

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def to_world(self, grid: Grid) -> "Landmarks":
        """These points in world mm ``(x, y, z)``; voxel points are taken to lie on ``grid``."""
        if self.space == "world":
            return self
        return Landmarks(grid.voxel_to_world(self.points), "world")

    def to_voxel(self, grid: Grid) -> "Landmarks":
        """These points as continuous voxel ``(z, y, x)`` coordinates of ``grid``.

        Voxel points are returned unchanged: they are assumed to belong to ``grid`` already.
        """
        if self.space == "voxel":
            return self
        return Landmarks(grid.world_to_voxel(self.points), "voxel")


def _as_landmarks(points, name: str) -> Landmarks:
    """``points`` as :class:`Landmarks`; a bare array is voxel ``(z, y, x)``; errors name ``name``."""
    if isinstance(points, Landmarks):
        return points
    try:
        return Landmarks(points, "voxel")
    except GraphregError as error:
        raise type(error)(str(error).replace("points:", f"{name}:", 1)) from None


# ---------------------------------------------------------------------- reading
def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise InputFileError(f"{path}: landmark file not found")
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise InputFileError(f"{path}: not a text landmark file ({error})") from error


def _number(token: str) -> float | None:
    try:
        return float(token)
    except ValueError:
        return None


def _parse_point(fields: list[str], path: Path, lineno: int, line: str, layout: str) -> list[float]:
    where = f"{path}, line {lineno}"
    if len(fields) != 3:
        raise InputFileError(f"{where}: expected 3 values ({layout}), got {len(fields)}: {line.strip()!r}")
    values = [_number(f) for f in fields]
    if any(v is None for v in values):
        raise InputFileError(f"{where}: expected numbers ({layout}), got {line.strip()!r}")
    if not all(math.isfinite(v) for v in values):
        raise InputFileError(f"{where}: expected finite numbers ({layout}), got {line.strip()!r}")
    return values


def _no_points(path: Path) -> InputFileError:
    return InputFileError(f"{path}: expected at least one landmark, the file holds none")


def _read_dirlab(path: Path, lines: list[str]) -> Landmarks:
    rows: list[list[float]] = []
    for lineno, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        numbers = [_number(f) for f in fields]
        is_header = all(v is None for v in numbers) or len(fields) == 1
        if is_header and not rows:
            continue
        xyz = _parse_point(fields, path, lineno, line, "1-based voxel x y z")
        if min(xyz) < 0.5:
            raise InputFileError(f"{path}, line {lineno}: DIR-Lab indices are 1-based, got "
                                 f"{line.strip()!r} (is the file 0-based? then use fmt='l2r')")
        rows.append(xyz)
    if not rows:
        raise _no_points(path)
    xyz = np.asarray(rows) - 1.0
    return Landmarks(xyz[:, ::-1], "voxel")


def _csv_fields(line: str) -> list[str]:
    return [f.strip() for f in line.split(",")]


def _read_l2r(path: Path, lines: list[str]) -> Landmarks:
    rows = [_parse_point(_csv_fields(line), path, lineno, line, "0-based voxel x,y,z")
            for lineno, line in enumerate(lines, start=1) if line.strip()]
    if not rows:
        raise _no_points(path)
    return Landmarks(np.asarray(rows)[:, ::-1], "voxel")


def _read_world(path: Path, lines: list[str]) -> Landmarks:
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise _no_points(path)
    lineno, header = numbered[0]
    if [f.lower() for f in _csv_fields(header)] != _WORLD_HEADER:
        raise InputFileError(f"{path}, line {lineno}: expected the header 'x,y,z' of a world-mm "
                             f"landmark CSV, got {header.strip()!r}")
    rows = [_parse_point(_csv_fields(line), path, n, line, "world mm x,y,z") for n, line in numbered[1:]]
    if not rows:
        raise _no_points(path)
    return Landmarks(np.asarray(rows), "world")


_READERS = {"dirlab": _read_dirlab, "l2r": _read_l2r, "world": _read_world}


def _sniff(path: Path, lines: list[str]) -> str:
    suffix = path.suffix.lower()
    if suffix in (".txt", ".pts"):
        return "dirlab"
    if suffix == ".csv":
        first = next((line for line in lines if line.strip()), None)
        if first is None:
            raise _no_points(path)
        fields = _csv_fields(first)
        if [f.lower() for f in fields] == _WORLD_HEADER:
            return "world"
        if all(_number(f) is not None for f in fields):
            return "l2r"
        raise InputFileError(f"{path}: cannot tell the landmark format from the first line "
                             f"{first.strip()!r}; expected the header 'x,y,z' (world mm) or numbers "
                             f"(Learn2Reg voxel indices), or pass fmt= one of {FORMATS}")
    raise InputFileError(f"{path}: cannot tell the landmark format from the extension "
                         f"{suffix or '(none)'!r}; expected .txt (DIR-Lab) or .csv, or pass fmt= one "
                         f"of {FORMATS}")


def landmark_format(path: str | os.PathLike) -> str:
    """The format ``read_landmarks(path, fmt="auto")`` reads ``path`` as: one of :data:`FORMATS`.

    Raises:
        InputFileError: as :func:`read_landmarks`.
    """
    path = Path(path)
    return _sniff(path, _read_lines(path))


def read_landmarks(path: str | os.PathLike, fmt: str = "auto") -> Landmarks:
    """Read a landmark file.

    Args:
        path: the file.
        fmt: ``"dirlab"``, ``"l2r"``, ``"world"`` (see the module docstring) or ``"auto"``:
            ``.txt`` / ``.pts`` are DIR-Lab, ``.csv`` with the header ``x,y,z`` is world mm, a
            ``.csv`` starting with numbers is Learn2Reg.

    Shapes:
        returns: :class:`Landmarks` ``(N, 3)``: voxel ``(z, y, x)`` 0-based for ``"dirlab"`` and
        ``"l2r"``, world ``(x, y, z)`` mm for ``"world"``.

    Raises:
        InputFileError: the file is missing, empty, of unknown format, or a line is not three
            finite numbers (the message names the file and the line number).
        GraphregError: ``fmt`` is unknown.
    """
    path = Path(path)
    if fmt != "auto" and fmt not in FORMATS:
        raise GraphregError(f"fmt: expected 'auto' or one of {FORMATS}, got {fmt!r}")
    lines = _read_lines(path)
    return _READERS[_sniff(path, lines) if fmt == "auto" else fmt](path, lines)


# ---------------------------------------------------------------------- writing
def _format_number(value: float) -> str:
    """Integers without a decimal point, other values in the shortest exact form."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def write_landmarks(points: Landmarks | np.ndarray | torch.Tensor, path: str | os.PathLike,
                    fmt: str, grid: Grid | None = None) -> Path:
    """Write landmarks atomically in one of the :data:`FORMATS`.

    Args:
        points: a :class:`Landmarks`, or an ``(N, 3)`` array / tensor of voxel ``(z, y, x)``
            0-based coordinates (the library's point convention).
        path: output file.
        fmt: ``"dirlab"`` (1-based voxel ``x y z``, tab separated), ``"l2r"`` (0-based voxel
            ``x,y,z``) or ``"world"`` (header ``x,y,z``, mm).
        grid: needed only to convert between voxel and world space, e.g. voxel points to
            ``"world"`` or world points to ``"dirlab"`` / ``"l2r"``.

    Returns:
        ``Path(path)``. Values are written exactly (shortest round-trip decimal form).

    Raises:
        GraphregError: ``fmt`` is unknown, or a conversion is needed and ``grid`` is ``None``.
    """
    if fmt not in FORMATS:
        raise GraphregError(f"fmt: expected one of {FORMATS}, got {fmt!r}")
    landmarks = _as_landmarks(points, "points")
    wanted = "world" if fmt == "world" else "voxel"
    if landmarks.space != wanted:
        if grid is None:
            raise GraphregError(f"grid: required to convert {landmarks.space} points to {wanted} "
                                f"coordinates for fmt={fmt!r}, got None")
        landmarks = landmarks.to_world(grid) if wanted == "world" else landmarks.to_voxel(grid)
    if fmt == "world":
        rows, sep, header = landmarks.points, ",", ["x,y,z"]
    elif fmt == "l2r":
        rows, sep, header = landmarks.points[:, ::-1], ",", []
    else:
        rows, sep, header = landmarks.points[:, ::-1] + 1.0, "\t", []
    body = [sep.join(_format_number(v) for v in row) for row in rows]
    return atomic_write_text(path, "\n".join(header + body) + "\n")


def check_pairs(a: Landmarks | np.ndarray | torch.Tensor, b: Landmarks | np.ndarray | torch.Tensor,
                names: Sequence[str] = ("fixed", "moving")) -> int:
    """Check that two landmark sets pair up point by point; return the number of pairs.

    Args:
        a, b: :class:`Landmarks` or ``(N, 3)`` arrays / tensors.
        names: how the two sets are called in the error message.

    Raises:
        GraphregError: the sets have different numbers of points (both counts are named).
    """
    n_a, n_b = len(_as_landmarks(a, names[0])), len(_as_landmarks(b, names[1]))
    if n_a != n_b:
        raise GraphregError(f"landmarks: expected paired sets of equal size, got {n_a} {names[0]} "
                            f"points and {n_b} {names[1]} points")
    return n_a
