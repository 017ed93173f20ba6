"""Discrete displacement search: a patch-SSD cost for every candidate displacement of a keypoint.

For keypoint ``p`` and candidate displacement ``d`` (on the lattice ``step * {-r, ..., r}^3``)::

    cost(p, d) = 1 / (C |O|) * sum_{o in O} sum_c (M_c(p + d + o) - F_c(p + o))^2

with fixed features ``F`` and moving features ``M`` (e.g. MIND-SSC), and the patch ``O`` = the
offsets on the same lattice (multiples of ``step``) within ``patch_radius`` voxels of the centre,
so ``|O| = (2 n + 1)^3`` with ``n = floor(patch_radius / step)``. Lower is better; a perfect match
costs 0.

Implementation (the formulation of GraphRegNet's and corrField's fast SSD): because patch offsets
and candidates share one lattice, the moving features are sampled once per keypoint on the
extended lattice ``step * {-(r + n), ..., r + n}^3`` and the fixed features on the patch
lattice. Expanding the square,

    sum_o |M(p + d + o) - F(p + o)|^2 = box_O(|M|^2)(d) + sum_o |F(p + o)|^2 - 2 xcorr(M, F)(d),

where ``box_O`` is a valid box sum over the patch. The cross term of all keypoints of a chunk is
one batched matrix product of each keypoint's fixed patch ``(|O|, C)`` with its moving block
``(C, E^3)``, followed by a sum of ``|O|`` shifted slices; this is the grouped ``conv3d`` (one
group per keypoint and channel) of GraphRegNet, written as a GEMM because that is faster on CPU.
Keypoints are processed in chunks so that the working memory stays bounded. Positions are read
exactly by index (border voxels repeated outside the volume) when keypoints and ``step`` are
integers, and by trilinear interpolation (:func:`graphreg.core.spatial.sample_points`, border
padding) otherwise.

Convention:
    Features ``(1, C, D, H, W)`` on one voxel grid (the fixed grid; the moving features resampled
    onto it); keypoints ``(N, 3)`` voxel ``(z, y, x)``; displacements in voxels ``(z, y, x)``,
    fixed -> moving. The cost volume's axes ``(dz, dy, dx)`` follow :func:`candidate_displacements`
    (``torch.meshgrid(..., indexing="ij")``), so ``cost.reshape(N, -1)[:, l]`` belongs to
    ``candidates[l]``.
"""

from __future__ import annotations

import itertools
import math

import torch

from graphreg.errors import GraphregError, ShapeError, is_int_at_least
from graphreg.core.spatial import sample_points

#: Working memory (bytes) aimed at per chunk of keypoints when ``chunk_size`` is not given.
CHUNK_BYTES = 256 * 2**20


