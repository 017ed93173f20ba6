"""DIR-Lab lung CT benchmark: case geometry and the headerless ``.img`` image format.

The DIR-Lab images (Castillo et al., Phys Med Biol 2009 and 2013) are raw little-endian ``int16``
voxels without a header; their size and spacing are published per case and tabulated in
:data:`DIRLAB_CASES`. Read in file order the voxels form an array ``(z, y, x)``.

Convention:
    - ``DirlabCase.dims_xyz`` and ``DirlabCase.spacing_xyz`` are in SimpleITK's ``(x, y, z)`` order
      (voxels, mm); :attr:`DirlabCase.grid` is the matching :class:`~graphreg.core.geometry.Grid` with
      origin 0 and identity direction, so that world mm = 0-based index * spacing, the geometry
      under which the published initial TRE values were computed.
    - DIR-Lab landmark files are read by :mod:`graphreg.io.landmarks`.
    - Some public converters flip the slice axis; this reader does not. Check a user's own copy
      by overlaying its landmarks.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from graphreg.errors import GraphregError, InputFileError
from graphreg.core.geometry import Grid
from graphreg.core.volume import Volume
from graphreg.io.atomic import atomic_output

#: On-disk voxel type of DIR-Lab images: little-endian signed 16-bit.
DIRLAB_DTYPE = np.dtype("<i2")
#: Slice spacing of every DIR-Lab case, mm.
DIRLAB_SLICE_SPACING_MM = 2.5


@dataclass(frozen=True)
class DirlabCase:
    """Published geometry of one DIR-Lab case.

    Attributes:
        name: canonical name, ``"4dct1"`` .. ``"4dct10"`` or ``"copd1"`` .. ``"copd10"``.
        dims_xyz: image size in voxels ``(x, y, z)``.
        spacing_xyz: voxel size in mm ``(x, y, z)``.
        initial_tre_mm: published mean distance in mm of the 300 landmark pairs before registration.
    """

    name: str
    dims_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    initial_tre_mm: float

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)`` of the image."""
        x, y, z = self.dims_xyz
        return (z, y, x)

    @property
    def grid(self) -> Grid:
        """The image grid: origin 0 mm, identity direction, :attr:`spacing_xyz`."""
        return Grid(self.shape_zyx, self.spacing_xyz)

    @property
    def nbytes(self) -> int:
        """Size in bytes of the case's raw ``.img`` file."""
        return int(np.prod(self.dims_xyz)) * DIRLAB_DTYPE.itemsize


def _build_cases() -> dict[str, DirlabCase]:
    s = DIRLAB_SLICE_SPACING_MM
    table_4dct = [  # (slices, in-plane size, in-plane mm, initial TRE mm), cases 1..10
        (94, 256, 0.97, 3.89), (112, 256, 1.16, 4.34), (104, 256, 1.15, 6.94),
        (99, 256, 1.13, 9.83), (106, 256, 1.10, 7.48), (128, 512, 0.97, 10.89),
        (136, 512, 0.97, 11.03), (128, 512, 0.97, 14.99), (128, 512, 0.97, 7.92),
        (120, 512, 0.97, 7.30),
    ]
    table_copd = [  # (slices, in-plane mm, initial TRE mm), copd1..copd10, all 512 x 512
        (121, 0.625, 26.33), (102, 0.645, 21.79), (126, 0.652, 12.64), (126, 0.590, 29.58),
        (131, 0.647, 30.08), (119, 0.633, 28.46), (112, 0.625, 21.60), (115, 0.586, 26.46),
        (116, 0.664, 14.86), (135, 0.742, 21.81),
    ]
    cases: dict[str, DirlabCase] = {}
    for i, (nz, n, mm, tre) in enumerate(table_4dct, start=1):
        cases[f"4dct{i}"] = DirlabCase(f"4dct{i}", (n, n, nz), (mm, mm, s), tre)
    for i, (nz, mm, tre) in enumerate(table_copd, start=1):
        cases[f"copd{i}"] = DirlabCase(f"copd{i}", (512, 512, nz), (mm, mm, s), tre)
    return cases


#: The 20 DIR-Lab cases by canonical name (``"4dct1"`` .. ``"4dct10"``, ``"copd1"`` .. ``"copd10"``).
DIRLAB_CASES: dict[str, DirlabCase] = _build_cases()

_NAME = re.compile(r"^(4dct|case|copd)[_-]?0*(\d+)$", re.IGNORECASE)
_FILENAME = re.compile(r"(copd|case)[_-]?0*(\d+)(?!\d)", re.IGNORECASE)


def dirlab_case(name: str | DirlabCase) -> DirlabCase:
    """Look up a DIR-Lab case by name.

    Accepts ``"4dct3"``, ``"case3"`` (both the 4DCT set) and ``"copd3"``, case-insensitively and
    with optional leading zeros (``"Case03"``); a :class:`DirlabCase` is returned unchanged.

    Raises:
        GraphregError: the name matches no case.
    """
    if isinstance(name, DirlabCase):
        return name
    match = _NAME.match(str(name).strip())
    if match:
        prefix = "copd" if match.group(1).lower() == "copd" else "4dct"
        key = f"{prefix}{int(match.group(2))}"
        if key in DIRLAB_CASES:
            return DIRLAB_CASES[key]
    raise GraphregError(
        f"name: expected a DIR-Lab case, one of 4dct1..4dct10 (or case1..case10) or copd1..copd10, got {name!r}"
    )


