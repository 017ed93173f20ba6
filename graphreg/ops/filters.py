"""Small separable filters on 3D volumes shared by the feature stages (torch).

Every filter here is separable and is applied one axis at a time as a weighted sum of shifted
views of the input (``narrow`` + in-place ``add_``; the replicate padding is added as the border
voxel broadcast over the border strip, so no padded copy is made). For the short kernels used in
registration (3 to 11 taps) this is several times to an order of magnitude faster on CPU than
``conv3d`` with a ``(k, 1, 1)`` kernel, and it is exact and differentiable.

Convention:
    - Volumes are ``(B, C, D, H, W)`` tensors; axes ``0, 1, 2`` of the filters mean
      ``z, y, x`` = tensor dimensions ``2, 3, 4``.
    - Borders are handled by replicate padding (the nearest voxel is repeated), so the output
      has the input's shape.
    - Lengths (``sigma``, ``radius``) are in voxels.
    - Computation happens in the input's dtype and on its device; integer inputs are rejected.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

from graphreg.errors import GraphregError, ShapeError, is_int_at_least

#: Fourth-order central difference ``[1, -8, 0, 8, -1] / 12`` (Förstner keypoints in corrField and
#: GraphRegNet). Tap ``i`` multiplies the voxel at offset ``i - 2``.
DERIVATIVE_5TAP = (1.0 / 12.0, -8.0 / 12.0, 0.0, 8.0 / 12.0, -1.0 / 12.0)


def _check_volume(name: str, volume: torch.Tensor) -> None:
    if not isinstance(volume, torch.Tensor) or volume.ndim != 5:
        raise ShapeError(f"{name}: expected shape (B, C, D, H, W), "
                         f"got {tuple(getattr(volume, 'shape', ()))}")
    if not volume.is_floating_point():
        raise GraphregError(f"{name}: expected a floating-point tensor, got {volume.dtype}")


def filter_axis(volume: torch.Tensor, weights: Sequence[float], axis: int) -> torch.Tensor:
    """Correlate ``volume`` with a centred 1D kernel along one spatial axis (replicate padding).

    ``out[..., i, ...] = sum_t weights[t] * volume[..., clamp(i + t - r), ...]`` with
    ``r = (len(weights) - 1) / 2`` along ``axis``.

    Shapes:
        volume: ``(B, C, D, H, W)`` floating point.
        weights: odd number of taps (Python floats).
        axis: ``0``, ``1`` or ``2`` for ``z``, ``y``, ``x``.
        returns: ``(B, C, D, H, W)``, same dtype and device.
    """
    _check_volume("volume", volume)
    weights = [float(w) for w in weights]
    if len(weights) % 2 != 1:
        raise GraphregError(f"weights: expected an odd number of taps, got {len(weights)}")
    if axis not in (0, 1, 2):
        raise GraphregError(f"axis: expected 0 (z), 1 (y) or 2 (x), got {axis}")
    radius = len(weights) // 2
    dim = axis + 2
    size = volume.shape[dim]
    out = volume * weights[radius]
    for tap, weight in enumerate(weights):
        offset = tap - radius
        if offset == 0 or weight == 0.0:
            continue
        inner = max(size - abs(offset), 0)  # voxels whose neighbour lies inside the volume
        edge = min(abs(offset), size)  # voxels whose neighbour is replaced by the border voxel
        if offset > 0:
            if inner:
                out.narrow(dim, 0, inner).add_(volume.narrow(dim, offset, inner), alpha=weight)
            out.narrow(dim, size - edge, edge).add_(volume.narrow(dim, size - 1, 1), alpha=weight)
        else:
            if inner:
                out.narrow(dim, edge, inner).add_(volume.narrow(dim, 0, inner), alpha=weight)
            out.narrow(dim, 0, edge).add_(volume.narrow(dim, 0, 1), alpha=weight)
    return out


def shift(volume: torch.Tensor, offset: Sequence[int]) -> torch.Tensor:
    """``volume`` read at ``x + offset`` for every voxel ``x`` (integer offset, replicate padding).

    ``out[..., z, y, x] = volume[..., clamp(z + dz), clamp(y + dy), clamp(x + dx)]``.

    Shapes:
        volume: ``(B, C, D, H, W)`` floating point; offset ``(dz, dy, dx)`` voxels;
        returns ``(B, C, D, H, W)``.
    """
    _check_volume("volume", volume)
    if len(offset) != 3 or not all(isinstance(o, int) and not isinstance(o, bool) for o in offset):
        raise GraphregError(f"offset: expected 3 integers (dz, dy, dx), got {offset!r}")
    out = volume
    for axis, step in enumerate(offset):
        if step == 0:
            continue
        dim = axis + 2
        size = out.shape[dim]
        keep = max(size - abs(step), 0)
        fill = list(out.shape)
        fill[dim] = size - keep
        if step > 0:
            parts = [out.narrow(dim, size - keep, keep), out.narrow(dim, size - 1, 1).expand(fill)]
        else:
            parts = [out.narrow(dim, 0, 1).expand(fill), out.narrow(dim, 0, keep)]
        out = torch.cat(parts, dim=dim)
    return out


def gaussian_kernel1d(sigma: float, truncate: float = 3.0) -> list[float]:
    """Normalised sampled Gaussian taps, radius ``ceil(truncate * sigma)`` voxels.

    Returns ``[1.0]`` (identity) for ``sigma == 0``.
    """
    if not math.isfinite(sigma) or sigma < 0:
        raise GraphregError(f"sigma: expected a finite value >= 0 voxels, got {sigma}")
    if not math.isfinite(truncate) or truncate <= 0:
        raise GraphregError(f"truncate: expected a finite value > 0, got {truncate}")
    if sigma == 0:
        return [1.0]
    radius = max(1, math.ceil(truncate * sigma))
    taps = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-radius, radius + 1)]
    total = sum(taps)
    return [t / total for t in taps]


def gaussian_filter(volume: torch.Tensor, sigma: float | Sequence[float],
                    truncate: float = 3.0) -> torch.Tensor:
    """Separable Gaussian smoothing with replicate padding.

    Args:
        volume: ``(B, C, D, H, W)`` floating point.
        sigma: standard deviation in voxels, one value or one per axis ``(z, y, x)``; 0 skips an
            axis.
        truncate: kernel radius in standard deviations (``ceil(truncate * sigma)`` voxels).

    Shapes:
        returns: ``(B, C, D, H, W)``.
    """
    _check_volume("volume", volume)
    sigmas = [float(sigma)] * 3 if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    if len(sigmas) != 3:
        raise GraphregError(f"sigma: expected one value or 3 values (z, y, x), got {sigma}")
    out = volume
    for axis, s in enumerate(sigmas):
        kernel = gaussian_kernel1d(s, truncate)
        if len(kernel) > 1:
            out = filter_axis(out, kernel, axis)
    return out


def box_filter(volume: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the cube of side ``2 * radius + 1`` voxels around each voxel (replicate padding).

    Shapes:
        volume: ``(B, C, D, H, W)`` floating point; returns the same shape.
    """
    _check_volume("volume", volume)
    if not is_int_at_least(radius, 0):
        raise GraphregError(f"radius: expected an integer >= 0 voxels, got {radius!r}")
    if radius == 0:
        return volume
    taps = [1.0 / (2 * radius + 1)] * (2 * radius + 1)
    out = volume
    for axis in range(3):
        out = filter_axis(out, taps, axis)
    return out