def _lattice(radius: int, step: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(L, 3)`` offsets ``step * {-radius..radius}^3``, ``ij`` order over ``(z, y, x)``."""
    axis = torch.arange(-radius, radius + 1, device=device, dtype=dtype) * step
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def _check_radius_step(radius, step) -> None:
    if not is_int_at_least(radius, 0):
        raise GraphregError(f"radius: expected an integer >= 0 (candidates per side), "
                            f"got {radius!r}")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not (
            math.isfinite(step) and step > 0):
        raise GraphregError(f"step: expected a finite number > 0 voxels, got {step!r}")


def candidate_displacements(radius: int, step: float, device=None,
                            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The discrete displacements searched for every keypoint.

    Shapes:
        returns: ``(L, 3)`` voxels ``(z, y, x)``, ``L = (2 radius + 1)^3``, the ``ij`` meshgrid
        of ``step * arange(-radius, radius + 1)`` over ``z, y, x`` (``x`` varies fastest).
    """
    _check_radius_step(radius, step)
    return _lattice(radius, float(step), device, dtype)


def _block_index(points: torch.Tensor, offsets: torch.Tensor,
                 shape: tuple[int, int, int]) -> torch.Tensor:
    """Row-major voxel index of ``points[k] + (oz, oy, ox)`` for all ``o`` in ``offsets^3``.

    Integer ``points`` ``(K, 3)`` and 1D integer ``offsets`` ``(E,)``; each coordinate is clamped
    into the volume (border voxels repeat). Returns ``(K, E, E, E)`` int64.
    """
    axes = [(points[:, axis, None] + offsets).clamp_(0, size - 1)  # (K, E)
            for axis, size in enumerate(shape)]
    return ((axes[0][:, :, None, None] * shape[1] + axes[1][:, None, :, None]) * shape[2]
            + axes[2][:, None, None, :])


def _box_sum_valid(volume: torch.Tensor, width: int) -> torch.Tensor:
    """Sum over every ``width^3`` block of ``(K, E, E, E)`` -> ``(K, E - width + 1, ...)``."""
    for dim in (1, 2, 3):
        size = volume.shape[dim] - width + 1
        total = volume.narrow(dim, 0, size)
        for start in range(1, width):
            total = total + volume.narrow(dim, start, size)
        volume = total
    return volume


def correlation_cost(fixed_features: torch.Tensor, moving_features: torch.Tensor,
                     keypoints: torch.Tensor, radius: int, step: float, patch_radius: float = 2,
                     chunk_size: int | None = None, moving_shift: torch.Tensor | None = None) -> torch.Tensor:
    """Patch-SSD cost of every candidate displacement of every keypoint.

    Args:
        fixed_features: descriptors of the fixed image, e.g.
            :func:`graphreg.ops.mind.mind_ssc`.
        moving_features: descriptors of the moving image on the same grid.
        keypoints: positions in the fixed image.
        radius: candidates per side: ``2 * radius + 1`` per axis.
        step: spacing of the candidates and of the patch samples (voxels).
        patch_radius: half-size of the compared patch (voxels); the patch samples are the
            multiples of ``step`` within it (``patch_radius < step`` compares single positions).
        chunk_size: keypoints per chunk; default: as many as fit in about
            :data:`CHUNK_BYTES` of working memory.
        moving_shift: integer voxels ``(N, 3)`` added to every keypoint's moving positions (the
            candidates then lie around ``keypoint + moving_shift``), or None.

    Shapes:
        fixed_features, moving_features: ``(1, C, D, H, W)`` (any float dtype; computed in
        float32, or float64 when the fixed features are float64).
        keypoints: ``(N, 3)`` voxel ``(z, y, x)`` of that grid.
        returns: ``(N, 2r+1, 2r+1, 2r+1)`` mean squared feature difference (feature
        units²), axes ``(dz, dy, dx)`` as in :func:`candidate_displacements`. Differentiable
        with respect to both feature maps.

    Raises:
        ShapeError: a tensor does not have its documented shape, or the feature maps differ.
        GraphregError: ``radius``, ``step``, ``patch_radius`` or ``chunk_size`` is invalid.
    """
    for name, value in (("fixed_features", fixed_features), ("moving_features", moving_features)):
        if not isinstance(value, torch.Tensor) or value.ndim != 5 or value.shape[0] != 1:
            raise ShapeError(f"{name}: expected shape (1, C, D, H, W), "
                             f"got {tuple(getattr(value, 'shape', ()))}")
    if moving_features.shape != fixed_features.shape:
        raise ShapeError(f"moving_features: expected the fixed features' shape "
                         f"{tuple(fixed_features.shape)}, got {tuple(moving_features.shape)}")
    if not isinstance(keypoints, torch.Tensor) or keypoints.ndim != 2 or keypoints.shape[1] != 3:
        raise ShapeError(f"keypoints: expected shape (N, 3), "
                         f"got {tuple(getattr(keypoints, 'shape', ()))}")
    _check_radius_step(radius, step)
    if isinstance(patch_radius, bool) or not isinstance(patch_radius, (int, float)) or not (
            math.isfinite(patch_radius) and patch_radius >= 0):
        raise GraphregError(f"patch_radius: expected a finite number >= 0 voxels, "
                            f"got {patch_radius!r}")
    if chunk_size is not None and not is_int_at_least(chunk_size, 1):
        raise GraphregError(f"chunk_size: expected an integer >= 1 or None, got {chunk_size!r}")

    device = fixed_features.device
    channels = fixed_features.shape[1]
    half = int(math.floor(patch_radius / step + 1e-9))  # patch samples per side
    width = 2 * radius + 1
    patch_width = 2 * half + 1
    extended = width + 2 * half
    dtype = torch.float64 if fixed_features.dtype == torch.float64 else torch.float32
    keypoints = keypoints.to(device=device, dtype=dtype)
    if moving_shift is None:
        moving_shift = torch.zeros_like(keypoints)
    elif tuple(moving_shift.shape) != tuple(keypoints.shape) or not bool(torch.equal(moving_shift, moving_shift.round())):
        raise ShapeError(f"moving_shift: expected integer voxels of shape {tuple(keypoints.shape)}, "
                         f"got {tuple(moving_shift.shape)}")
    moving_shift = moving_shift.to(device=device, dtype=dtype)
    shape = tuple(fixed_features.shape[2:])
    exact = float(step).is_integer() and bool(torch.equal(keypoints, keypoints.round()))
    if exact:
        # Reads by index: the moving features as a (voxels, C) table (one copy, none if already
        # channels-last) so that each read is one contiguous row.
        moving_table = moving_features[0].permute(1, 2, 3, 0).reshape(-1, channels)
        fixed_flat = fixed_features[0].reshape(channels, -1)
        integer_points = keypoints.long()
        moving_points = (keypoints + moving_shift).long()
        patch_axis = torch.arange(-half, half + 1, device=device) * int(step)
        block_axis = torch.arange(-radius - half, radius + half + 1, device=device) * int(step)
    else:
        fixed_float, moving_float = fixed_features.to(dtype), moving_features.to(dtype)
        patch_offsets = _lattice(half, float(step), device, dtype)  # (P^3, 3)
        block_offsets = _lattice(radius + half, float(step), device, dtype)  # (E^3, 3)

    def read(first: int, last: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed patches ``(k, C, P^3)`` and moving blocks ``(k, E^3, C)`` in ``dtype``."""
        if exact:
            points = integer_points[first:last]
            patch_index = _block_index(points, patch_axis, shape).reshape(-1)
            block_index = _block_index(moving_points[first:last], block_axis, shape).reshape(-1)
            fixed = fixed_flat.index_select(1, patch_index).reshape(channels, last - first, -1)
            moving = moving_table.index_select(0, block_index)
            return (fixed.transpose(0, 1).to(dtype),
                    moving.reshape(last - first, -1, channels).to(dtype))
        points = keypoints[first:last, None]
        fixed = sample_points(fixed_float, (points + patch_offsets).reshape(-1, 3))[0]
        moved = points + moving_shift[first:last, None]
        moving = sample_points(moving_float, (moved + block_offsets).reshape(-1, 3))[0]
        return (fixed.reshape(channels, last - first, -1).transpose(0, 1),
                moving.reshape(channels, last - first, -1).permute(1, 2, 0))

    if chunk_size is None:
        floats_per_point = (channels + patch_width**3 + 3) * extended**3 + 3 * width**3
        chunk_size = max(1, CHUNK_BYTES // (4 * floats_per_point))
    count = keypoints.shape[0]
    chunks = []
    for first in range(0, count, chunk_size):
        last = min(first + chunk_size, count)
        k = last - first
        fixed, moving = read(first, last)  # (k, C, P^3), (k, E^3, C)
        # products[k, o, y] = <F(p_k + o), M(p_k + y)> for every patch offset o and block
        # position y: one batched matrix product; the cross-correlation then sums, for each
        # candidate d, the products with y = d + o (a shifted slice per patch offset).
        products = torch.bmm(fixed.transpose(1, 2), moving.transpose(1, 2))  # (k, P^3, E^3)
        products = products.reshape(k, patch_width**3, extended, extended, extended)
        cross = None
        for o, (oz, oy, ox) in enumerate(itertools.product(range(patch_width), repeat=3)):
            term = products[:, o, oz:oz + width, oy:oy + width, ox:ox + width]
            cross = term.clone() if cross is None else cross.add_(term)
        moving_energy = moving.square().sum(dim=2).reshape(k, extended, extended, extended)
        ssd = _box_sum_valid(moving_energy, patch_width) - 2.0 * cross  # (k, w, w, w)
        ssd = ssd.reshape(k, -1) + fixed.square().sum(dim=(1, 2))[:, None]
        chunks.append(ssd.clamp_min(0.0) / (channels * patch_width**3))
    cost = torch.cat(chunks) if chunks else fixed_features.new_zeros((0, width**3), dtype=dtype)
    return cost.reshape(count, width, width, width)


def _flat_cost(cost: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    if not isinstance(candidates, torch.Tensor) or candidates.ndim != 2 or candidates.shape[1] != 3:
        raise ShapeError(f"candidates: expected shape (L, 3), "
                         f"got {tuple(getattr(candidates, 'shape', ()))}")
    count = candidates.shape[0]
    if not isinstance(cost, torch.Tensor) or cost.ndim < 2 or math.prod(cost.shape[1:]) != count:
        raise ShapeError(f"cost: expected shape (N, L={count}) or (N, s, s, s) with s^3 = L, "
                         f"got {tuple(getattr(cost, 'shape', ()))}")
    return cost.reshape(cost.shape[0], count)


def hard_argmin_displacement(cost: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """The candidate of lowest cost for every keypoint (first one on ties).

    Shapes:
        cost: ``(N, L)`` or ``(N, s, s, s)``; candidates: ``(L, 3)`` voxels ``(z, y, x)``.
        returns: ``(N, 3)`` voxels, candidates' dtype.
    """
    flat = _flat_cost(cost, candidates)
    return candidates[flat.argmin(dim=1).to(candidates.device)]

