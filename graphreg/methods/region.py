"""Where a registration's field is trusted, and what it is elsewhere: the ``region`` setting.

The keypoint pipeline registers the lungs (keypoints and similarity inside the fixed lung mask);
outside them its field is an extrapolation. :class:`graphreg.core.config.RegionConfig` chooses:

- ``"lungs"`` (default): within ``margin_mm`` of the fixed lungs the registered field; beyond, a
  raised-cosine decay over ``decay_mm`` to the global motion, the translation of the body's centre
  of mass (:func:`body_translation_mm`, :func:`lung_region_field`). ``valid_mask`` marks the trusted part.
- ``"body"``: a second run of the pipeline on the body outside the lungs (body mask instead of the
  lung mask for keypoints and similarity, pre-aligned by the bodies' centres of mass), joined to the
  lung field at the fixed lung boundary (:func:`sliding_join`): two fields, so the lungs slide
  along the chest wall. ``valid_mask`` is the fixed body.

Measured reasons for these choices: ``docs/region.md``.

Convention:
    Fields are :class:`~graphreg.core.field.DisplacementField` objects, fixed -> moving, pre-alignment
    included, in voxels of their grid. The result of both modes lives on a grid of the working
    lattice (same spacing, direction and voxel positions) grown to hold the region where it
    differs from the global motion; beyond that grid the field keeps its border value, which is
    the global motion.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from scipy import ndimage

from graphreg.core.config import RegionConfig
from graphreg.errors import GeometryError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.core.volume import Volume


def decay_weight(distance_mm: np.ndarray, margin_mm: float, decay_mm: float) -> np.ndarray:
    """How much of the registered field a point keeps: 1 within ``margin_mm``, then a raised cosine
    ``(1 + cos(pi * (d - margin) / decay)) / 2`` down to 0 at ``margin_mm + decay_mm`` and beyond.

    The weight and its first derivative are continuous (C1), so the blended field has no kink.

    Shapes:
        distance_mm: any shape (mm from the lungs, 0 inside); returns the same shape, float64 in [0, 1].
    """
    ramp = np.clip((np.asarray(distance_mm, dtype=np.float64) - margin_mm) / decay_mm, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * ramp))


def grown_grid(grid: Grid, cover: Grid, margin_mm: float) -> tuple[Grid, tuple[int, int, int]]:
    """``grid``'s lattice grown by ``margin_mm`` on every side, but not beyond what covers ``cover``.

    Returns:
        The grown grid and the index ``(z, y, x)`` of ``grid``'s first voxel in it.
    """
    full = grid.extended_to_cover(cover)
    offset = np.round(full.world_to_voxel(np.asarray(grid.origin, dtype=np.float64)[None])[0]).astype(int)
    pad = np.ceil(margin_mm / np.asarray(grid.spacing_zyx)).astype(int) + 1
    start = np.maximum(offset - pad, 0)
    stop = np.minimum(offset + np.asarray(grid.shape) + pad, full.shape)
    return full.cropped(start, stop), tuple(int(v) for v in offset - start)


def distance_from(mask: np.ndarray, grid: Grid) -> np.ndarray:
    """Distance in mm of every voxel of ``grid`` from the nearest nonzero voxel of ``mask`` (0 inside).

    Raises:
        GeometryError: ``mask`` is empty.
    """
    inside = np.asarray(mask) > 0
    if not inside.any():
        raise GeometryError("mask: expected at least one lung voxel, got an empty mask")
    return ndimage.distance_transform_edt(~inside, sampling=grid.spacing_zyx)


def lung_region_field(field: DisplacementField, lungs: np.ndarray, global_mm: np.ndarray, cover: Grid,
                      config: RegionConfig) -> tuple[DisplacementField, Volume, float]:
    """Region ``"lungs"``: ``g + w (u - g)`` with ``w`` = :func:`decay_weight` of the distance from the lungs.

    Args:
        field: the registered field ``u`` on the working grid (pre-alignment included).
        lungs: ``(D, H, W)`` fixed lung mask on ``field.grid``.
        global_mm: ``(3,)`` world ``(x, y, z)`` mm global motion ``g`` (:func:`body_translation_mm`).
        cover: the fixed image's grid; the result grows no further than needed to cover it.
        config: ``margin_mm`` and ``decay_mm``.

    Returns:
        The blended field on the working lattice grown by ``margin_mm`` + the decay (its border
        value, used beyond it, is ``g``), the valid mask (uint8 on that grid, 1 within
        ``margin_mm`` of the lungs) and the decay used (mm; :func:`safe_decay_mm`).
    """
    if np.asarray(lungs).shape != field.shape:
        raise GeometryError(f"lungs: expected the field's grid shape {field.shape}, got {np.asarray(lungs).shape}")
    from graphreg.result.registration import extend_field

    def minus_global(displacement: torch.Tensor, grid: Grid) -> torch.Tensor:
        shift = grid.mm_vectors_to_voxel(torch.as_tensor(np.asarray(global_mm, dtype=np.float64)))
        return displacement - shift.to(displacement.device, displacement.dtype).view(1, 3, 1, 1, 1)

    # the decay is fixed on the working grid first: beyond it the field only repeats its border
    residual = DisplacementField(minus_global(field.displacement, field.grid), field.grid).to_mm_array()
    decay = safe_decay_mm(residual, distance_from(lungs, field.grid), field.grid, config.margin_mm, config.decay_mm)
    grid, offset = grown_grid(field.grid, cover, config.margin_mm + decay)
    window = tuple(slice(o, o + n) for o, n in zip(offset, field.shape))
    mask = np.zeros(grid.shape, dtype=bool)
    mask[window] = np.asarray(lungs) > 0
    distance = distance_from(mask, grid)
    weight = torch.as_tensor(decay_weight(distance, config.margin_mm, decay),
                             dtype=field.dtype, device=field.device)[None, None]
    registered = extend_field(field, grid).displacement  # the same lattice: border values, no interpolation
    blended = registered - (1 - weight) * minus_global(registered, grid)
    valid = Volume((distance <= config.margin_mm).astype(np.uint8), grid)
    return DisplacementField(blended, grid), valid, decay


def safe_decay_mm(residual_mm: np.ndarray, distance_mm: np.ndarray, grid: Grid, margin_mm: float,
                  decay_mm: float) -> float:
    """``decay_mm``, lengthened where needed so that the blend cannot fold the field.

    Blending adds ``(u - g) (x) grad w`` to the Jacobian of ``w u + (1 - w) g``, which changes its
    determinant by ``(u - g) . grad w = -|w'| (u - g) . n`` (``n`` the outward unit normal of the
    distance map): only motion *away* from the lungs is compressed. The raised cosine's slope is at
    most ``pi / (2 decay)``, so ``decay >= pi * max((u - g) . n)`` (over the voxels beyond the
    margin) keeps that change above -1/2.

    Shapes:
        residual_mm: ``(D, H, W, 3)`` ``u - g``, world ``(x, y, z)`` mm; distance_mm: ``(D, H, W)``
        on ``grid``.
    """
    beyond = distance_mm > margin_mm
    if not beyond.any():
        return float(decay_mm)
    spacing = np.asarray(grid.spacing_zyx, dtype=np.float64)
    gradient = np.stack(np.gradient(distance_mm, *spacing), axis=-1)[beyond]  # d(distance)/d(index * spacing)
    normal = np.asarray(grid.voxel_vectors_to_mm(gradient / spacing), dtype=np.float64)  # world (x, y, z)
    outward = float(np.max(np.sum(residual_mm[beyond] * normal, axis=-1)))
    return max(float(decay_mm), np.pi * outward)


def region_report(config: RegionConfig, global_mm: Optional[np.ndarray] = None, decay_mm: Optional[float] = None) -> dict:
    """``report.json``'s ``region`` entry: the mode, its settings and one sentence (``summary``,
    also the CLI's line) saying where the field is trustworthy."""
    if config.mode == "body":
        summary = ("region body: field registered in the whole body (lungs and the tissue around them, "
                   "joined with sliding at the lung boundary); valid_mask = the fixed body")
        return {"mode": "body", "valid_mask": "the fixed body (HU above -500, holes filled)", "summary": summary}
    shift = [round(float(v), 2) + 0.0 for v in np.asarray(global_mm)]
    decay = round(float(config.decay_mm if decay_mm is None else decay_mm), 1)
    summary = (f"region lungs: field registered within {config.margin_mm:g} mm of the fixed lungs (valid_mask); "
               f"beyond, it decays over {decay:g} mm to the body's translation {shift} mm")
    return {"mode": "lungs", "margin_mm": config.margin_mm, "decay_mm": decay,
            "global_motion": "translation of the body's centre of mass", "global_motion_mm": shift,
            "valid_mask": f"within {config.margin_mm:g} mm of the fixed lungs", "summary": summary}


