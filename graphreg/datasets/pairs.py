"""On-disk format of a registration pair with ground truth: one folder per pair.

Layout of a pair folder::

    fixed.nii.gz           fixed image (int16 HU)
    moving.nii.gz          moving image (int16 HU), any grid
    fixed_mask.nii.gz      lung mask of the fixed image (uint8 0/1)
    moving_mask.nii.gz     lung mask of the moving image (uint8 0/1), on the moving grid
    fixed_landmarks.csv    world mm, header ``x,y,z``
    moving_landmarks.csv   world mm, header ``x,y,z``, same row order (row i pairs with row i)
    gt_field.nii.gz        ground-truth displacement fixed -> moving, ITK vector image (world mm,
                           LPS, float32) on the fixed grid or on a coarser control grid over the
                           moving region: the ground truth is its trilinear interpolation in
                           world space, zero outside (as sitk.DisplacementFieldTransform)
    meta.json              how the pair was made and what it measures (free-form dict)

Convention:
    Landmarks are ``(N, 3)`` float64 world mm ``(x, y, z)``; ``gt_field`` maps each fixed
    landmark onto its moving landmark (:meth:`~graphreg.core.field.DisplacementField.transform_points`).
    Every file is written atomically (:mod:`graphreg.io.atomic`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from graphreg.io.jsonable import to_jsonable
from graphreg.errors import GraphregError, InputFileError
from graphreg.core.field import DisplacementField
from graphreg.io.atomic import atomic_write_text
from graphreg.io.fields import read_itk_field, write_itk_field
from graphreg.io.images import read_image, write_image
from graphreg.io.landmarks import Landmarks, check_pairs, read_landmarks, write_landmarks
from graphreg.core.geometry import Grid
from graphreg.core.spatial import sample_points
from graphreg.core.volume import Volume

#: File names inside a pair folder.
FILES = {
    "fixed": "fixed.nii.gz",
    "moving": "moving.nii.gz",
    "fixed_mask": "fixed_mask.nii.gz",
    "moving_mask": "moving_mask.nii.gz",
    "fixed_landmarks": "fixed_landmarks.csv",
    "moving_landmarks": "moving_landmarks.csv",
    "gt_field": "gt_field.nii.gz",
    "meta": "meta.json",
}


@dataclass(eq=False)
class PairData:
    """A fixed/moving pair with masks, landmark pairs and (optionally) the ground-truth field.

    Attributes:
        name: the pair's name (folder name on disk).
        fixed, moving: images in HU (any grids).
        fixed_mask, moving_mask: lung masks on the grids of ``fixed`` and ``moving``.
        fixed_landmarks_mm, moving_landmarks_mm: ``(N, 3)`` float64 world mm ``(x, y, z)``,
            paired by row.
        meta: how the pair was made (motion source, amplitude, seed, initial TRE, ...).
        gt_field: the fixed -> moving ground truth as stored (on the fixed grid or on a control
            grid), when in memory.
        gt_field_path: where the ground truth is stored; :meth:`load_gt_field` reads it lazily
            and :meth:`dense_gt_field` samples it on the fixed grid.
    """

    name: str
    fixed: Volume
    moving: Volume
    fixed_mask: Volume
    moving_mask: Volume
    fixed_landmarks_mm: np.ndarray
    moving_landmarks_mm: np.ndarray
    meta: dict
    gt_field: Optional[DisplacementField] = None
    gt_field_path: Optional[Path] = None

    def __post_init__(self) -> None:
        for name in ("fixed_landmarks_mm", "moving_landmarks_mm"):
            try:
                setattr(self, name, Landmarks(getattr(self, name), "world").points)
            except GraphregError as error:
                raise type(error)(str(error).replace("points:", f"{name}:", 1)) from None
        check_pairs(self.fixed_landmarks_mm, self.moving_landmarks_mm,
                    names=("fixed_landmarks_mm", "moving_landmarks_mm"))

    @property
    def has_ground_truth(self) -> bool:
        """Whether a ground-truth field is in memory or on disk (generated pairs have one)."""
        return self.gt_field is not None or self.gt_field_path is not None

    def load_gt_field(self, dtype: torch.dtype = torch.float32) -> DisplacementField:
        """The ground-truth field, read from :attr:`gt_field_path` on first use and kept.

        Raises:
            InputFileError: the pair has neither a field in memory nor a field file.
        """
        if self.gt_field is None:
            if self.gt_field_path is None:
                raise InputFileError(f"pair {self.name!r}: no ground-truth field in memory and "
                                     "no gt_field_path to read it from")
            self.gt_field = read_itk_field(self.gt_field_path, dtype=dtype)
        return self.gt_field

    def dense_gt_field(self) -> DisplacementField:
        """The ground truth sampled at every voxel of the fixed grid (see :func:`dense_field`)."""
        return dense_field(self.load_gt_field(), self.fixed.grid)


def write_pair(pair: PairData, out_dir: str | os.PathLike) -> Path:
    """Write ``pair`` into the folder ``out_dir`` (created if needed) in the layout above.

    The ground-truth field is written from memory, or copied from :attr:`PairData.gt_field_path`
    when only the file is known.

    Returns:
        ``Path(out_dir)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_image(pair.fixed, out / FILES["fixed"])
    write_image(pair.moving, out / FILES["moving"])
    write_image(_as_uint8(pair.fixed_mask), out / FILES["fixed_mask"])
    write_image(_as_uint8(pair.moving_mask), out / FILES["moving_mask"])
    write_landmarks(Landmarks(pair.fixed_landmarks_mm, "world"), out / FILES["fixed_landmarks"], "world")
    write_landmarks(Landmarks(pair.moving_landmarks_mm, "world"), out / FILES["moving_landmarks"], "world")
    target = out / FILES["gt_field"]
    if pair.gt_field is not None or pair.gt_field_path is None or Path(pair.gt_field_path) != target:
        write_itk_field(pair.load_gt_field(), target, precision="float32")
    atomic_write_text(out / FILES["meta"], json.dumps(to_jsonable(pair.meta), indent=2, sort_keys=True) + "\n")
    return out


