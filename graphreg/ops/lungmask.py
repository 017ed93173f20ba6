"""Lung segmentation of a thorax CT by thresholding and connected components.

The classical recipe, for users without a lung mask: air below a HU threshold, minus the air
outside the body (connected to the in-plane image border), minus the trachea and main bronchi
(grown from the trachea in the upper slices), leaving the two lungs; vessels filled in slice by
slice, boundary smoothed by a closing. It runs at a reduced working resolution and the result is
resampled to the input grid.

Convention:
    Input and output are :class:`~graphreg.core.volume.Volume` objects on the same grid; the output
    array is ``uint8`` 0/1 ``(z, y, x)``. Intensities are Hounsfield units. The slice axis is
    the array's first axis (``z``); the image border used to find the outside air is the four
    in-plane faces, so lungs that touch the first or last slice are kept.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from graphreg.errors import GraphregError, GeometryError
from graphreg.core.volume import Volume, bounding_box

_SIX = ndimage.generate_binary_structure(3, 1)


def _ball(radius_vox: np.ndarray) -> np.ndarray:
    """Ellipsoidal structuring element with per-axis radii (voxels, ``(z, y, x)``)."""
    r = np.maximum(np.round(radius_vox).astype(int), 0)
    axes = [np.arange(-k, k + 1) / max(k, 1e-9) if k > 0 else np.zeros(1) for k in r]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    return (zz**2 + yy**2 + xx**2) <= 1.0


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """6-connected labels and the voxel count of every label (index 0 = background)."""
    labels, _ = ndimage.label(mask, structure=_SIX)
    return labels, np.bincount(labels.ravel())


def _body_air(hu: np.ndarray, threshold_hu: float, band_fraction: float = 0.95) -> np.ndarray:
    """Air below ``threshold_hu`` that is inside the body.

    Outside air is what is 6-connected to the four in-plane faces. Slices that are almost all
    air (more than ``band_fraction`` of their voxels: padding bands beyond the field of view,
    e.g. -1024 HU filler slices) are outside as a whole and connect nothing, so lungs touching
    such a band (or the first/last slice) are kept. Padding outside a reconstruction circle
    (-1024, -2048, -3024 HU) touches the in-plane faces and is outside.
    """
    band = (hu < threshold_hu).mean(axis=(1, 2)) > band_fraction
    labels, _ = _components((hu < threshold_hu) & ~band[:, None, None])
    border = np.unique(np.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(),
                                       labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    return (labels > 0) & ~np.isin(labels, border)


def _airways(hu: np.ndarray, air: np.ndarray, spacing_zyx: np.ndarray, cranial_is_high: bool,
             max_airway_ml: float) -> np.ndarray:
    """Trachea and main bronchi: region grown from the trachea at an adaptive HU threshold.

    The trachea is the most central small air region of the most cranial slices of the body air
    (``cranial_is_high``: the slice index grows towards the head).
    The region is grown from the darkest voxel there at thresholds rising from -990 HU while its
    volume stays below ``max_airway_ml`` and does not double (a jump means the growth leaked into
    the lungs).
    """
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    slices = np.flatnonzero(air.any(axis=(1, 2)))
    if slices.size == 0:
        return np.zeros_like(air)
    seed = None
    top_first = slices[::-1] if cranial_is_high else slices
    for z in top_first[: max(3, int(40 / spacing_zyx[0]))]:
        labels2d, count = ndimage.label(air[z])
        if count == 0:
            continue
        areas = np.bincount(labels2d.ravel())[1:] * spacing_zyx[1] * spacing_zyx[2]  # mm^2
        centres = np.array(ndimage.center_of_mass(air[z], labels2d, range(1, count + 1)))
        mid = np.array(air.shape[1:]) / 2.0
        offset = np.abs(centres[:, 1] - mid[1]) * spacing_zyx[2]  # lateral distance, mm
        small = (areas > 50) & (areas < 700) & (offset < 40)
        if small.any():
            label = 1 + int(np.flatnonzero(small)[np.argmin(offset[small])])
            darkest = np.argmin(np.where(labels2d == label, hu[z], np.inf))
            seed = (int(z), *np.unravel_index(darkest, labels2d.shape))
            break
    if seed is None:
        return np.zeros_like(air)
    best = np.zeros_like(air)
    previous = 0
    for threshold in range(-990, -800, 15):
        labels, _ = ndimage.label((hu < threshold) & air, structure=_SIX)
        if labels[seed] == 0:
            continue
        region = labels == labels[seed]
        volume = int(region.sum())
        leaked = previous * voxel_ml > 20.0 and volume > 2.0 * previous
        if volume * voxel_ml > max_airway_ml or leaked:
            break
        best, previous = region, volume
    return best


def _split_two(component: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """Labels 1/2 for a single air region holding both lungs (joined at a thin bridge).

    Erodes until the region falls apart into two large parts, then gives every voxel of the
    region to the nearer part.
    """
    ball = _ball(2.0 / spacing_zyx)
    eroded = component.copy()
    total = component.sum()
    for _ in range(12):
        eroded = ndimage.binary_erosion(eroded, structure=ball)
        labels, sizes = _components(eroded)
        order = np.argsort(sizes[1:])[::-1] + 1
        if len(order) >= 2 and sizes[order[1]] > 0.1 * total:
            seeds = np.where(labels == order[0], 1, 0) + np.where(labels == order[1], 2, 0)
            _, nearest = ndimage.distance_transform_edt(seeds == 0, sampling=spacing_zyx,
                                                        return_indices=True)
            split = seeds[tuple(nearest)]
            return np.where(component, split, 0)
        if not eroded.any():
            break
    return component.astype(np.int32)


def lung_mask(volume: Volume, threshold_hu: float = -400.0, working_spacing_mm: float = 2.0,
              max_airway_ml: float = 250.0, closing_mm: float = 4.0) -> Volume:
    """Binary mask of both lungs (without trachea and main bronchi) of a thorax CT.

    Args:
        volume: CT in Hounsfield units, any grid.
        threshold_hu: air / tissue threshold.
        working_spacing_mm: isotropic working resolution in mm (never finer than the input).
        max_airway_ml: largest plausible volume of trachea plus main bronchi; bounds the airway
            region growing.
        closing_mm: radius of the final morphological closing (smooths the boundary, takes in
            juxta-pleural vessels and nodules).

    Shapes:
        volume.array: ``(z, y, x)``; returns a Volume on ``volume.grid`` with a ``uint8`` 0/1
        array of the same shape.

    Raises:
        GraphregError: no air region inside the body was found (not a thorax CT, or not in HU).
        GeometryError: ``working_spacing_mm`` is not positive.
    """
    if not working_spacing_mm > 0:
        raise GeometryError(f"working_spacing_mm: expected a positive value, got {working_spacing_mm}")
    spacing = max(working_spacing_mm, min(volume.grid.spacing))
    work = volume.with_spacing((spacing,) * 3, interpolation="linear", default=-1024.0)
    hu = work.array.astype(np.float32)
    spacing_zyx = np.array(work.grid.spacing_zyx)

    air = _body_air(hu, threshold_hu)
    if not air.any():
        raise GraphregError("volume: expected air-filled lungs inside the body (HU below "
                            f"{threshold_hu}), found none; is the image a thorax CT in HU?")
    start, stop = bounding_box(air, margin=2)
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    hu, air = hu[box], air[box]
    work = Volume(hu, work.grid.cropped(start, stop))
    cranial_is_high = work.grid.direction_matrix[2, 2] > 0  # LPS: world z points to the head
    airways = _airways(hu, air, spacing_zyx, cranial_is_high, max_airway_ml)
    airways = ndimage.binary_dilation(airways, structure=_ball(2.0 / spacing_zyx))
    lungs_air = air & ~airways

    labels, sizes = _components(lungs_air)
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    keep = [lab for lab in order[:2] if sizes[lab] * voxel_ml > 50.0]
    if not keep:
        raise GraphregError("volume: no air region larger than 50 ml inside the body; "
                            "is the image a thorax CT in HU?")
    if len(keep) == 1 or sizes[keep[1]] < 0.2 * sizes[keep[0]]:
        parts = _split_two(labels == keep[0], spacing_zyx)
    else:
        parts = np.where(labels == keep[0], 1, 0) + np.where(labels == keep[1], 2, 0)

    mask = np.zeros(hu.shape, dtype=bool)
    ball = _ball(closing_mm / spacing_zyx)
    pad = np.array(ball.shape) // 2 + 1
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    for lab in np.unique(parts[parts > 0]):
        start, stop = bounding_box(parts == lab)
        box = tuple(slice(a, b) for a, b in zip(start, stop))
        lung = np.pad(parts[box] == lab, [(p, p) for p in pad])
        lung = ndimage.binary_closing(lung, structure=ball)
        lung = ndimage.binary_fill_holes(lung, structure=in_plane)  # slice by slice (vessels)
        inner = tuple(slice(p, p + b - a) for p, a, b in zip(pad, start, stop))
        mask[box] |= lung[inner]
    return _to_grid(mask, work.grid, volume.grid)


def _to_grid(mask: np.ndarray, work_grid, grid) -> Volume:
    """Resample a working-resolution mask to ``grid`` (linear, threshold 0.5), only around it."""
    start, stop = bounding_box(mask, margin=1)
    corners = np.array([[a, b, c] for a in (start[0], stop[0] - 1) for b in (start[1], stop[1] - 1)
                        for c in (start[2], stop[2] - 1)], dtype=np.float64)
    index = grid.world_to_voxel(work_grid.voxel_to_world(corners))
    lo = np.clip(np.floor(index.min(0)).astype(int), 0, np.array(grid.shape) - 1)
    hi = np.clip(np.ceil(index.max(0)).astype(int) + 1, lo + 1, np.array(grid.shape))
    soft = Volume(mask.astype(np.float32), work_grid).resampled(grid.cropped(lo, hi), "linear", 0.0)
    out = np.zeros(grid.shape, dtype=np.uint8)
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = soft.array >= 0.5
    return Volume(out, grid)
