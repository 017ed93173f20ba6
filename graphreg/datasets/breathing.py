"""Breathing motion models and the synthesis of inhale/exhale pairs with exact ground truth.

A real end-inhale CT is the fixed image. A motion model gives a smooth, invertible displacement
``u`` on the fixed grid (fixed -> moving, i.e. inhale -> exhale positions); the moving (exhale)
image is made by exact inverse warping, so that every fixed point ``p`` appears at ``p + u(p)``
in the moving image, and landmark pairs follow from ``u`` without error.

Motion sources:
    - :func:`dirlab_motion`: the real end-inhale -> end-exhale motion of the 300 landmarks of a
      DIR-Lab 4DCT case, mapped into the fixed image's lungs and interpolated by a smoothing
      thin-plate spline (:class:`scipy.interpolate.RBFInterpolator`).
    - :func:`parametric_motion`: random diaphragm, antero-posterior and lateral motion.

Both move the lungs fully and the tissue around them less and less (a smooth falloff with the
distance from the lungs, longer along the body axis so that the liver follows the diaphragm),
which mimics sliding at the pleura while keeping the field continuous and invertible.

Convention:
    - Fields are :class:`~graphreg.core.field.DisplacementField` objects on the fixed grid (voxels,
      components ``(z, y, x)``, fixed -> moving). Internally motions are built in world mm
      ``(x, y, z)`` (LPS: ``+z`` points to the head, ``+y`` to the back, ``+x`` to the patient's
      left), sampled on a coarse control grid and upsampled trilinearly.
    - The moving image is ``M(y) = F(y + v(y))`` with ``v`` the inverse of ``u``
      (``v(y) = -u(y + v(y))``, solved by fixed-point iteration), with the lung density changed
      by mass preservation: ``rho = HU + 1000``, ``rho_M(x + u(x)) = rho_F(x) / J(x)``.
    - A motion model returns its field on a coarse *control grid* over the moving region of the
      fixed image (a few MB even for a full-resolution CT); the ground truth at any point is the
      trilinear interpolation of the control field in world space, zero outside it, which is
      exactly what ``sitk.DisplacementFieldTransform`` computes. :func:`dense_field` samples it
      on the fixed grid; the moving image and the landmarks are made from that dense field, so
      the control field on disk is the exact ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.interpolate import RBFInterpolator

from graphreg.errors import GeometryError, GraphregError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.ops.inverse import solve3x3
from graphreg.io.dirlab import dirlab_case
from graphreg.io.landmarks import read_landmarks
from graphreg.ops.metrics import jacobian_determinant, landmark_errors, summarize_errors
from graphreg.methods.keypoint.keypoints import farthest_point_sampling
from graphreg.core.spatial import identity_grid, resize_field, warp
from graphreg.core.volume import Volume, bounding_box
from graphreg.datasets.pairs import PairData, dense_field
from graphreg.datasets.paths import DIRLAB_4DCT_DIR

#: Smallest Jacobian determinant a motion model may produce before it is smoothed further.
MIN_JACOBIAN = 0.2

_HU_AIR = -1000.0


# ---------------------------------------------------------------------- control grid
@dataclass(frozen=True)
class _Support:
    """The part of the fixed grid where the motion is non-zero, and a coarse grid over it.

    ``start``/``stop`` are fixed-grid indices ``(z, y, x)``; ``coarse`` has its first and last
    nodes on the box's first and last voxel centres (``align_corners``), so that trilinear
    upsampling with ``align_corners=True`` lands exactly on the fine voxels.
    """

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    fine: Grid
    coarse: Grid

    @property
    def box(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))


def _support(grid: Grid, lung: Volume, margin_mm: Sequence[float], control_mm: float) -> _Support:
    """Lung bounding box grown by ``margin_mm`` (z, y, x), with a control grid of ``control_mm``."""
    margin = np.ceil(np.asarray(margin_mm) / np.asarray(grid.spacing_zyx)).astype(int)
    start, stop = bounding_box(lung.array, margin=margin)
    fine = grid.cropped(start, stop)
    n_fine = np.array(fine.shape)
    n_coarse = np.maximum(2, np.ceil((n_fine - 1) * np.array(grid.spacing_zyx) / control_mm) + 1)
    n_coarse = np.minimum(n_coarse, n_fine).astype(int)
    step_zyx = np.array(grid.spacing_zyx) * (n_fine - 1) / np.maximum(n_coarse - 1, 1)
    coarse = Grid(tuple(n_coarse), tuple(step_zyx[::-1]), fine.origin, fine.direction)
    return _Support(start, stop, fine, coarse)


def _node_world(grid: Grid) -> np.ndarray:
    """World mm ``(x, y, z)`` of every voxel of ``grid``, shape ``(D, H, W, 3)``."""
    axes = [np.arange(n, dtype=np.float64) for n in grid.shape]
    index = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return grid.voxel_to_world(index)


def sliding_weight(lung: Volume, grid: Grid, falloff_mm: float = 20.0,
                   axial_stretch: float = 2.5) -> np.ndarray:
    """How much of the lung motion a point follows: 1 in the lungs, smoothly 0 far outside.

    ``w = (1 + cos(pi * min(d / falloff_mm, 1))) / 2`` with ``d`` the distance in mm from the
    lungs, measured with the body (z) axis shrunk by ``axial_stretch`` so that the falloff is
    ``axial_stretch`` times longer cranio-caudally (the liver and heart follow the diaphragm).

    Shapes:
        lung: mask on any grid; ``grid``: where the weight is wanted; returns ``grid.shape``
        float64 in ``[0, 1]``.
    """
    mask = lung.resampled(grid, "linear", 0.0).array >= 0.5
    if not mask.any():
        raise GeometryError("lung: the lung mask does not overlap the requested grid")
    sz, sy, sx = grid.spacing_zyx
    distance = ndimage.distance_transform_edt(~mask, sampling=(sz / axial_stretch, sy, sx))
    return 0.5 * (1.0 + np.cos(np.pi * np.minimum(distance / falloff_mm, 1.0)))


def _assemble(grid: Grid, lung: Volume, lung_motion_mm: Callable[[np.ndarray], np.ndarray],
              falloff_mm: float, axial_stretch: float, control_mm: float) -> DisplacementField:
    """Control-grid field from a lung motion ``(N, 3) world mm -> (N, 3) mm``.

    The motion is evaluated on the control grid where the sliding weight is positive, weighted,
    and smoothed further until the Jacobian determinant of the dense field on ``grid`` is at
    least :data:`MIN_JACOBIAN` everywhere.
    """
    margin = (falloff_mm * axial_stretch + control_mm, falloff_mm + control_mm, falloff_mm + control_mm)
    support = _support(grid, lung, margin, control_mm)
    weight = sliding_weight(lung, support.coarse, falloff_mm, axial_stretch)
    nodes = _node_world(support.coarse)
    active = weight > 0
    motion = np.zeros(support.coarse.shape + (3,))
    motion[active] = lung_motion_mm(nodes[active]) * weight[active, None]
    sigma = 0.0
    for _ in range(6):
        smoothed = (np.stack([ndimage.gaussian_filter(motion[..., c], sigma, mode="nearest")
                              for c in range(3)], axis=-1) if sigma else motion)
        control = DisplacementField.from_mm_array(smoothed, support.coarse)
        min_jac = _min_jacobian(dense_field(control, grid).displacement, grid.spacing_zyx)
        if min_jac >= MIN_JACOBIAN:
            return control
        sigma += 1.0
    raise GraphregError(f"motion: the breathing field folds (min Jacobian {min_jac:.3f} < "
                        f"{MIN_JACOBIAN}) even after smoothing; lower the amplitude")


# ---------------------------------------------------------------------- Jacobian, slab by slab
def _jacobian_slabs(disp: torch.Tensor, spacing_zyx, slab: int = 24):
    """Yield ``(z0, z1, J)`` of :func:`graphreg.ops.metrics.jacobian_determinant` slab by slab.

    Each slab is computed with a one-slice halo, so the values equal the whole-volume result.
    """
    depth = disp.shape[2]
    for z0 in range(0, depth, slab):
        z1 = min(depth, z0 + slab)
        lo, hi = max(0, z0 - 1), min(depth, z1 + 1)
        jac = jacobian_determinant(disp[:, :, lo:hi], spacing_zyx)[0]
        yield z0, z1, jac[z0 - lo: z0 - lo + (z1 - z0)]


def _moving_box(disp: torch.Tensor) -> tuple[slice, slice, slice] | None:
    """Bounding box (grown by 2 voxels) of the non-zero displacement, or None when it is all zero.

    Outside it the Jacobian determinant is exactly 1; inside it, central differences equal those
    of the whole grid (the 2-voxel rim holds zero displacement).
    """
    moving = (disp[0] != 0).any(dim=0).numpy()
    if not moving.any():
        return None
    return tuple(slice(a, b) for a, b in zip(*bounding_box(moving, margin=2)))


def _min_jacobian(disp: torch.Tensor, spacing_zyx) -> float:
    box = _moving_box(disp)
    if box is None:
        return 1.0
    sub = disp[(slice(None), slice(None)) + box]
    return min(1.0, min(float(jac.min()) for _, _, jac in _jacobian_slabs(sub, spacing_zyx)))


def jacobian_volume(field: DisplacementField) -> np.ndarray:
    """Jacobian determinant of ``x + u(x)`` on the field's grid, float32 ``(D, H, W)``.

    Same values as :func:`graphreg.ops.metrics.jacobian_determinant`, computed slab by slab on the
    region where the field moves (1 elsewhere) to bound time and memory on full CT grids.
    """
    out = np.ones(field.shape, dtype=np.float32)
    box = _moving_box(field.displacement)
    if box is None:
        return out
    sub = field.displacement[(slice(None), slice(None)) + box]
    region = out[box]
    for z0, z1, jac in _jacobian_slabs(sub, field.grid.spacing_zyx):
        region[z0:z1] = jac.numpy()
    return out


# ---------------------------------------------------------------------- motion models
def _lps_axes_check(grid: Grid) -> None:
    if not np.allclose(np.abs(np.diag(grid.direction_matrix)), 1.0, atol=1e-3):
        raise GeometryError("fixed: expected an axis-aligned image (direction cosines a signed "
                            f"permutation of the identity), got {grid.direction}")


def _dirlab_landmarks(case: int, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """T00 positions and T50 - T00 displacements of a DIR-Lab 4DCT case in LPS-like world mm.

    DIR-Lab slices run from head to feet (the exhale motion of the diaphragm is towards lower
    slice numbers), so the slice axis is negated to obtain ``+z`` = cranial as in LPS; DIR-Lab
    columns run to the patient's left and rows to the back, like LPS ``x`` and ``y``.
    """
    info = dirlab_case(f"4dct{case}")
    folder = Path(data_dir) / f"case{case}"
    inhale = read_landmarks(folder / f"Case{case}_300_T00_xyz.txt", fmt="dirlab")
    exhale = read_landmarks(folder / f"Case{case}_300_T50_xyz.txt", fmt="dirlab")
    flip = np.array([1.0, 1.0, -1.0])
    p00 = info.grid.voxel_to_world(inhale.points) * flip
    p50 = info.grid.voxel_to_world(exhale.points) * flip
    return p00, p50 - p00


def _lung_box_mm(lung: Volume) -> tuple[np.ndarray, np.ndarray]:
    """World-mm (x, y, z) bounding box of the lung voxel centres."""
    start, stop = bounding_box(lung.array)
    corners = np.array([[a, b, c] for a in (start[0], stop[0] - 1) for b in (start[1], stop[1] - 1)
                        for c in (start[2], stop[2] - 1)], dtype=np.float64)
    world = lung.grid.voxel_to_world(corners)
    return world.min(0), world.max(0)


def dirlab_motion(case: int, fixed: Volume, lung: Volume, amplitude: float = 1.0,
                  smoothing: float = 100.0, jitter_mm: float = 0.0,
                  rng: Optional[np.random.Generator] = None, falloff_mm: float = 20.0,
                  axial_stretch: float = 2.5, control_mm: float = 4.0,
                  data_dir: str | Path = DIRLAB_4DCT_DIR) -> DisplacementField:
    """Real breathing motion of a DIR-Lab 4DCT case, transplanted into ``fixed``'s lungs.

    The 300 inhale landmarks are mapped per axis from their bounding box onto the bounding box of
    ``lung``; their exhale - inhale displacements are scaled by the same per-axis factors (times
    ``amplitude``, plus optional Gaussian ``jitter_mm`` per landmark and axis) and interpolated by
    a thin-plate spline with ``smoothing`` (:class:`scipy.interpolate.RBFInterpolator`, affine
    part included).

    Args:
        case: DIR-Lab 4DCT case 1..10.
        fixed: the end-inhale CT (HU); only its grid is used.
        lung: lung mask of ``fixed`` (e.g. :func:`graphreg.ops.lungmask.lung_mask`).
        amplitude: factor on the displacements (1 = the case's own breathing depth).
        smoothing: TPS smoothing (``RBFInterpolator(smoothing=...)``, kernel ``r^2 log r`` of mm).
        jitter_mm: standard deviation of random changes of each landmark displacement (needs
            ``rng``); 0 gives the case's motion exactly.
        rng: random generator for the jitter.
        falloff_mm, axial_stretch: sliding falloff outside the lungs (see :func:`sliding_weight`).
        control_mm: spacing of the control grid the spline is evaluated on.
        data_dir: folder holding ``caseN/CaseN_300_T00_xyz.txt`` and ``..._T50_xyz.txt``.

    Returns:
        :class:`~graphreg.core.field.DisplacementField` on ``fixed.grid`` (fixed = inhale -> moving =
        exhale), with the diaphragm moving cranially.

    Raises:
        GraphregError: ``case`` is not 1..10, ``amplitude`` is negative, or ``jitter_mm > 0``
            without ``rng``.
        GeometryError: ``lung`` is empty or not axis-aligned.
    """
    if isinstance(case, bool) or not isinstance(case, (int, np.integer)) or not 1 <= case <= 10:
        raise GraphregError(f"case: expected a DIR-Lab 4DCT case number 1..10, got {case!r}")
    if not amplitude >= 0:
        raise GraphregError(f"amplitude: expected a non-negative factor, got {amplitude}")
    if jitter_mm > 0 and rng is None:
        raise GraphregError("rng: required when jitter_mm > 0, got None")
    _lps_axes_check(fixed.grid)
    positions, displacements = _dirlab_landmarks(int(case), Path(data_dir))
    lo_d, hi_d = positions.min(0), positions.max(0)
    lo_p, hi_p = _lung_box_mm(lung)
    scale = (hi_p - lo_p) / (hi_d - lo_d)
    centres = lo_p + (positions - lo_d) * scale
    values = displacements * scale * amplitude
    if jitter_mm > 0:
        values = values + rng.normal(0.0, jitter_mm, size=values.shape)
    spline = RBFInterpolator(centres, values, kernel="thin_plate_spline", smoothing=smoothing)
    return _assemble(fixed.grid, lung, spline, falloff_mm, axial_stretch, control_mm)


@dataclass(frozen=True)
class ParametricBreathing:
    """Parameters of :func:`parametric_motion` (mm and dimensionless factors).

    Attributes:
        diaphragm_mm: cranial displacement at the lung base of the right and left lung.
        exponent: shape of the cranio-caudal profile ``(height from apex)^exponent``.
        ap_contraction: fraction by which the antero-posterior lung depth shrinks (towards the
            back).
        lateral_contraction: fraction by which the lung width shrinks (towards the midline).
        wobble_mm: amplitude of a smooth random perturbation (a few Gaussian bumps).
    """

    diaphragm_mm: tuple[float, float]
    exponent: float
    ap_contraction: float
    lateral_contraction: float
    wobble_mm: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> "ParametricBreathing":
        """Draw plausible normal-breathing parameters."""
        base = rng.uniform(6.0, 22.0)
        return cls(diaphragm_mm=(base * rng.uniform(0.8, 1.2), base * rng.uniform(0.8, 1.2)),
                   exponent=rng.uniform(1.3, 2.5), ap_contraction=rng.uniform(0.01, 0.06),
                   lateral_contraction=rng.uniform(0.0, 0.04), wobble_mm=rng.uniform(0.0, 2.0))


def parametric_motion(fixed: Volume, lung: Volume, rng: np.random.Generator,
                      params: Optional[ParametricBreathing] = None, falloff_mm: float = 20.0,
                      axial_stretch: float = 2.5, control_mm: float = 4.0) -> DisplacementField:
    """Random parametric breathing (inhale -> exhale) inside ``fixed``'s lungs.

    The lungs are described by their world bounding box ``[lo, hi]`` (x, y, z). With
    ``h = (z_top - z) / (z_top - z_bottom)`` the height below the apex (0 at the apex, 1 at the
    base) and ``s = (1 + tanh((x - x_mid) / 30 mm)) / 2`` the side (0 right, 1 left):

    - cranio-caudal: ``u_z = ((1 - s) d_right + s d_left) * h^exponent`` (towards the head);
    - antero-posterior: ``u_y = ap_contraction * (y_back - y)`` (front moves back);
    - lateral: ``u_x = -lateral_contraction * (x - x_mid)`` (towards the midline);
    - plus ``wobble_mm`` times a sum of 6 random Gaussian bumps (width 40-80 mm, random
      directions).

    Shapes / convention: as :func:`dirlab_motion`. ``params`` defaults to
    :meth:`ParametricBreathing.random` drawn from ``rng``.
    """
    _lps_axes_check(fixed.grid)
    p = params if params is not None else ParametricBreathing.random(rng)
    lo, hi = _lung_box_mm(lung)
    mid_x = 0.5 * (lo[0] + hi[0])
    bumps_at = lo + rng.uniform(0.0, 1.0, size=(6, 3)) * (hi - lo)
    bumps_dir = rng.normal(size=(6, 3))
    bumps_dir /= np.linalg.norm(bumps_dir, axis=1, keepdims=True)
    bumps_width = rng.uniform(40.0, 80.0, size=6)

    def motion(points: np.ndarray) -> np.ndarray:
        x, y, z = points[:, 0], points[:, 1], points[:, 2]
        height = np.clip((hi[2] - z) / (hi[2] - lo[2]), 0.0, 1.2)
        side = 0.5 * (1.0 + np.tanh((x - mid_x) / 30.0))
        out = np.empty_like(points)
        out[:, 2] = ((1.0 - side) * p.diaphragm_mm[0] + side * p.diaphragm_mm[1]) * height**p.exponent
        out[:, 1] = p.ap_contraction * (hi[1] - y)
        out[:, 0] = -p.lateral_contraction * (x - mid_x)
        for at, direction, width in zip(bumps_at, bumps_dir, bumps_width):
            bump = np.exp(-np.sum((points - at) ** 2, axis=1) / (2.0 * width**2))
            out += p.wobble_mm * bump[:, None] * direction
        return out

    return _assemble(fixed.grid, lung, motion, falloff_mm, axial_stretch, control_mm)


# ---------------------------------------------------------------------- synthesis
def _norm_mm(vectors: torch.Tensor, spacing_zyx: Sequence[float]) -> torch.Tensor:
    """Length in mm of voxel vectors ``(1, 3, D, H, W)`` -> ``(D, H, W)``."""
    sq = sum((vectors[0, c] * float(s)) ** 2 for c, s in enumerate(spacing_zyx))
    return torch.sqrt(sq)


def _newton_inverse(u: torch.Tensor, v: torch.Tensor, spacing_zyx: Sequence[float],
                    iterations: int, tolerance_mm: float) -> torch.Tensor:
    """Solve ``v + u(y + v) = 0`` for ``v`` by Newton's method from the start ``v``.

    Each step samples ``u`` and its gradient at ``y + v(y)`` and subtracts
    ``(I + grad u)^-1 (v + u(y + v))``. Only voxels whose sample point lies in the grid count for
    the stopping test (the others look outside the field, where no inverse exists).
    """
    shape = tuple(u.shape[2:])
    grads = torch.gradient(u[0], dim=(1, 2, 3))  # grads[b][c] = d u_c / d axis_b
    gradient = torch.stack([grads[b][c] for c in range(3) for b in range(3)])[None]
    both = torch.cat([u, gradient], dim=1)
    size = torch.tensor(shape, dtype=u.dtype).view(3, 1, 1, 1) - 1
    identity = identity_grid(shape, dtype=u.dtype)[0]
    eye = torch.eye(3, dtype=u.dtype)
    for _ in range(iterations):
        sampled = warp(both, v)[0]
        residual = v[0] + sampled[:3]
        jac = [[sampled[3 + 3 * c + b] + eye[c, b] for b in range(3)] for c in range(3)]
        step, _ = solve3x3(jac, residual)
        v = v - step[None]
        target = identity + v[0]
        inside = ((target >= 0) & (target <= size)).all(dim=0)
        change = _norm_mm(step[None], spacing_zyx)[inside]
        if change.numel() == 0 or float(change.max()) < tolerance_mm:
            break
    return v


def _invert_box(u: torch.Tensor, spacing_zyx: Sequence[float], iterations: int,
                tolerance_mm: float) -> torch.Tensor:
    """Inverse of a voxel field ``(1, 3, D, H, W)``, coarse to fine (halving above 64^3 voxels)."""
    shape = tuple(u.shape[2:])
    if np.prod(shape) > 64**3 and min(shape) >= 16:
        half = tuple((n + 1) // 2 for n in shape)
        half_spacing = [s * (n - 1) / (h - 1) for s, n, h in zip(spacing_zyx, shape, half)]
        v_half = _invert_box(resize_field(u, half), half_spacing, iterations, tolerance_mm)
        v = resize_field(v_half, shape)
    else:
        v = -u
    return _newton_inverse(u, v, spacing_zyx, iterations, tolerance_mm)


def invert_field(field: DisplacementField, iterations: int = 10,
                 tolerance_mm: float = 5e-3) -> DisplacementField:
    """Inverse ``v`` of a field ``u`` on the same grid: ``v(y) = -u(y + v(y))``.

    Newton iteration on ``v + u(y + v) = 0`` on the bounding box of the non-zero displacement
    (``v`` is zero where ``u`` is), coarse to fine: the inverse of a half-resolution copy starts
    the iteration, which stops when the update is below ``tolerance_mm`` for every voxel that
    samples inside the grid, or after ``iterations`` steps per level.

    Shapes:
        field.displacement ``(1, 3, D, H, W)`` voxels; returns a field of the same shape.
    """
    u = field.displacement
    moving = (u != 0).any(dim=1)[0]
    if not bool(moving.any()):
        return DisplacementField(torch.zeros_like(u), field.grid)
    start, stop = bounding_box(moving.numpy(), margin=1)
    z, y, x = (slice(a, b) for a, b in zip(start, stop))
    v = _invert_box(u[:, :, z, y, x].contiguous(), field.grid.spacing_zyx, iterations, tolerance_mm)
    out = torch.zeros_like(u)
    out[:, :, z, y, x] = v
    return DisplacementField(out, field.grid)


def inverse_residual_mm(field: DisplacementField, inverse: DisplacementField) -> np.ndarray:
    """``|v(y) + u(y + v(y))|`` in mm at every voxel ``y``, float32 ``(D, H, W)``.

    Evaluated on the bounding box of the non-zero displacements (zero outside, where ``u`` and
    ``v`` vanish).
    """
    u, v = field.displacement, inverse.displacement
    out = np.zeros(field.shape, dtype=np.float32)
    moving = ((u != 0) | (v != 0)).any(dim=1)[0].numpy()
    if not moving.any():
        return out
    box = tuple(slice(a, b) for a, b in zip(*bounding_box(moving, margin=1)))
    index = (slice(None), slice(None)) + box
    u_box, v_box = u[index].contiguous(), v[index].contiguous()
    out[box] = _norm_mm(v_box + warp(u_box, v_box), field.grid.spacing_zyx).numpy()
    return out


def vessel_landmarks(fixed: Volume, lung: Volume, rng: np.random.Generator, count: int = 300,
                     erosion_mm: float = 6.0, min_hu: float = -600.0) -> np.ndarray:
    """Evaluation landmarks: bright local maxima (vessels) deep in the lungs, spread evenly.

    Candidates are voxels above ``min_hu`` that are the maximum of their 3x3x3 neighbourhood,
    inside the lung mask eroded by ``erosion_mm``; ``count`` of them are chosen by farthest-point
    sampling in mm from a random start. Independent of any keypoint detector.

    Shapes:
        returns: ``(count, 3)`` float64 voxel ``(z, y, x)`` of ``fixed.grid`` (integers).

    Raises:
        GraphregError: fewer than ``count`` candidates.
    """
    start, stop = bounding_box(lung.array, margin=1)
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    hu = fixed.array[box].astype(np.float32)
    inside = np.pad(lung.array[box] > 0, 1)
    depth = ndimage.distance_transform_edt(inside, sampling=fixed.grid.spacing_zyx)[1:-1, 1:-1, 1:-1]
    inner = depth > erosion_mm
    peaks = (hu > min_hu) & (hu == ndimage.maximum_filter(hu, size=3)) & inner
    candidates = np.argwhere(peaks).astype(np.float64)
    if len(candidates) < count:
        raise GraphregError(f"count: expected at most {len(candidates)} landmarks (vessel "
                            f"candidates in the eroded lungs), got {count}")
    mm = torch.from_numpy(candidates * np.array(fixed.grid.spacing_zyx))
    chosen = farthest_point_sampling(mm, count, start=int(rng.integers(len(candidates))))
    return candidates[chosen.numpy()] + np.array(start, dtype=np.float64)


def synthesize_pair(fixed: Volume, motion: DisplacementField, lung: Volume,
                    rng: np.random.Generator, noise_hu: float = 15.0, density: bool = True,
                    moving_spacing: Optional[Sequence[float]] = None, landmarks: int = 300,
                    name: str = "pair", meta: Optional[dict] = None) -> PairData:
    """Make the moving (exhale) image of ``fixed`` under ``motion``, with exact ground truth.

    Args:
        fixed: end-inhale CT in HU (any integer or float type).
        motion: fixed -> moving field (from :func:`dirlab_motion` or
            :func:`parametric_motion`), on ``fixed.grid`` or on a control grid; its dense
            version (:func:`dense_field`) defines the ground truth.
        lung: lung mask of ``fixed`` on ``fixed.grid``.
        rng: random generator (noise, landmark start).
        noise_hu: standard deviation of the Gaussian noise added to the moving image.
        density: change the lung density by mass preservation (HU rises where the lung is
            compressed).
        moving_spacing: resample the moving image and mask to this spacing (x, y, z) mm over the
            same extent; ``None`` keeps the fixed grid.
        landmarks: number of evaluation landmark pairs (0: none, ``initial_tre_mm`` is None).
        name: the pair's name; ``meta``: extra entries for :attr:`PairData.meta`.

    Returns:
        :class:`~graphreg.datasets.pairs.PairData` with the moving image (int16 HU), both masks
        (moving mask = fixed mask warped by the inverse, nearest neighbour), landmark pairs in
        world mm, ``motion`` as the ground-truth field and ``meta`` with the initial TRE, the minimum Jacobian
        determinant and the inverse residual in the moving lungs.

    Raises:
        GeometryError: ``lung`` is not on ``fixed.grid``.
    """
    grid = fixed.grid
    if not lung.grid.same_as(grid):
        raise GeometryError(f"lung: expected a mask on the fixed grid [{grid.describe()}], "
                            f"got [{lung.grid.describe()}]")
    dense = dense_field(motion, grid)
    inverse = invert_field(dense)
    u, v = dense.displacement, inverse.displacement
    moved = (u != 0).any(dim=1)[0].numpy()
    start, stop = bounding_box(moved if moved.any() else np.ones(grid.shape), margin=1)
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    v_box = v[(slice(None), slice(None)) + box].contiguous()

    fixed_hu = fixed.array.astype(np.float32)
    jac = jacobian_volume(dense)
    lung_box = (lung.array[box] > 0).astype(np.float32)
    channels = [fixed_hu[box], lung_box]
    if density:
        channels.append(np.where(lung_box > 0, 1.0 / jac[box], 1.0).astype(np.float32))
    stack = torch.from_numpy(np.stack(channels))[None]
    pulled = warp(stack, v_box)[0].numpy()
    pulled_mask = warp(torch.from_numpy(lung_box)[None, None], v_box, mode="nearest")[0, 0].numpy()
    moving_hu = fixed_hu.copy()
    moving_box = pulled[0]
    if density:
        moving_box = (moving_box - _HU_AIR) * pulled[2] + _HU_AIR
    moving_hu[box] = moving_box
    if noise_hu > 0:
        moving_hu += rng.standard_normal(moving_hu.shape, dtype=np.float32) * np.float32(noise_hu)
    info = np.iinfo(np.int16)
    moving_arr = np.clip(np.round(moving_hu), info.min, info.max).astype(np.int16)
    moving_mask_arr = lung.array.astype(np.uint8).copy()
    moving_mask_arr[box] = (pulled_mask > 0.5).astype(np.uint8)
    moving = Volume(moving_arr, grid)
    moving_mask = Volume(moving_mask_arr, grid)

    residual = inverse_residual_mm(dense, inverse)
    in_moving_lung = moving_mask_arr > 0
    if landmarks > 0:
        fixed_mm = grid.voxel_to_world(vessel_landmarks(fixed, lung, rng, count=landmarks))
        moving_mm = dense.transform_points(fixed_mm)
        tre = summarize_errors(landmark_errors(fixed_mm, moving_mm))
        initial_tre = {k: tre[k] for k in ("mean_mm", "std_mm", "p50_mm", "p75_mm", "max_mm")}
    else:
        fixed_mm = moving_mm = np.zeros((0, 3))
        initial_tre = None
    lung_jac = jac[lung.array > 0]
    if moving_spacing is not None:
        moving = moving.with_spacing(moving_spacing, "linear", default=_HU_AIR)
        moving = Volume(np.round(moving.array).astype(np.int16), moving.grid)
        moving_mask = moving_mask.with_spacing(moving_spacing, "nearest")
    info_meta = dict(meta or {})
    info_meta.update({
        "name": name,
        "noise_hu": float(noise_hu),
        "density": bool(density),
        "initial_tre_mm": initial_tre,
        "n_landmarks": int(landmarks),
        "jacobian_min": float(jac.min()),
        "jacobian_lung_min": float(lung_jac.min()),
        "jacobian_lung_mean": float(lung_jac.mean()),
        "lung_volume_ratio": float(in_moving_lung.sum() / max(1, int((lung.array > 0).sum()))),
        "inverse_residual_mm": {"lung_max": float(residual[in_moving_lung].max()),
                                "lung_p99": float(np.percentile(residual[in_moving_lung], 99))},
        "fixed_spacing_mm": list(grid.spacing),
        "moving_spacing_mm": list(moving.grid.spacing),
        "gt_control_spacing_mm": list(motion.grid.spacing),
    })
    return PairData(name=name, fixed=fixed, moving=moving, fixed_mask=lung, moving_mask=moving_mask,
                    fixed_landmarks_mm=fixed_mm, moving_landmarks_mm=moving_mm, meta=info_meta,
                    gt_field=motion)