def sliding_join(lung_field: DisplacementField, lungs: np.ndarray, outside_field: DisplacementField) -> DisplacementField:
    """Region ``"body"``: the lung field inside the fixed lungs, the outside field elsewhere.

    The two fields are not blended: the switch at the lung boundary lets the lungs slide along the
    chest wall and diaphragm (trilinear interpolation spreads it over one voxel).

    Shapes:
        lungs: ``(D, H, W)`` fixed lung mask on ``lung_field.grid``; the result is on
        ``outside_field.grid``.
    """
    from graphreg.result.registration import resample_field

    grid = outside_field.grid
    lung_mask = Volume(np.asarray(lungs, dtype=np.uint8), lung_field.grid).resampled(grid, "nearest").array > 0
    inside = torch.as_tensor(lung_mask, device=outside_field.device)[None, None]
    lung_on_grid = resample_field(lung_field, grid).displacement.to(outside_field.dtype)
    return DisplacementField(torch.where(inside, lung_on_grid, outside_field.displacement), grid)


def outside_masks(fixed: Volume, moving: Volume, fixed_lungs: Volume, moving_lungs: Optional[Volume]
                  ) -> tuple[Volume, Volume, Volume]:
    """The body outside the lungs in both images and the fixed body (uint8, on the images' grids).

    The lungs are removed from the body so that keypoints and similarity of the second run see only
    the tissue around them (ribs, spine, mediastinum, abdomen).
    """
    from graphreg.checks.masks import body_mask
    from graphreg.methods.keypoint.preprocess import mask_on_grid

    masks = []
    for image, lungs, name in ((fixed, fixed_lungs, "fixed"), (moving, moving_lungs, "moving")):
        body = body_mask(image)
        if not body.array.any():
            raise GeometryError(f"{name}: region 'body' needs a body (voxels above -500 HU), found none")
        masks.append(body)
        outside = body.array > 0
        if lungs is not None:
            outside &= mask_on_grid(lungs, image.grid, f"{name}_mask").array == 0
        masks.append(Volume(outside.astype(np.uint8), image.grid))
    return masks[1], masks[3], masks[0]