@functools.lru_cache(maxsize=64)
def _repeated_box_matrix(size: int, passes: int) -> torch.Tensor:
    """``B ** passes`` ``(size, size)`` float64, ``B`` the 3-tap box filter with edge replication."""
    box = torch.zeros(size, size, dtype=torch.float64)
    index = torch.arange(size)
    for offset in (-1, 0, 1):
        box[index, (index + offset).clamp(0, size - 1)] += 1.0 / 3.0
    return torch.linalg.matrix_power(box, passes)


def _repeated_box_axis(volume: torch.Tensor, passes: int, axis: int) -> torch.Tensor:
    dim = axis + 2
    size = volume.shape[dim]
    if size < 4 * passes:  # too short for separate border and interior rows
        for _ in range(passes):
            volume = filter_axis(volume, [1.0 / 3.0] * 3, axis)
        return volume
    matrix = _repeated_box_matrix(size, passes)
    # Rows passes .. size-1-passes never reach the border: the plain (2 passes + 1)-tap kernel.
    out = filter_axis(volume, matrix[size // 2, size // 2 - passes: size // 2 + passes + 1].tolist(), axis)
    # The first and last ``passes`` rows read only the first / last ``2 passes`` voxels.
    span = 2 * passes
    for rows, columns in ((slice(0, passes), slice(0, span)), (slice(size - passes, size), slice(size - span, size))):
        slab = volume.narrow(dim, columns.start, span).movedim(dim, -1)
        border = slab @ matrix[rows, columns].T.to(volume)
        out.narrow(dim, rows.start, passes).copy_(border.movedim(-1, dim))
    return out


def repeated_box_filter(volume: torch.Tensor, passes: int) -> torch.Tensor:
    """``passes`` rounds of the 3x3x3 box filter with edge replication (:func:`box_filter` with
    radius 1, ``passes`` times), computed as one ``(2 passes + 1)``-tap filter per axis with the
    border rows of the exact operator: the same result (up to rounding) in about 60 % of the time.

    The operator is symmetric (self-adjoint), as each round is.

    Shapes:
        volume: ``(B, C, D, H, W)`` floating point; returns the same shape.
    """
    _check_volume("volume", volume)
    if not is_int_at_least(passes, 0):
        raise GraphregError(f"passes: expected an integer >= 0, got {passes!r}")
    if passes == 0:
        return volume
    for axis in range(3):
        volume = _repeated_box_axis(volume, passes, axis)
    return volume


def binary_dilation(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Voxels within the cube of side ``2 * radius + 1`` around a non-zero voxel of ``mask``.

    A box sum of the 0/1 mask is positive exactly where the cube holds a foreground voxel (the
    replicate padding only repeats voxels the cube already reaches), which is ten times faster
    on CPU than three separable ``max_pool3d`` passes.

    Shapes:
        mask: ``(B, C, D, H, W)`` (non-zero = foreground); returns a ``bool`` tensor of that shape.
    """
    return box_filter((mask != 0).to(torch.float32), radius) > 0


def derivative_5tap(volume: torch.Tensor, axis: int) -> torch.Tensor:
    """First derivative along ``axis`` by the 5-tap central difference :data:`DERIVATIVE_5TAP`.

    Exact for polynomials up to degree 4 away from the border; in intensity units per voxel.

    Shapes:
        volume: ``(B, C, D, H, W)``; axis ``0, 1, 2`` = ``z, y, x``; returns the same shape.
    """
    return filter_axis(volume, DERIVATIVE_5TAP, axis)


def gradient_5tap(volume: torch.Tensor) -> torch.Tensor:
    """Spatial gradient ``(d/dz, d/dy, d/dx)`` of a single-channel volume.

    Shapes:
        volume: ``(B, 1, D, H, W)``; returns ``(B, 3, D, H, W)``, components ``(z, y, x)``.
    """
    _check_volume("volume", volume)
    if volume.shape[1] != 1:
        raise ShapeError(f"volume: expected shape (B, 1, D, H, W), got {tuple(volume.shape)}")
    return torch.cat([derivative_5tap(volume, axis) for axis in range(3)], dim=1)
