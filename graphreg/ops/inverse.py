"""The inverse of a displacement field (moving -> fixed), on any grid, and its round-trip error.

Convention:
    ``u`` is a fixed -> moving field on the fixed grid: ``T(x) = x + u(x)``. Its inverse ``v``
    lives on a grid of the caller's choice (usually the moving image's) and maps moving points back:
    ``T^-1(y) = y + v(y)``, so that ``T(T^-1(y)) = y``. Both are :class:`~graphreg.core.field.DisplacementField`
    (voxels of their own grid, components ``(z, y, x)``). Outside its grid ``u`` takes the
    displacement of the nearest border voxel (as :meth:`DisplacementField.transform_points`), so
    every moving point has a pre-image.
"""

from __future__ import annotations

import numpy as np
import torch

from graphreg.errors import GraphregError, is_int_at_least
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.core.spatial import sample_points

#: moving-grid points solved at once (about 200 MB of temporaries per chunk)
_CHUNK_POINTS = 65536
#: Newton steps are replaced by fixed-point steps where ``det(I + grad u)`` is below this (folding)
_MIN_JACOBIAN = 0.05


def solve3x3(a, r) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``a x = r`` element-wise by Cramer's rule; also return ``det(a)``.

    Shapes:
        a: nested 3 x 3 lists (or a ``(3, 3, ...)`` tensor) of tensors of one shape ``S``;
        r: ``(3, *S)``; returns ``x`` ``(3, *S)`` and ``det`` ``S``.
    """
    cof = [[a[(i + 1) % 3][(j + 1) % 3] * a[(i + 2) % 3][(j + 2) % 3]
            - a[(i + 1) % 3][(j + 2) % 3] * a[(i + 2) % 3][(j + 1) % 3] for j in range(3)]
           for i in range(3)]
    det = a[0][0] * cof[0][0] + a[0][1] * cof[0][1] + a[0][2] * cof[0][2]
    # inverse = adjugate / det, adjugate[j][i] = cof[i][j]
    return torch.stack([sum(cof[i][j] * r[i] for i in range(3)) / det for j in range(3)]), det


def _with_gradient(displacement: torch.Tensor) -> torch.Tensor:
    """``(1, 12, D, H, W)`` channels-last: ``u`` (3 channels), then ``d u_c / d axis_b`` (central
    differences) at channel ``3 + 3 c + b``."""
    grads = torch.gradient(displacement[0], dim=(1, 2, 3))  # grads[b][c] = d u_c / d axis_b
    jacobian = torch.stack([grads[b][c] for c in range(3) for b in range(3)])
    return torch.cat([displacement, jacobian[None]], dim=1).contiguous(memory_format=torch.channels_last_3d)


def _newton(both: torch.Tensor, targets: torch.Tensor, iterations: int, tolerance: float,
            to_mm: torch.Tensor) -> tuple[torch.Tensor, float, int, int]:
    """Solve ``x + u(x) = targets`` (fixed voxels, ``(N, 3)``) by Newton's method from ``x = targets``.

    ``u`` and its central-difference gradient are sampled trilinearly (``both``, see
    :func:`_with_gradient`); the exact slope of the interpolant, which jumps at cell borders, made
    Newton jump between cells instead. Beyond the grid ``u`` is constant along the axes it lies
    outside of (border extension), so those derivatives are zero. A step that raises a point's
    residual is halved instead (backtracking). Points stop once their residual is below
    ``tolerance`` mm; the best position seen is kept.

    Returns the solution, the largest remaining residual in mm, the most steps any point took and
    the number of points left above ``tolerance``.
    """
    x = targets.clone()
    index = torch.arange(len(x), device=x.device)  # rows of x still being solved
    points, goals = x.clone(), targets
    previous, previous_error = points.clone(), torch.full((len(x),), float("inf")).to(targets)
    last = torch.tensor(both.shape[2:], dtype=targets.dtype, device=targets.device) - 1
    for step in range(iterations + 1):
        sampled = sample_points(both, points)[0]  # (12, n)
        residual = points.T + sampled[:3] - goals.T  # (3, n)
        error = (residual.T @ to_mm).norm(dim=1)
        keep = error >= tolerance
        if step == iterations or not bool(keep.any()):
            better = error <= previous_error
            x[index] = torch.where(better[:, None], points, previous)
            error = torch.minimum(error, previous_error)
            return x, float(error.max()) if len(error) else 0.0, step, int((error >= tolerance).sum())
        if int(keep.sum()) < 0.9 * len(keep):  # drop the converged points (gathers cost time)
            x[index[~keep]] = points[~keep]
            index, points, goals, sampled, residual, error, previous, previous_error = (
                index[keep], points[keep], goals[keep], sampled[:, keep], residual[:, keep], error[keep],
                previous[keep], previous_error[keep])
        inside = ((points >= 0) & (points <= last)).T  # (3, n): d / d axis_b is zero outside along b
        jacobian = [[sampled[3 + 3 * c + b] * inside[b] + float(c == b) for b in range(3)] for c in range(3)]
        newton, det = solve3x3(jacobian, residual)
        update = torch.where(det >= _MIN_JACOBIAN, newton, residual).T  # a fixed-point step where folded
        worse = (error > previous_error)[:, None]
        advanced = torch.where(worse, previous + 0.5 * (points - previous), points - update)
        previous = torch.where(worse, previous, points)
        previous_error = torch.where(worse[:, 0], previous_error, error)
        points = advanced
    raise AssertionError("unreachable")


def invert_field(field: DisplacementField, grid: Grid, iterations: int = 20,
                 tolerance_mm: float = 1e-3) -> tuple[DisplacementField, dict]:
    """The inverse ``v`` of ``field`` sampled at every voxel of ``grid``.

    For each voxel centre ``y`` of ``grid`` the pre-image ``x`` with ``x + u(x) = y`` is found by
    Newton's method on the fixed grid (``u`` and its gradient sampled trilinearly, backtracking; a
    fixed-point step where the field folds), starting from ``x = y``; then
    ``v(y) = x - y``.

    Shapes:
        field: ``(1, 3, D, H, W)`` voxels of ``field.grid`` (the fixed grid).
        returns: a field ``(1, 3, *grid.shape)`` in voxels of ``grid``, and
        ``{"max_residual_mm", "iterations", "unsolved"}``: the largest ``|T(T^-1(y)) - y|`` left
        over the grid (mm), the most Newton steps any point took and the number of voxels left
        above ``tolerance_mm`` (where ``u`` folds, no inverse exists).

    Raises:
        GraphregError: ``iterations`` is not a positive int or ``tolerance_mm`` is not positive.
    """
    if not is_int_at_least(iterations, 1):
        raise GraphregError(f"iterations: expected an int >= 1, got {iterations!r}")
    if not tolerance_mm > 0:
        raise GraphregError(f"tolerance_mm: expected a positive number, got {tolerance_mm!r}")
    device, dtype = field.device, field.dtype
    with torch.no_grad():
        both = _with_gradient(field.displacement.detach())
        to_mm = torch.as_tensor(field.grid.voxel_to_world_matrix[:3, :3].T, dtype=dtype, device=device)
        # moving voxel -> fixed voxel is affine: offset + index @ steps
        basis = np.vstack([np.zeros(3), np.eye(3)])
        mapped = field.grid.world_to_voxel(grid.voxel_to_world(basis))
        offset = torch.as_tensor(mapped[0], dtype=dtype, device=device)
        steps = torch.as_tensor(mapped[1:] - mapped[0], dtype=dtype, device=device)
        to_target = torch.as_tensor(grid.mm_vectors_to_voxel(field.grid.voxel_vectors_to_mm(np.eye(3))),
                                    dtype=dtype, device=device)
        depth, height, width = grid.shape
        yx = torch.stack(torch.meshgrid(torch.arange(height, dtype=dtype, device=device),
                                        torch.arange(width, dtype=dtype, device=device), indexing="ij"))
        out = torch.empty((1, 3) + grid.shape, dtype=dtype, device=device)
        slab = max(1, _CHUNK_POINTS // (height * width))
        worst, taken, unsolved = 0.0, 0, 0
        for z0 in range(0, depth, slab):
            z1 = min(depth, z0 + slab)
            index = torch.cat([torch.arange(z0, z1, dtype=dtype, device=device).view(-1, 1, 1, 1)
                               .expand(-1, 1, height, width), yx[None].expand(z1 - z0, -1, -1, -1)], dim=1)
            targets = index.movedim(1, -1).reshape(-1, 3) @ steps + offset  # fixed voxels
            x, residual, count, left = _newton(both, targets, iterations, tolerance_mm, to_mm)
            worst, taken, unsolved = max(worst, residual), max(taken, count), unsolved + left
            v = (x - targets) @ to_target  # fixed-voxel vectors -> target-grid voxels
            out[0, :, z0:z1] = v.T.reshape(3, z1 - z0, height, width)
    return DisplacementField(out, grid), {"max_residual_mm": worst, "iterations": taken, "unsolved": unsolved}


def round_trip_error_mm(field: DisplacementField, inverse: DisplacementField, points_mm) -> np.ndarray:
    """``|u(x) + v(x + u(x))|`` in mm at fixed world points ``x``: how far ``T^-1(T(x))`` lands from ``x``.

    Shapes:
        points_mm: ``(N, 3)`` world mm ``(x, y, z)``; returns ``(N,)`` float64 mm.
    """
    points = np.asarray(points_mm, dtype=np.float64)
    back = inverse.transform_points(field.transform_points(points))
    return np.linalg.norm(back - points, axis=1)
