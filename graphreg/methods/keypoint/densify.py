"""Dense displacement fields from sparse keypoint displacements.

Two interpolants, both linear in the displacements and exact for affine fields:

- a thin-plate spline (3D biharmonic kernel ``U(r) = r`` plus an affine part, optional
  smoothing), solved once and evaluated on a coarse grid that is then upsampled trilinearly;
- a cubic B-spline control grid fitted by regularised least squares (bending energy of the
  control coefficients), evaluated exactly with separable per-axis basis matrices.

Convention:
    Keypoints ``(N, 3)`` in voxels ``(z, y, x)`` of the target grid; displacements ``(N, 3)``
    voxels ``(z, y, x)`` fixed -> moving; dense fields ``(1, 3, D, H, W)`` voxels on the grid of
    ``shape = (D, H, W)``.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import scipy.fft
import scipy.sparse
import scipy.sparse.linalg
import torch

from graphreg.errors import GraphregError, check_finite, check_shape
from graphreg.core.geometry import ALIGN_CORNERS
from graphreg.core.spatial import resize_field, voxel_scale

if TYPE_CHECKING:  # pragma: no cover
    from graphreg.core.config import RegistrationConfig

__all__ = [
    "ThinPlateSpline",
    "bspline_axis_matrix",
    "bspline_control_shape",
    "bspline_dense_field",
    "confidence_smoothing",
    "densify",
    "densify_options",
    "densify_values",
    "evaluate_bspline",
    "fit_bspline",
    "thin_plate_spline",
    "tps_dense_field",
]

#: Upper bound on the number of kernel entries held in memory at once when evaluating a TPS.
_CHUNK_ELEMENTS = 1 << 22


def _check_pairs(points: torch.Tensor, values: torch.Tensor, points_name: str,
                 values_name: str) -> None:
    check_shape(points_name, points, "(N, 3)", points.ndim == 2 and points.shape[1] == 3)
    check_shape(values_name, values, f"({points.shape[0]}, C)",
                values.ndim == 2 and values.shape[0] == points.shape[0])
    check_finite(points_name, points)
    check_finite(values_name, values)


def _check_grid_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise GraphregError(f"shape: expected three positive sizes (D, H, W), got {shape}")
    return shape


class ThinPlateSpline:
    """3D thin-plate spline ``f(x) = sum_i w_i ||x - p_i|| + a_0 + A x``.

    Fitted in float64 by solving ``[[K - diag(smoothing), P], [P^T, 0]] [w; a] = [values; 0]``
    with ``K_ij = ||p_i - p_j||`` and ``P = [1, p]`` (``-K`` is the conditionally positive
    definite kernel, so the smoothing enters with this sign; the same spline as
    ``scipy.interpolate.RBFInterpolator(kernel="linear", degree=1)``). ``smoothing = 0`` interpolates the values;
    larger values trade fidelity for smoothness (same units as the kernel, voxels); a per-point
    ``smoothing`` lets uncertain points pull the spline less (:func:`confidence_smoothing`).
    Affine functions are reproduced exactly for any smoothing.

    Shapes:
        control_points: ``(N, 3)`` voxels (N >= 4, not coplanar); values: ``(N, C)``;
        smoothing: a number or ``(N,)``, voxels.
        ``__call__(query)``: ``(M, 3)`` -> ``(M, C)`` in ``query``'s dtype.
    """

    def __init__(self, control_points: torch.Tensor, values: torch.Tensor,
                 smoothing: Union[float, torch.Tensor] = 0.0) -> None:
        _check_pairs(control_points, values, "control_points", "values")
        n = control_points.shape[0]
        if n < 4:
            raise GraphregError(f"control_points: expected at least 4 points, got {n}")
        points = control_points.detach().to(torch.float64)
        diagonal = torch.as_tensor(smoothing, dtype=torch.float64, device=points.device)
        check_shape("smoothing", diagonal, f"a number or ({n},)",
                    diagonal.ndim == 0 or tuple(diagonal.shape) == (n,))
        check_finite("smoothing", diagonal)
        if (diagonal < 0).any():
            raise GraphregError(f"smoothing: expected >= 0, got minimum {float(diagonal.min())}")
        self.centre = points.mean(0)
        self.points = points - self.centre
        rhs_values = values.detach().to(device=points.device, dtype=torch.float64)
        kernel = torch.cdist(self.points, self.points)
        kernel -= torch.diag(diagonal.expand(n))  # -|r| is the conditionally positive definite kernel
        poly = torch.cat([torch.ones(n, 1, dtype=torch.float64, device=points.device),
                          self.points], 1)
        system = torch.zeros(n + 4, n + 4, dtype=torch.float64, device=points.device)
        system[:n, :n] = kernel
        system[:n, n:] = poly
        system[n:, :n] = poly.T
        rhs = torch.zeros(n + 4, values.shape[1], dtype=torch.float64, device=points.device)
        rhs[:n] = rhs_values
        try:
            solution = torch.linalg.solve(system, rhs)
        except RuntimeError as err:  # torch.linalg.LinAlgError subclasses RuntimeError
            raise GraphregError("control_points: the TPS system is singular (duplicate or "
                                "coplanar points); remove duplicates or use smoothing > 0") from err
        self.weights = solution[:n]
        self.affine = solution[n:]

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        check_shape("query", query, "(M, 3)", query.ndim == 2 and query.shape[1] == 3)
        q = query.detach().to(device=self.points.device, dtype=torch.float64) - self.centre
        rows = max(1, _CHUNK_ELEMENTS // self.points.shape[0])
        out = []
        for part in q.split(rows):
            radial = torch.cdist(part, self.points) @ self.weights
            out.append(radial + self.affine[0] + part @ self.affine[1:])
        return torch.cat(out).to(device=query.device, dtype=query.dtype
                                 if query.is_floating_point() else torch.float32)


def thin_plate_spline(control_points: torch.Tensor, values: torch.Tensor,
                      smoothing: Union[float, torch.Tensor] = 0.0) -> ThinPlateSpline:
    """Fit a :class:`ThinPlateSpline` (a callable evaluating ``(M, 3)`` -> ``(M, C)``)."""
    return ThinPlateSpline(control_points, values, smoothing)


def _tps_on_coarse_nodes(points: torch.Tensor, values: torch.Tensor, shape: tuple[int, int, int],
                         grid_step: int = 3, smoothing: float = 0.0) -> torch.Tensor:
    """A :class:`ThinPlateSpline` through ``values`` ``(N, C)`` evaluated on the coarse grid of
    ``ceil((n - 1) / grid_step) + 1`` nodes per axis spanning ``[0, n - 1]``: ``(1, C, *coarse)`` float64."""
    if grid_step < 1:
        raise GraphregError(f"grid_step: expected an integer >= 1, got {grid_step}")
    spline = ThinPlateSpline(points, values, smoothing)
    coarse = tuple(math.ceil((n - 1) / grid_step) + 1 for n in shape)
    axes = [torch.linspace(0, n - 1, c, dtype=torch.float64) for n, c in zip(shape, coarse)]
    nodes = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return spline(nodes.to(points.device)).T.reshape(1, values.shape[1], *coarse)


def tps_dense_field(keypoints: torch.Tensor, displacements: torch.Tensor,
                    shape: Sequence[int], grid_step: int = 3,
                    smoothing: Union[float, torch.Tensor] = 0.0) -> torch.Tensor:
    """Thin-plate spline through keypoint displacements, evaluated densely.

    The spline is evaluated on a coarse grid of ``ceil((n - 1) / grid_step) + 1`` nodes per axis
    spanning ``[0, n - 1]`` exactly (node spacing <= ``grid_step`` voxels) and upsampled
    trilinearly (``align_corners`` semantics of :func:`graphreg.core.spatial.resize_field`), which is
    exact for affine fields and within the interpolation error of a smooth field elsewhere.

    Shapes:
        keypoints: ``(N, 3)`` voxels; displacements: ``(N, 3)`` voxels; shape: ``(D, H, W)``;
        smoothing: a number or ``(N,)`` voxels (see :class:`ThinPlateSpline`).
        returns: ``(1, 3, D, H, W)`` voxels, dtype/device of ``displacements``.
    """
    _check_pairs(keypoints, displacements, "keypoints", "displacements")
    check_shape("displacements", displacements, f"({keypoints.shape[0]}, 3)",
                displacements.shape[1] == 3)
    shape = _check_grid_shape(shape)
    field = _tps_on_coarse_nodes(keypoints, displacements, shape, grid_step, smoothing)  # full-grid voxels
    coarse = tuple(field.shape[2:])
    # resize_field expects voxels of the coarse grid and rescales them to the fine grid
    to_coarse = voxel_scale(coarse, shape, torch.float64, field.device)
    field = resize_field(field * to_coarse.view(1, 3, 1, 1, 1), shape)
    return field.to(dtype=displacements.dtype if displacements.is_floating_point()
                    else torch.float32)


def confidence_smoothing(smoothing: float, spread: torch.Tensor) -> torch.Tensor:
    """Per-keypoint TPS smoothing growing with the spread: ``smoothing * (s_i / median(s))^2``.

    The keypoint of median spread gets ``smoothing``; one twice as uncertain four times as much
    (the diagonal of a smoothing spline is a noise variance). All-zero spreads (e.g. given
    displacements) give ``smoothing`` everywhere.

    Shapes:
        spread: ``(N,)`` (any unit, only ratios matter); returns ``(N,)`` float64, the unit of
        ``smoothing``.
    """
    check_shape("spread", spread, "(N,)", spread.ndim == 1 and spread.shape[0] > 0)
    check_finite("spread", spread)
    spread = spread.detach().to(torch.float64)
    median = spread.median()
    if median <= 0:
        return torch.full_like(spread, float(smoothing))
    return float(smoothing) * (spread / median) ** 2


def _cubic_weights(t: torch.Tensor) -> torch.Tensor:
    """Uniform cubic B-spline weights of the 4 supporting knots, ``(..., 4)``."""
    s = 1.0 - t
    return torch.stack([s ** 3 / 6.0,
                        (3.0 * t ** 3 - 6.0 * t ** 2 + 4.0) / 6.0,
                        (-3.0 * t ** 3 + 3.0 * t ** 2 + 3.0 * t + 1.0) / 6.0,
                        t ** 3 / 6.0], -1)


def _spacing3(control_spacing) -> tuple[float, float, float]:
    spacing = (control_spacing,) * 3 if np.isscalar(control_spacing) else tuple(control_spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise GraphregError(f"control_spacing: expected a positive number or three, "
                            f"got {control_spacing}")
    return tuple(float(s) for s in spacing)


def bspline_control_shape(shape: Sequence[int], control_spacing) -> tuple[int, int, int]:
    """Control-grid size covering ``shape``: ``floor((n - 1) / s) + 4`` per axis.

    Control point ``c`` of an axis sits at voxel ``(c - 1) * s``.
    """
    shape = _check_grid_shape(shape)
    spacing = _spacing3(control_spacing)
    return tuple(int(math.floor((n - 1) / s)) + 4 for n, s in zip(shape, spacing))


def _support(positions: torch.Tensor, count: int, spacing: float):
    """First supporting control index ``(M,)`` and the 4 weights ``(M, 4)`` of each position."""
    u = positions / spacing
    first = torch.floor(u).clamp(0, count - 4)
    return first.long(), _cubic_weights(u - first)


def bspline_axis_matrix(positions: torch.Tensor, count: int, spacing: float) -> torch.Tensor:
    """Dense ``(M, count)`` matrix of cubic B-spline basis values along one axis.

    Row ``m`` holds the weights of the control points supporting voxel position
    ``positions[m]`` (4 non-zeros). Positions beyond the grid extrapolate the end polynomial.
    """
    first, weights = _support(positions, count, spacing)
    matrix = torch.zeros(positions.shape[0], count, dtype=positions.dtype,
                         device=positions.device)
    index = first[:, None] + torch.arange(4, device=positions.device)
    return matrix.scatter_(1, index, weights)


def evaluate_bspline(coefficients: torch.Tensor, shape: Sequence[int],
                     control_spacing) -> torch.Tensor:
    """Evaluate a cubic B-spline control grid at every voxel (differentiable, exact).

    Shapes:
        coefficients: ``(B, C, cz, cy, cx)`` with ``(cz, cy, cx) =
        bspline_control_shape(shape, control_spacing)``.
        returns: ``(B, C, D, H, W)``.
    """
    shape = _check_grid_shape(shape)
    expected = bspline_control_shape(shape, control_spacing)
    check_shape("coefficients", coefficients,
                f"(B, C, {expected[0]}, {expected[1]}, {expected[2]})",
                coefficients.ndim == 5 and tuple(coefficients.shape[2:]) == expected)
    spacing = _spacing3(control_spacing)
    mats = [bspline_axis_matrix(torch.arange(n, dtype=coefficients.dtype,
                                             device=coefficients.device), c, s)
            for n, c, s in zip(shape, expected, spacing)]
    out = torch.einsum("bczyx,wx->bczyw", coefficients, mats[2])
    out = torch.einsum("bczyw,hy->bczhw", out, mats[1])
    return torch.einsum("bczhw,dz->bcdhw", out, mats[0])


def _point_matrix(points: np.ndarray, control_shape, spacing) -> scipy.sparse.csr_matrix:
    """Sparse ``(N, cz * cy * cx)`` matrix mapping control coefficients to point values."""
    pts = torch.as_tensor(points, dtype=torch.float64)
    firsts, weights = zip(*(_support(pts[:, a], control_shape[a], spacing[a]) for a in range(3)))
    offsets = torch.arange(4)
    iz = (firsts[0][:, None] + offsets)[:, :, None, None]
    iy = (firsts[1][:, None] + offsets)[:, None, :, None]
    ix = (firsts[2][:, None] + offsets)[:, None, None, :]
    cols = (iz * control_shape[1] + iy) * control_shape[2] + ix
    vals = (weights[0][:, :, None, None] * weights[1][:, None, :, None]
            * weights[2][:, None, None, :])
    n = points.shape[0]
    rows = np.repeat(np.arange(n), 64)
    return scipy.sparse.csr_matrix((vals.reshape(-1).numpy(), (rows, cols.reshape(-1).numpy())),
                                   shape=(n, int(np.prod(control_shape))))


def _bending_operator(control_shape) -> scipy.sparse.csr_matrix:
    """Stacked discrete second derivatives (pure and mixed, in control-grid units)."""
    def second(n: int) -> scipy.sparse.spmatrix:
        return scipy.sparse.diags([1.0, -2.0, 1.0], [0, 1, 2], shape=(max(n - 2, 0), n))

    def first(n: int) -> scipy.sparse.spmatrix:
        return scipy.sparse.diags([-1.0, 1.0], [0, 1], shape=(n - 1, n))

    eye = [scipy.sparse.identity(n) for n in control_shape]

    def kron3(a, b, c):
        return scipy.sparse.kron(scipy.sparse.kron(a, b), c)

    cz, cy, cx = control_shape
    blocks = [kron3(second(cz), eye[1], eye[2]), kron3(eye[0], second(cy), eye[2]),
              kron3(eye[0], eye[1], second(cx)),
              math.sqrt(2.0) * kron3(first(cz), first(cy), eye[2]),
              math.sqrt(2.0) * kron3(first(cz), eye[1], first(cx)),
              math.sqrt(2.0) * kron3(eye[0], first(cy), first(cx))]
    return scipy.sparse.vstack(blocks).tocsr()


def fit_bspline(points: torch.Tensor, values: torch.Tensor, shape: Sequence[int],
                control_spacing=8.0, smoothing: float = 0.01, tolerance: float = 1e-6,
                max_iterations: int = 2000) -> torch.Tensor:
    """Fit cubic B-spline control coefficients to scattered values.

    Minimises ``sum_k ||f(p_k) - v_k||^2 + smoothing * sum_c bending_c`` where ``bending_c``
    is the sum of squared second differences of the coefficients at control point ``c``
    (pure and mixed, weighted like the thin-plate energy, control-grid units). Affine fields
    have zero bending energy and are reproduced exactly. A relative ridge of ``1e-10`` keeps
    control points without any constraint at zero.

    The normal equations are solved per component by preconditioned conjugate gradients
    (``scipy.sparse.linalg.cg``, relative residual ``tolerance``) with a matrix-free operator
    and a DCT preconditioner that inverts the bending energy plus the mean data weight exactly
    on the periodic-extension symbol ``(sum_a 2 - 2 cos theta_a)^2``.

    Shapes:
        points: ``(N, 3)`` voxels; values: ``(N, C)``; control_spacing: voxels (scalar or
        ``(z, y, x)``). returns coefficients ``(1, C, cz, cy, cx)`` (dtype/device of ``values``).
    """
    _check_pairs(points, values, "points", "values")
    if smoothing < 0:
        raise GraphregError(f"smoothing: expected >= 0, got {smoothing}")
    shape = _check_grid_shape(shape)
    spacing = _spacing3(control_spacing)
    control_shape = bspline_control_shape(shape, spacing)
    pts = points.detach().cpu().double().numpy()
    vals = values.detach().cpu().double().numpy()
    design = _point_matrix(pts, control_shape, spacing)
    design_t = design.T.tocsr()
    bending = _bending_operator(control_shape)
    bending = (bending.T @ bending).tocsr() * smoothing
    count = design.shape[1]
    data_diag = np.asarray(design.multiply(design).sum(0)).ravel()
    ridge = 1e-10 * max(float((data_diag + bending.diagonal()).max()), 1e-12)

    def normal(x: np.ndarray) -> np.ndarray:
        return design_t @ (design @ x) + bending @ x + ridge * x

    symbols = [2.0 - 2.0 * np.cos(np.pi * np.arange(n) / n) for n in control_shape]
    laplace = symbols[0][:, None, None] + symbols[1][None, :, None] + symbols[2][None, None, :]
    inverse = 1.0 / (smoothing * laplace ** 2 + data_diag.mean() + ridge)

    def precondition(r: np.ndarray) -> np.ndarray:
        spectrum = scipy.fft.dctn(r.reshape(control_shape), norm="ortho") * inverse
        return scipy.fft.idctn(spectrum, norm="ortho").reshape(-1)

    operator = scipy.sparse.linalg.LinearOperator((count, count), matvec=normal, dtype=np.float64)
    preconditioner = scipy.sparse.linalg.LinearOperator((count, count), matvec=precondition,
                                                        dtype=np.float64)
    rhs = design_t @ vals
    solution = np.zeros((count, vals.shape[1]))
    for c in range(vals.shape[1]):
        solution[:, c], info = scipy.sparse.linalg.cg(operator, rhs[:, c], rtol=tolerance,
                                                       maxiter=max_iterations, M=preconditioner)
        if info > 0:
            warnings.warn(f"fit_bspline: conjugate gradients stopped after {max_iterations} "
                          f"iterations above tolerance {tolerance} (component {c})",
                          RuntimeWarning, stacklevel=2)
    coefficients = torch.as_tensor(solution.T.reshape(1, vals.shape[1], *control_shape).copy())
    return coefficients.to(device=values.device, dtype=values.dtype
                           if values.is_floating_point() else torch.float32)


def bspline_dense_field(keypoints: torch.Tensor, displacements: torch.Tensor,
                        shape: Sequence[int], control_spacing=8.0,
                        smoothing: float = 0.01) -> torch.Tensor:
    """Cubic B-spline fit (:func:`fit_bspline`) to keypoint displacements, evaluated densely.

    Shapes:
        keypoints, displacements: ``(N, 3)`` voxels; shape: ``(D, H, W)``;
        control_spacing: voxels (scalar or per axis ``(z, y, x)``).
        returns: ``(1, 3, D, H, W)`` voxels.
    """
    _check_pairs(keypoints, displacements, "keypoints", "displacements")
    check_shape("displacements", displacements, f"({keypoints.shape[0]}, 3)",
                displacements.shape[1] == 3)
    coefficients = fit_bspline(keypoints, displacements, shape, control_spacing, smoothing)
    return evaluate_bspline(coefficients, shape, control_spacing)


def densify(keypoints: torch.Tensor, displacements: torch.Tensor, shape: Sequence[int],
            method: str = "tps", **kwargs) -> torch.Tensor:
    """Dense field from keypoint displacements by ``method`` ``"tps"`` or ``"bspline"``.

    Extra keyword arguments go to :func:`tps_dense_field` (``grid_step``, ``smoothing``) or
    :func:`bspline_dense_field` (``control_spacing``, ``smoothing``).

    Shapes:
        keypoints, displacements: ``(N, 3)`` voxels; returns ``(1, 3, D, H, W)`` voxels.
    """
    if method == "tps":
        return tps_dense_field(keypoints, displacements, shape, **kwargs)
    if method == "bspline":
        return bspline_dense_field(keypoints, displacements, shape, **kwargs)
    raise GraphregError(f"method: expected 'tps' or 'bspline', got {method!r}")


def densify_values(points: torch.Tensor, values: torch.Tensor, shape: Sequence[int],
                   method: str = "tps", **kwargs) -> torch.Tensor:
    """Dense channels (scalars, not displacements) from values at scattered points, by the same
    interpolants as :func:`densify` and with its keyword arguments.

    ``"tps"``: the thin-plate spline on the coarse grid of :func:`tps_dense_field`, upsampled
    trilinearly (``align_corners``); ``"bspline"``: :func:`fit_bspline` evaluated densely. Both are
    linear in ``values`` and reproduce constant and affine values exactly; between and beyond the
    points they may overshoot (a positive quantity can come out negative).

    Shapes:
        points: ``(N, 3)`` voxels ``(z, y, x)``; values: ``(N, C)``; returns ``(1, C, D, H, W)``
        (dtype/device of ``values``, float32 for integer values).
    """
    _check_pairs(points, values, "points", "values")
    shape = _check_grid_shape(shape)
    dtype = values.dtype if values.is_floating_point() else torch.float32
    if method == "tps":
        coarse = _tps_on_coarse_nodes(points, values, shape, **kwargs)
        dense = coarse if tuple(coarse.shape[2:]) == shape else \
            torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=ALIGN_CORNERS)
        return dense.to(dtype=dtype)
    if method == "bspline":
        coefficients = fit_bspline(points, values, shape, **kwargs)
        return evaluate_bspline(coefficients, shape, kwargs.get("control_spacing", 8.0)).to(dtype=dtype)
    raise GraphregError(f"method: expected 'tps' or 'bspline', got {method!r}")


def densify_options(config: "RegistrationConfig", spread: Optional[torch.Tensor] = None) -> dict:
    """Keyword arguments of :func:`densify` (and :func:`densify_values`) for ``config.densify``.

    The TPS smoothing is configured in mm (the unit of the spline's kernel ``|x - p|``) and
    passed in working voxels, ``smoothing / spacing_mm``: the same spline in mm at any working
    spacing; with ``confidence_weighting`` and a ``spread`` ``(N,)`` it becomes per keypoint
    (:func:`confidence_smoothing`). The B-spline smoothing is a weight of the control grid's
    bending energy and passes as it is.
    """
    options = config.densify
    if options.method == "tps":
        smoothing = options.smoothing / config.preprocess.spacing_mm
        if options.confidence_weighting and spread is not None:
            smoothing = confidence_smoothing(smoothing, spread)
        return {"smoothing": smoothing, "grid_step": options.grid_step}
    return {"smoothing": options.smoothing, "control_spacing": options.control_spacing}