#: Hounsfield units the lungs are filled with for region ``"body"``'s outside run (soft tissue)
FILL_HU = 0.0


def filled_lungs(image: Volume, lungs: Optional[Volume]) -> Volume:
    """``image`` with its lungs set to :data:`FILL_HU` (unchanged without a mask): the outside run
    then sees no lung boundary, whose motion is the lungs' own (they slide along the chest wall)."""
    if lungs is None:
        return image
    from graphreg.methods.keypoint.preprocess import mask_on_grid

    inside = mask_on_grid(lungs, image.grid, "lungs").array > 0
    return Volume(np.where(inside, np.asarray(FILL_HU, dtype=image.array.dtype), image.array), image.grid)


def register_outside(fixed: Volume, moving: Volume, fixed_lungs: Volume, moving_lungs: Optional[Volume],
                     config, device=None, progress=None):
    """Region ``"body"``'s second run: the keypoint pipeline (classical regulariser) on the body outside the lungs.

    Keypoints, the crop and the instance optimisation's similarity use the body minus the lungs
    (:func:`outside_masks`) instead of the lung mask, and both images have their lungs filled
    (:func:`filled_lungs`), so the sliding lung boundary does not drag the chest wall along; the
    moving image is pre-aligned by the bodies' centres of mass when ``config.preprocess.prealign``.

    Args:
        fixed, moving: the images (HU); fixed_lungs, moving_lungs: their checked lung masks
            (``moving_lungs`` may be None: the moving body is used whole).
        config: the :class:`~graphreg.core.config.RegistrationConfig` of the lung run.

    Returns:
        The working pair of the outside run, its :class:`~graphreg.methods.keypoint.driver.PipelineOutput`
        and the fixed body (the valid mask of region ``"body"``).
    """
    from graphreg.methods.keypoint.driver import run_keypoint_pipeline
    from graphreg.methods.keypoint.preprocess import working_pair

    fixed_outside, moving_outside, fixed_body = outside_masks(fixed, moving, fixed_lungs, moving_lungs)
    shift = body_translation_mm(fixed, moving)
    fixed, moving = filled_lungs(fixed, fixed_lungs), filled_lungs(moving, moving_lungs)
    pair = working_pair(fixed, moving, fixed_outside, moving_outside, config.preprocess, device,
                        translation_mm=shift if config.preprocess.prealign else None)
    say = (lambda line: progress(f"body: {line}")) if progress else None
    if say:
        say(f"working grid {pair.grid.size_xyz} around the body outside the lungs")
    return pair, run_keypoint_pipeline(pair, config, "corrfield", progress=say, residual=False), fixed_body