def dirlab_case_from_filename(path: str | os.PathLike) -> DirlabCase | None:
    """The case named by a DIR-Lab file name (``case1_T00_s.img``, ``copd4_iBHCT.img``), or ``None``."""
    match = _FILENAME.search(Path(path).name)
    if match is None:
        return None
    key = f"{'copd' if match.group(1).lower() == 'copd' else '4dct'}{int(match.group(2))}"
    return DIRLAB_CASES.get(key)


def _resolve_geometry(path: Path, case, dims_xyz, spacing_xyz) -> tuple[tuple[int, ...], tuple[float, ...]]:
    known = dirlab_case(case) if case is not None else None
    if known is None and dims_xyz is None:
        known = dirlab_case_from_filename(path)
        if known is None:
            raise GraphregError(
                f"{path}: cannot tell the DIR-Lab case from the file name; pass case= "
                f"(e.g. 'copd1') or dims_xyz= and spacing_xyz="
            )
    try:
        dims = tuple(int(d) for d in (dims_xyz if dims_xyz is not None else known.dims_xyz))
    except (TypeError, ValueError):
        raise GraphregError(f"dims_xyz: expected 3 positive voxel counts (x, y, z), got {dims_xyz!r}") from None
    if spacing_xyz is None and known is None:
        raise GraphregError(f"spacing_xyz: required for {path} when no DIR-Lab case is given, got None")
    try:
        spacing = tuple(float(s) for s in (spacing_xyz if spacing_xyz is not None else known.spacing_xyz))
    except (TypeError, ValueError):
        raise GraphregError(f"spacing_xyz: expected 3 positive mm values (x, y, z), got {spacing_xyz!r}") from None
    if len(dims) != 3 or min(dims) < 1:
        raise GraphregError(f"dims_xyz: expected 3 positive voxel counts (x, y, z), got {dims_xyz}")
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise GraphregError(f"spacing_xyz: expected 3 positive mm values (x, y, z), got {spacing_xyz}")
    return dims, spacing


def read_dirlab_raw(path: str | os.PathLike, case: str | DirlabCase | None = None,
                    dims_xyz: Sequence[int] | None = None,
                    spacing_xyz: Sequence[float] | None = None) -> Volume:
    """Read a headerless DIR-Lab ``.img`` file.

    The geometry comes from ``case``; ``dims_xyz`` / ``spacing_xyz`` override it. With neither
    ``case`` nor ``dims_xyz`` the case is taken from the file name (``case1_T00_s.img``,
    ``copd1_iBHCT.img``).

    Shapes:
        file: ``prod(dims_xyz)`` little-endian ``int16`` values, x fastest, then y, then z.
        returns: :class:`~graphreg.core.volume.Volume` with an ``int16`` array ``(z, y, x)``, origin
        0 mm, identity direction.

    Raises:
        InputFileError: the file is missing or its size is not ``prod(dims_xyz) * 2`` bytes.
        GraphregError: the geometry cannot be determined or is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: DIR-Lab image file not found")
    dims, spacing = _resolve_geometry(path, case, dims_xyz, spacing_xyz)
    expected = int(np.prod(dims)) * DIRLAB_DTYPE.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise InputFileError(
            f"{path}: expected {expected} bytes for a DIR-Lab int16 image of dims (x, y, z) "
            f"{dims}, got {actual} bytes"
        )
    array = np.fromfile(path, dtype=DIRLAB_DTYPE).reshape(dims[::-1]).astype(np.int16, copy=False)
    return Volume(array, Grid(array.shape, spacing))


def write_dirlab_raw(volume: Volume, path: str | os.PathLike) -> Path:
    """Write ``volume`` as a headerless little-endian ``int16`` DIR-Lab ``.img`` file (atomically).

    Only the voxel values are stored; spacing, origin and direction are not (the reader takes them
    from the case table). Non-integer values are rounded to the nearest integer.

    Raises:
        GraphregError: a value is not finite or lies outside the ``int16`` range.
    """
    array = np.asarray(volume.array)
    if array.dtype != DIRLAB_DTYPE:
        values = np.rint(array.astype(np.float64)) if array.dtype.kind == "f" else array
        info = np.iinfo(np.int16)
        if array.dtype.kind == "f" and not np.isfinite(values).all():
            raise GraphregError(f"volume: expected finite values to write {path}, found NaN/Inf")
        if values.size and (values.min() < info.min or values.max() > info.max):
            raise GraphregError(
                f"volume: expected values in the int16 range [{info.min}, {info.max}] to write "
                f"{path}, got [{values.min()}, {values.max()}]"
            )
        array = values.astype(DIRLAB_DTYPE)
    with atomic_output(path) as tmp:
        np.ascontiguousarray(array).tofile(tmp)
    return Path(path)
