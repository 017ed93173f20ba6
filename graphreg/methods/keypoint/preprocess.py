"""Preprocessing: isotropic working grid around the fixed lungs, intensity scaling, lung masks, pre-alignment.

Convention:
    The working grid has the fixed image's direction, an isotropic spacing and covers the fixed
    lung bounding box plus a margin. The moving image is sampled on the same grid shifted by a
    world translation ``t`` (the pre-alignment of the lung centres of mass, rounded to whole
    working voxels so the moving image is not interpolated by a fraction of a voxel), so a working
    displacement ``d`` (voxels, ``(z, y, x)``) at fixed voxel ``x`` means the world displacement
    ``u_mm(x) = A d(x) + t`` with ``A = grid.voxel_vectors_to_mm``.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from graphreg.core.config import PreprocessConfig, validate_config
from graphreg.errors import GeometryError
from graphreg.core.geometry import Grid
from graphreg.core.volume import Volume, bounding_box


@dataclass
class WorkingPair:
    """Both images on the working grid.

    Shapes:
        fixed, moving: ``(1, 1, D, H, W)`` float32 in ``[0, 1]``.
        fixed_mask, moving_mask: ``(1, 1, D, H, W)`` bool (the moving mask on ``moving_grid``).
        translation_mm: ``(3,)`` world ``(x, y, z)`` mm, ``moving_grid = grid`` shifted by it.
    """

    fixed: torch.Tensor
    moving: torch.Tensor
    fixed_mask: torch.Tensor
    moving_mask: torch.Tensor
    grid: Grid
    moving_grid: Grid
    translation_mm: np.ndarray


def scale_intensities(array: np.ndarray, hu_min: float, hu_max: float) -> np.ndarray:
    """Clip Hounsfield units to ``[hu_min, hu_max]`` and scale to ``[0, 1]`` (float32)."""
    clipped = np.clip(array.astype(np.float32), hu_min, hu_max)
    return (clipped - hu_min) / (hu_max - hu_min)


def mask_on_grid(mask: Volume, grid: Grid, name: str) -> Volume:
    """``mask`` as a 0/1 uint8 volume on ``grid``; resampled (nearest, with a warning) when it is elsewhere."""
    binary = Volume((mask.array > 0).astype(np.uint8), mask.grid)
    if not binary.array.any():
        raise GeometryError(f"{name}: expected a lung mask with foreground voxels, got an empty mask")
    if not mask.grid.same_as(grid):
        warnings.warn(f"{name}: its grid differs from its image's; resampling it (nearest neighbour)",
                      stacklevel=3)
        binary = binary.resampled(grid, "nearest")
        if not binary.array.any():
            raise GeometryError(f"{name}: expected a lung mask overlapping its image, got a mask on grid "
                                f"{mask.grid} whose foreground lies outside the image grid {grid}")
    if binary.array.all():
        raise GeometryError(f"{name}: expected a lung mask, got a mask that covers the whole image")
    return binary


def centre_of_mass_mm(mask: Volume) -> np.ndarray:
    """World ``(x, y, z)`` mm centre of the mask's foreground."""
    return mask.grid.voxel_to_world(np.argwhere(mask.array > 0).mean(0).astype(np.float64))


def whole_voxel_translation(grid: Grid, translation_mm: np.ndarray) -> np.ndarray:
    """``translation_mm`` (world ``(x, y, z)`` mm) rounded to a whole number of ``grid`` voxels per axis.

    A pre-alignment by a fraction of a voxel would resample the moving image by linear
    interpolation at that fraction, which shifts fine structure by less than the fraction; a
    whole-voxel shift samples the moving image exactly where the fixed one is sampled, and the
    remaining half voxel at most is left to the search (measured: ``docs/design.md``).
    """
    voxels = np.round(grid.mm_vectors_to_voxel(np.asarray(translation_mm, dtype=np.float64)))
    return np.asarray(grid.voxel_vectors_to_mm(voxels), dtype=np.float64)