def read_pair(pair_dir: str | os.PathLike) -> PairData:
    """Read a pair folder written by :func:`write_pair`; the field is loaded lazily.

    Raises:
        InputFileError: the folder or one of its files is missing or unreadable, or the landmark
            files do not pair up.
    """
    folder = Path(pair_dir)
    if not folder.is_dir():
        raise InputFileError(f"{folder}: pair folder not found")
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        raise InputFileError(f"{folder}: expected the pair files {sorted(FILES.values())}, "
                             f"missing {missing}")
    try:
        meta = json.loads((folder / FILES["meta"]).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputFileError(f"{folder / FILES['meta']}: not readable JSON ({error})") from error
    fixed_lm = read_landmarks(folder / FILES["fixed_landmarks"], fmt="world").points
    moving_lm = read_landmarks(folder / FILES["moving_landmarks"], fmt="world").points
    if len(fixed_lm) != len(moving_lm):
        raise InputFileError(f"{folder}: expected paired landmark files, got {len(fixed_lm)} fixed "
                             f"and {len(moving_lm)} moving points")
    return PairData(
        name=str(meta.get("name", folder.name)),
        fixed=read_image(folder / FILES["fixed"]),
        moving=read_image(folder / FILES["moving"]),
        fixed_mask=read_image(folder / FILES["fixed_mask"]),
        moving_mask=read_image(folder / FILES["moving_mask"]),
        fixed_landmarks_mm=fixed_lm,
        moving_landmarks_mm=moving_lm,
        meta=meta,
        gt_field_path=folder / FILES["gt_field"],
    )


def dense_field(field: DisplacementField, grid: Grid) -> DisplacementField:
    """``field`` (any grid, e.g. a control grid) sampled at the voxels of ``grid``.

    Convention:
        As ``sitk.DisplacementFieldTransform``: the world-mm displacement is interpolated
        trilinearly in ``field``'s grid; points whose continuous index lies outside
        ``[-0.5, n - 0.5)`` on some axis get zero displacement (border values are used in the
        outer half voxel). Returns ``field`` itself when it already lives on ``grid``.

    Shapes:
        returns: ``(1, 3, *grid.shape)`` float32 voxels of ``grid``.
    """
    if field.grid.same_as(grid):
        return field
    source = field.grid
    corners = np.array([[a, b, c] for a in (-0.5, source.shape[0] - 0.5)
                        for b in (-0.5, source.shape[1] - 0.5)
                        for c in (-0.5, source.shape[2] - 0.5)])
    index = grid.world_to_voxel(source.voxel_to_world(corners))
    lo = np.clip(np.floor(index.min(0)).astype(int), 0, np.array(grid.shape))
    hi = np.clip(np.ceil(index.max(0)).astype(int) + 1, 0, np.array(grid.shape))
    out = torch.zeros((1, 3, *grid.shape), dtype=torch.float32)
    if np.any(hi <= lo):
        return DisplacementField(out, grid)
    axes = [torch.arange(a, b, dtype=torch.float64) for a, b in zip(lo, hi)]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    inside_index = source.world_to_voxel(grid.voxel_to_world(points))
    mm = torch.from_numpy(np.ascontiguousarray(np.moveaxis(field.to_mm_array(), -1, 0)))[None]
    values = sample_points(mm, inside_index, padding_mode="border")[0].T  # (N, 3) mm
    size = torch.tensor(source.shape, dtype=torch.float64)
    inside = ((inside_index >= -0.5) & (inside_index < size - 0.5)).all(dim=1)
    voxels = grid.mm_vectors_to_voxel(values) * inside[:, None]
    shape = tuple(int(b - a) for a, b in zip(lo, hi))
    out[0, :, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = voxels.T.reshape(3, *shape).float()
    return DisplacementField(out, grid)


def _as_uint8(mask: Volume) -> Volume:
    return Volume((np.asarray(mask.array) > 0).astype(np.uint8), mask.grid)
