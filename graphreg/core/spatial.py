"""Differentiable warping and point sampling on voxel grids (torch).

Convention:
    Displacements are in voxels of the grid they live on, components ``(z, y, x)``, shape
    ``(B, 3, D, H, W)``, pointing fixed -> moving: ``warp(moving, u)(x) = moving(x + u(x))``.
    Points are ``(N, 3)`` voxel ``(z, y, x)``. All conversion to ``grid_sample`` coordinates goes
    through :class:`graphreg.core.geometry.Grid`; this module never normalises by hand.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from graphreg.errors import ShapeError
from graphreg.core.geometry import ALIGN_CORNERS, Grid


def _check_volume(name: str, tensor: torch.Tensor) -> None:
    if tensor.ndim != 5:
        raise ShapeError(f"{name}: expected shape (B, C, D, H, W), got {tuple(tensor.shape)}")


def _check_field(name: str, field: torch.Tensor) -> None:
    if field.ndim != 5 or field.shape[1] != 3:
        raise ShapeError(f"{name}: expected shape (B, 3, D, H, W), got {tuple(field.shape)}")


#: Fewest sample points per thread worth a split in :func:`grid_sample_parallel`.
_MIN_POINTS_PER_THREAD = 16384
#: Fewest channels for which :func:`grid_sample_parallel` samples a CPU volume channels-last.
_MIN_CHANNELS_LAST = 4
#: Output samples per band of :func:`interpolate_axis`'s banded matrix product.
_BAND_COLUMNS = 64


def grid_sample_parallel(volume: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear",
                         padding_mode: str = "border") -> torch.Tensor:
    """``F.grid_sample(volume, grid, align_corners=ALIGN_CORNERS)`` that uses every CPU thread.

    PyTorch's CPU 3D grid sampler parallelises over the batch only, so a single volume is
    sampled on one core. For one CPU volume and many points, the points are split into one
    chunk per thread, stacked as a batch over the (expanded, not copied) volume, and sampled
    in one call; the result and its gradients are those of the plain call.

    A CPU volume of several channels is sampled channels-last (each trilinear corner fetch then
    reads the channels of a voxel from one cache line): the same values, faster for 12-channel
    MIND features even with the conversion.

    Shapes:
        volume: ``(B, C, D, H, W)``; grid: ``(B, D', H', W', 3)`` normalised ``(x, y, z)``;
        returns ``(B, C, D', H', W')``.
    """
    threads = torch.get_num_threads()
    out_shape = grid.shape[1:4]
    count = out_shape.numel()
    chunks = min(threads, count // _MIN_POINTS_PER_THREAD)
    if volume.shape[0] != 1 or grid.shape[0] != 1 or volume.device.type != "cpu" or chunks < 2:
        return F.grid_sample(volume, grid, mode=mode, padding_mode=padding_mode, align_corners=ALIGN_CORNERS)
    if volume.shape[1] >= _MIN_CHANNELS_LAST:
        volume = volume.contiguous(memory_format=torch.channels_last_3d)
    flat = grid.reshape(count, 3)
    pad = (-count) % chunks
    if pad:
        flat = torch.cat([flat, flat[-1:].expand(pad, 3)])
    values = F.grid_sample(volume.expand(chunks, -1, -1, -1, -1), flat.reshape(chunks, -1, 1, 1, 3),
                           mode=mode, padding_mode=padding_mode, align_corners=ALIGN_CORNERS)
    values = values.reshape(chunks, volume.shape[1], -1).transpose(0, 1).reshape(1, volume.shape[1], -1)
    return values[:, :, :count].reshape(1, volume.shape[1], *out_shape)


def identity_grid(shape: tuple[int, int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates of every voxel, ``(1, 3, D, H, W)`` in ``(z, y, x)`` order."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


def warp(volume: torch.Tensor, displacement: torch.Tensor, mode: str = "bilinear",
         padding_mode: str = "border") -> torch.Tensor:
    """Sample ``volume`` at ``x + u(x)`` for every voxel ``x`` of the displacement's grid.

    Shapes:
        volume: ``(B, C, D, H, W)`` — the moving image, on the same voxel grid as the field.
        displacement: ``(B or 1, 3, D, H, W)`` voxels ``(z, y, x)``.
        returns: ``(B, C, D, H, W)``.

    ``mode`` is ``"bilinear"`` (trilinear) or ``"nearest"`` (label maps).
    """
    _check_volume("volume", volume)
    _check_field("displacement", displacement)
    shape = tuple(displacement.shape[2:])
    if tuple(volume.shape[2:]) != shape:
        raise ShapeError(f"displacement: expected the volume's grid {tuple(volume.shape[2:])}, "
                         f"got {shape}")
    points = identity_grid(shape, displacement.device, displacement.dtype) + displacement
    grid = Grid(shape).field_voxel_to_normalized(points) - 1.0
    if grid.shape[0] != volume.shape[0]:
        grid = grid.expand(volume.shape[0], -1, -1, -1, -1)
    return grid_sample_parallel(volume, grid.to(volume.dtype), mode=mode, padding_mode=padding_mode)


def sample_points(volume: torch.Tensor, points: torch.Tensor, mode: str = "bilinear",
                  padding_mode: str = "border") -> torch.Tensor:
    """Values of ``volume`` at voxel positions ``points`` (trilinear).

    Shapes:
        volume: ``(B, C, D, H, W)``.
        points: ``(N, 3)`` voxel ``(z, y, x)`` of ``volume``'s grid (same for all B) or ``(B, N, 3)``.
        returns: ``(B, C, N)``.
    """
    _check_volume("volume", volume)
    if points.shape[-1] != 3 or points.ndim not in (2, 3):
        raise ShapeError(f"points: expected shape (N, 3) or (B, N, 3), got {tuple(points.shape)}")
    batch = volume.shape[0]
    pts = points.expand(batch, -1, -1) if points.ndim == 2 else points
    normalized = Grid(tuple(volume.shape[2:])).voxel_to_normalized(pts.to(volume.dtype))
    grid = normalized[:, :, None, None, :]  # (B, N, 1, 1, 3)
    values = grid_sample_parallel(volume, grid, mode=mode, padding_mode=padding_mode)
    return values[:, :, :, 0, 0]


def axis_weights(n: int, coords: torch.Tensor, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The ``(n, M)`` matrix of linear interpolation along an axis of ``n`` samples at continuous
    indices ``coords`` (two weights per column; indices outside ``[0, n - 1]`` clamped: border).

    Shapes:
        coords: ``(M,)``; returns ``(n, M)`` of ``dtype`` (see :func:`interpolate_axis`).
    """
    coords = torch.as_tensor(coords, dtype=torch.float64).clamp(0, n - 1)
    low = coords.floor().clamp(max=max(n - 2, 0))
    weight = coords - low
    columns = torch.arange(len(coords))
    low = low.long()
    matrix = torch.zeros((n, len(coords)), dtype=torch.float64)
    matrix[low, columns] = 1.0 - weight
    matrix[(low + 1).clamp(max=n - 1), columns] += weight
    return matrix.to(device=device, dtype=dtype)


def interpolate_axis(volume: torch.Tensor, dim: int, weights: torch.Tensor,
                     out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Linear interpolation of ``volume`` along one axis, with the weights of :func:`axis_weights`.

    Applied along the three axes in turn, this is trilinear sampling on a grid of points that is
    the product of one coordinate list per axis (an axis-aligned resampling), with the values of
    :func:`sample_points` at those points up to rounding, at a fraction of the cost: a product
    with the ``(n, M)`` weight matrix is several times faster than gathering the two neighbours of
    every output value. The product is taken band by band: each block of ``_BAND_COLUMNS`` output
    samples multiplies only the input rows its weights touch (the rest of the matrix is zeros).

    Shapes:
        volume: any, ``n = volume.shape[dim]``; weights: ``(n, M)`` in ``volume``'s dtype and device;
        out: None or a tensor of the result's shape (any strides) to write into; returns
        ``volume``'s shape with ``M`` along ``dim``.
    """
    dim = dim % volume.ndim
    if weights.shape[0] != volume.shape[dim]:
        raise ShapeError(f"weights: expected ({volume.shape[dim]}, M) for axis {dim} of a volume "
                         f"{tuple(volume.shape)}, got {tuple(weights.shape)}")
    shape = volume.shape[:dim] + (weights.shape[1],) + volume.shape[dim + 1:]
    if out is None:
        out = volume.new_empty(shape)
    elif out.shape != shape:
        raise ShapeError(f"out: expected shape {tuple(shape)}, got {tuple(out.shape)}")
    used = weights != 0
    for c0 in range(0, weights.shape[1], _BAND_COLUMNS):
        c1 = min(weights.shape[1], c0 + _BAND_COLUMNS)
        rows = used[:, c0:c1].any(1).nonzero()
        r0, r1 = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 1)
        band, part, target = weights[r0:r1, c0:c1], volume.narrow(dim, r0, r1 - r0), out.narrow(dim, c0, c1 - c0)
        if dim == volume.ndim - 1:
            torch.matmul(part, band, out=target)
        elif dim == volume.ndim - 2:
            torch.matmul(band.T, part, out=target)
        else:
            target.copy_((part.movedim(dim, -1) @ band).movedim(-1, dim))
    return out


def compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Displacement of ``x -> y = x + first(x) -> y + second(y)`` on ``first``'s grid.

    Shapes:
        first, second: ``(B, 3, D, H, W)`` voxels on the same grid; returns the same shape.
    """
    _check_field("first", first)
    _check_field("second", second)
    return first + warp(second, first, padding_mode="border")


def voxel_scale(new_shape, old_shape, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Per-axis factor from voxels of a grid of ``old_shape`` to voxels of a grid of ``new_shape``
    over the same extent: ``(n_new - 1) / (n_old - 1)``, the ``align_corners`` relation (1 along
    an axis of one voxel).

    Shapes:
        new_shape, old_shape: ``(D, H, W)``; returns ``(3,)`` in ``(z, y, x)`` order.
    """
    return torch.tensor([(n - 1) / (o - 1) if o > 1 else 1.0 for n, o in zip(new_shape, old_shape)],
                        dtype=dtype, device=device)


def resize_field(displacement: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear resize of a voxel displacement to a grid of ``shape`` over the same extent.

    The voxel units are rescaled per axis (``(n_new - 1) / (n_old - 1)``, the ``align_corners``
    relation), so the physical displacement is kept.

    Shapes:
        displacement: ``(B, 3, D, H, W)``; returns ``(B, 3, *shape)``.
    """
    _check_field("displacement", displacement)
    old = displacement.shape[2:]
    if tuple(old) == tuple(shape):  # the identity (align_corners): skip the interpolation
        return displacement.clone()
    scale = voxel_scale(shape, old, displacement.dtype, displacement.device)
    resized = F.interpolate(displacement, size=tuple(shape), mode="trilinear",
                            align_corners=ALIGN_CORNERS)
    return resized * scale.view(1, 3, 1, 1, 1)