#: voxels of each image looked at for the body's centre of mass (a strided view: cheap on native scans)
_BODY_VOXELS = 2_000_000


def body_translation_mm(fixed: Volume, moving: Volume) -> np.ndarray:
    """The global motion: translation of the bodies' centres of mass (world ``(x, y, z)`` mm, fixed -> moving).

    The body is :func:`graphreg.checks.masks.body_mask` of a strided view of each image (at most
    :data:`_BODY_VOXELS` voxels). It follows a patient shift between the scans but not the
    breathing motion of the lungs (0.2 mm between POPI's inhale and exhale phases, where the lungs'
    centre of mass moves 4.1 mm; ``docs/region.md``).
    """
    from graphreg.checks.masks import body_mask
    from graphreg.methods.keypoint.preprocess import centre_of_mass_mm

    centres = []
    for image in (fixed, moving):
        step = max(1, int(np.ceil((image.array.size / _BODY_VOXELS) ** (1 / 3))))
        steps = [1 if n < 4 * step else step for n in image.array.shape]
        grid = Grid(tuple(int(np.ceil(n / s)) for n, s in zip(image.array.shape, steps)),
                    tuple(sp * s for sp, s in zip(image.grid.spacing, steps[::-1])), image.grid.origin,
                    image.grid.direction)
        body = body_mask(Volume(image.array[::steps[0], ::steps[1], ::steps[2]], grid))
        if not body.array.any():
            raise GeometryError("fixed, moving: the global motion needs a body (voxels above -500 HU) in both "
                                "images, found none")
        centres.append(centre_of_mass_mm(body))
    return np.asarray(centres[1] - centres[0], dtype=np.float64)


__all__ = ["FILL_HU", "body_translation_mm", "decay_weight", "distance_from", "filled_lungs", "grown_grid", "lung_region_field", "outside_masks",
           "region_report", "register_outside", "safe_decay_mm", "sliding_join"]