def translated(grid: Grid, translation_mm: np.ndarray) -> Grid:
    """``grid`` moved by a world translation (mm)."""
    return Grid(grid.shape, grid.spacing, tuple(np.asarray(grid.origin) + translation_mm), grid.direction)


def working_pair(fixed: Volume, moving: Volume, fixed_mask: Volume, moving_mask: Optional[Volume],
                 config: PreprocessConfig, device=None, translation_mm: Optional[np.ndarray] = None) -> WorkingPair:
    """Resample, crop, scale and pre-align a fixed/moving pair for the registration stages.

    Images finer than the working spacing are low-pass filtered first (``config.antialias``,
    :meth:`graphreg.core.volume.Volume.antialiased`); masks are resampled by nearest neighbour.

    Args:
        fixed, moving: CT volumes in Hounsfield units (any geometry).
        fixed_mask, moving_mask: lung masks on their image's grid (resampled with a warning otherwise);
            ``moving_mask`` None: the fixed mask carried over by the pre-alignment stands in for it.
        config: working spacing, HU window, crop margin, pre-alignment.
        translation_mm: ``(3,)`` world mm pre-alignment (e.g. from :func:`graphreg.checks.prealign.prealign`),
            rounded to whole working voxels; None: the lungs' centres of mass when ``config.prealign``.
    """
    validate_config(config, "preprocess.")
    fixed_mask = mask_on_grid(fixed_mask, fixed.grid, "fixed_mask")
    if moving_mask is not None:
        moving_mask = mask_on_grid(moving_mask, moving.grid, "moving_mask")
    elif translation_mm is None and config.prealign:
        raise GeometryError("moving_mask: without a moving mask the pre-alignment needs translation_mm")
    spacing = config.spacing_mm
    isotropic = fixed.grid.with_spacing((spacing, spacing, spacing))
    mask_iso = fixed_mask.resampled(isotropic, "nearest")
    if not mask_iso.array.any():
        raise GeometryError(f"fixed_mask: the lungs vanish at the working spacing {spacing} mm")
    margin = int(np.ceil(config.crop_margin_mm / spacing))
    start, stop = bounding_box(mask_iso.array, margin)
    grid = isotropic.cropped(start, stop)

    translation = np.zeros(3)
    if translation_mm is not None:
        translation = whole_voxel_translation(grid, translation_mm)
    elif config.prealign:
        translation = whole_voxel_translation(grid, centre_of_mass_mm(moving_mask) - centre_of_mass_mm(fixed_mask))
    moving_grid = translated(grid, translation)

    moving_mask_w = (fixed_mask.resampled(grid, "nearest") if moving_mask is None
                     else moving_mask.resampled(moving_grid, "nearest"))
    if not moving_mask_w.array.any():
        raise GeometryError("fixed and moving: the moving lungs do not overlap the fixed lung region "
                            "(check the images' origins and directions)")
    if config.antialias and torch.get_num_threads() > 1:  # both images at once: scipy's filters release the GIL
        with ThreadPoolExecutor(max_workers=2) as pool:
            fixed_job = pool.submit(fixed.antialiased, grid.spacing, grid)
            moving = moving.antialiased(grid.spacing, moving_grid)
            fixed = fixed_job.result()
    elif config.antialias:  # one thread allowed (graphreg.runtime.threads)
        fixed = fixed.antialiased(grid.spacing, grid)
        moving = moving.antialiased(grid.spacing, moving_grid)
    fixed_w = fixed.resampled(grid, "linear", default=config.hu_min)
    moving_w = moving.resampled(moving_grid, "linear", default=config.hu_min)

    def tensor(array: np.ndarray, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype, device=device)[None, None]

    return WorkingPair(
        fixed=tensor(scale_intensities(fixed_w.array, config.hu_min, config.hu_max)),
        moving=tensor(scale_intensities(moving_w.array, config.hu_min, config.hu_max)),
        fixed_mask=tensor(fixed_mask.resampled(grid, "nearest").array > 0, torch.bool),
        moving_mask=tensor(moving_mask_w.array > 0, torch.bool),
        grid=grid,
        moving_grid=moving_grid,
        translation_mm=translation,
    )
