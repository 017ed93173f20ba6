"""Realistic pairs: two acquisitions of a (new) patient instead of one image warped.

Both images are sampled from a denoised native-resolution source CT, each on its own grid:

- the fixed grid covers the patient's lungs plus a margin at the requested spacing, with a random
  sub-voxel origin; the moving grid has its own spacing (default: in-plane as the fixed, slices
  1.25 times as thick, i.e. 2.5 mm for a 2 mm set), its own random sub-voxel origin and a field
  of view shortened by a random amount at each end;
- anti-aliasing matches the target voxel: a Gaussian with the variance of a box of the target
  voxel less that of the source voxel, ``sigma^2 = (t^2 - s^2) / 12`` per axis, plus an optional
  reconstruction-blur difference on the moving image;
- independent band-pass ("CT-like") noise on each image;
- where an image looks beyond the source's field of view, tissue continues: the source's z ends
  fade over ``extend_mm`` into their edge slice with the lungs filled with soft tissue and smoothed
  in-plane (no fine structure left to repeat into streaks), which is repeated beyond (never an
  air band);
- the breathing motion slides at the pleura with a true discontinuity: inside the lungs the
  points follow the lung motion ``u_in``; outside they follow ``u_out``, the lung motion's normal
  component (plus ``wall_fraction`` of its tangential part) faded out with the distance from the
  lungs. A moving voxel ``y`` is pulled from the point ``x`` with ``x + u(x) = y`` (Newton, float64,
  residual below 1e-6 mm), taking the lung solution where it lies in the lungs (the thin gaps
  sliding leaves along a curved wall are filled with lung, :meth:`SlidingBreathing.pull`).

Ground truth: landmarks are fixed-grid voxel centres of vessels in world mm; their moving positions
are ``p + u_in(p) + t`` evaluated analytically, never resampled. The stored ``gt_field`` is the
same piecewise field sampled at the fixed voxels (the sliding jump is smeared over one voxel
between them).

Convention:
    World mm ``(x, y, z)`` LPS, axis-aligned grids; point arrays ``(N, 3)`` float64.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field as dataclass_field
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

from graphreg.errors import GeometryError, GraphregError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.io.images import read_image
from graphreg.ops.metrics import landmark_errors, summarize_errors
from graphreg.core.spatial import sample_points
from graphreg.core.volume import Volume, bounding_box
from graphreg.datasets.anatomy import Anatomy, MotionPattern, check_invertible
from graphreg.datasets.breathing import MIN_JACOBIAN, _lps_axes_check, _support, sliding_weight, vessel_landmarks
from graphreg.ops.lungmask import lung_mask
from graphreg.datasets.pairs import PairData
from graphreg.datasets.paths import POPI_CT

_HU_AIR = -1000.0
#: Soft tissue that replaces the lungs in the continuation beyond the source's z ends.
_HU_TISSUE = 40.0
_CHUNK = 1 << 19
#: Smallest Jacobian determinant of the wall motion at its control nodes: between the nodes the
#: trilinear field can come closer to folding, where the inversion would not converge.
_WALL_MIN_JACOBIAN = 0.35


# ---------------------------------------------------------------------- source
@dataclass(eq=False)
class SourceCT:
    """The denoised native-resolution source CT and its lung mask.

    Attributes:
        ct: float32 HU, Gaussian-denoised (``denoise_mm`` per axis), cropped in-plane to the lungs
            plus 60 mm.
        lung: uint8 lung mask on ``ct.grid``.
        box: world mm ``(lo, hi)`` of the lung voxel centres; ``centre`` its middle.
    """

    ct: Volume
    lung: Volume
    box: tuple[np.ndarray, np.ndarray] = dataclass_field(init=False)
    centre: np.ndarray = dataclass_field(init=False)

    def __post_init__(self) -> None:
        _lps_axes_check(self.ct.grid)
        if not self.lung.grid.same_as(self.ct.grid):
            raise GeometryError("lung: expected a mask on the source CT's grid")
        start, stop = bounding_box(self.lung.array > 0)
        corners = np.array([start, np.array(stop) - 1], dtype=np.float64)
        world = self.ct.grid.voxel_to_world(corners)
        self.box = (world.min(0), world.max(0))
        self.centre = 0.5 * (self.box[0] + self.box[1])
        self._lung_tensor = torch.from_numpy((self.lung.array > 0).astype(np.float32))[None, None]

    @classmethod
    def load(cls, path: str | os.PathLike = POPI_CT, lung: Optional[Volume] = None,
             denoise_mm: Sequence[float] = (0.8, 0.8, 1.0), margin_mm: float = 60.0,
             extend_mm: float = 12.0, smear_mm: float = 4.0) -> "SourceCT":
        """Read a CT (HU), segment its lungs (unless ``lung`` is given), crop, denoise it and
        continue it beyond its z ends (:func:`continue_beyond_z`, ``extend_mm``, ``smear_mm``)."""
        ct = read_image(path) if not isinstance(path, Volume) else path
        ct = Volume(np.asarray(ct.array, dtype=np.float32), ct.grid)
        lung = lung if lung is not None else lung_mask(ct)
        margin = np.ceil(margin_mm / np.array(ct.grid.spacing_zyx)).astype(int)
        margin[0] = ct.grid.shape[0]  # keep every slice: the field of view ends there
        start, stop = bounding_box(lung.array > 0, margin=margin)
        ct, lung = ct.cropped(start, stop), lung.cropped(start, stop)
        sigma = np.array(denoise_mm[::-1], dtype=np.float64) / np.array(ct.grid.spacing_zyx)
        smooth = ndimage.gaussian_filter(ct.array, sigma, mode="nearest").astype(np.float32)
        return cls(*continue_beyond_z(Volume(smooth, ct.grid), lung, extend_mm, smear_mm))

    def prefiltered(self, spacing_xyz: Sequence[float], extra_blur_mm: float = 0.0) -> torch.Tensor:
        """The source anti-aliased for a target voxel ``spacing_xyz`` (see the module docstring),
        ``(1, 1, D, H, W)`` float32."""
        source = np.array(self.ct.grid.spacing_zyx)
        target = np.array(spacing_xyz[::-1], dtype=np.float64)
        sigma_mm = np.sqrt(np.maximum(target**2 - source**2, 0.0) / 12.0 + extra_blur_mm**2)
        array = ndimage.gaussian_filter(self.ct.array, sigma_mm / source, mode="nearest")
        return torch.from_numpy(array.astype(np.float32))[None, None]

    def sample(self, volume: torch.Tensor, points: np.ndarray) -> np.ndarray:
        """Values of a source-grid ``volume`` at world ``points`` ``(N, 3)``, border repeated."""
        return sample_points(volume, _index(self.ct.grid, points).float(), padding_mode="border")[0, 0].numpy()

    def lung_fraction(self, points: np.ndarray) -> np.ndarray:
        """Trilinear lung-mask value at world ``points`` ``(N, 3)``, 0 outside the source."""
        index = _index(self.ct.grid, points).float()
        return sample_points(self._lung_tensor, index, padding_mode="zeros")[0, 0].numpy()


def continue_beyond_z(ct: Volume, lung: Volume, extend_mm: float = 12.0,
                      smear_mm: float = 4.0) -> tuple[Volume, Volume]:
    """``ct`` and ``lung`` extended by ``ceil(extend_mm / slice)`` slices at both z ends.

    At distance ``d`` mm beyond an end, the slice is ``(1 - w) * edge + w * smooth`` with
    ``w = min(d / extend_mm, 1)``: ``edge`` the end slice, ``smooth`` the end slice with its lung
    voxels set to soft tissue and a Gaussian of ``smear_mm`` (sigma) applied in-plane. Sampling
    with the border repeated beyond the extension then repeats ``smooth``: tissue without the fine
    in-plane structure that, repeated along z, draws vertical streaks. The lung mask is 0 in the
    extension.

    Args:
        ct: float32 HU volume ``(D, H, W)``.
        lung: its lung mask (same grid).
        extend_mm: length of the fade (mm); > 0.
        smear_mm: in-plane smoothing (mm) of the continued slice.

    Returns:
        ``(ct, lung)`` on the extended grid ``(D + 2 * pad, H, W)`` (uint8 lung mask).
    """
    if not extend_mm > 0:
        raise GraphregError(f"extend_mm: expected a length > 0 mm, got {extend_mm}")
    dz, dy, dx = ct.grid.spacing_zyx
    pad = int(np.ceil(extend_mm / dz))
    weight = np.minimum(np.arange(1, pad + 1) * dz / extend_mm, 1.0)[:, None, None]
    slabs = []
    for end in (0, -1):
        edge = ct.array[end].astype(np.float64)
        filled = np.where(lung.array[end] > 0, _HU_TISSUE, edge)
        smooth = ndimage.gaussian_filter(filled, smear_mm / np.array([dy, dx]), mode="nearest")
        slabs.append(((1.0 - weight) * edge + weight * smooth).astype(np.float32))  # nearest the end first
    array = np.concatenate([slabs[0][::-1], np.asarray(ct.array, dtype=np.float32), slabs[1]])
    origin = ct.grid.voxel_to_world(np.array([-pad, 0, 0], dtype=np.float64))
    grid = Grid(array.shape, ct.grid.spacing, tuple(origin), ct.grid.direction)
    mask = np.pad((lung.array > 0).astype(np.uint8), ((pad, pad), (0, 0), (0, 0)))
    return Volume(array, grid), Volume(mask, grid)


def grid_points(grid: Grid) -> np.ndarray:
    """World mm of every voxel centre of ``grid``, ``(D*H*W, 3)`` float64 in C order."""
    axes = [torch.arange(n, dtype=torch.float64) for n in grid.shape]
    index = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    return grid.voxel_to_world(index).numpy()


def sample_on(volume: Volume, grid: Grid) -> np.ndarray:
    """``volume`` sampled trilinearly at the voxel centres of ``grid``, border values repeated
    beyond its field of view; ``(D*H*W,)`` float32 in C order."""
    tensor = torch.from_numpy(np.asarray(volume.array, dtype=np.float32))[None, None]
    index = _index(volume.grid, grid_points(grid)).float()
    return sample_points(tensor, index, padding_mode="border")[0, 0].numpy()


def ct_noise(shape: Sequence[int], spacing_zyx: Sequence[float], std_hu: float,
             rng: np.random.Generator, grain_mm: float = 1.0) -> np.ndarray:
    """Spatially correlated, CT-like (band-pass) noise of standard deviation ``std_hu``.

    White noise filtered by ``G(grain) - 0.5 G(3 grain)`` (Gaussian sigmas in mm, at least 0.4
    voxel): a noise power spectrum that peaks at mid frequencies like filtered back-projection's.

    Shapes:
        returns ``shape`` float32.
    """
    white = rng.standard_normal(tuple(shape), dtype=np.float32)
    fine = np.maximum(grain_mm / np.asarray(spacing_zyx, dtype=np.float64), 0.4)
    noise = ndimage.gaussian_filter(white, fine) - 0.5 * ndimage.gaussian_filter(white, 3 * fine)
    return (noise * np.float32(std_hu / max(float(noise.std()), 1e-12))).astype(np.float32)


# ---------------------------------------------------------------------- fields
class _ControlField:
    """A displacement (mm) on an axis-aligned control grid, trilinear, with its gradient.

    ``sample(points)`` gives ``(N, 12)``: the displacement ``(x, y, z)`` and ``d u_c / d x_k``
    (row-major ``c, k``), all float64.
    """

    def __init__(self, grid: Grid, mm: np.ndarray) -> None:
        self.grid = grid
        self.mm = mm
        spacing = grid.spacing_zyx
        grads = [np.gradient(mm[..., c], *spacing) for c in range(3)]
        channels = [mm[..., c] for c in range(3)]
        for c in range(3):
            channels += [grads[c][2], grads[c][1], grads[c][0]]  # d/dx, d/dy, d/dz
        self._tensor = torch.from_numpy(np.stack(channels).astype(np.float64))[None]

    def sample(self, points: np.ndarray) -> np.ndarray:
        return sample_points(self._tensor, _index(self.grid, points), padding_mode="border")[0].T.numpy()

    def displacement(self, points: np.ndarray) -> np.ndarray:
        return self.sample(points)[:, :3]

    def inverse(self, targets: np.ndarray, iterations: int = 30, tolerance_mm: float = 1e-7,
                max_step_mm: float = 4.0):
        """``x`` with ``x + u(x) = targets`` (damped Newton on the points not yet converged), the
        residual ``(N,)`` mm and ``J(x)`` ``(N,)``."""
        x = targets - self.displacement(targets)
        active = np.arange(len(targets))
        eye = torch.eye(3, dtype=torch.float64)
        for _ in range(iterations):
            values = torch.from_numpy(self.sample(x[active]))
            residual = torch.from_numpy(x[active] - targets[active]) + values[:, :3]
            done = residual.abs().amax(dim=1) < tolerance_mm
            active, values, residual = active[~done.numpy()], values[~done], residual[~done]
            if active.size == 0:
                break
            step = torch.linalg.solve(values[:, 3:].reshape(-1, 3, 3) + eye, residual)
            length = step.norm(dim=1, keepdim=True)
            step = step * torch.clamp(max_step_mm / length.clamp_min(1e-12), max=1.0)
            x[active] -= step.numpy()
        values = self.sample(x)
        error = np.linalg.norm(x + values[:, :3] - targets, axis=1)
        jac = torch.linalg.det(torch.from_numpy(values[:, 3:]).reshape(-1, 3, 3) + eye).numpy()
        return x, error, jac


def _index(grid: Grid, points: np.ndarray) -> torch.Tensor:
    """Continuous voxel index ``(N, 3)`` float64 tensor of world ``points`` (torch arithmetic: numpy's
    threaded BLAS is very slow for ``(N, 3) @ (3, 3)`` on a busy host)."""
    return grid.world_to_voxel(torch.from_numpy(np.ascontiguousarray(points, dtype=np.float64)))


def _control_jacobian(mm: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    grads = [np.gradient(mm[..., c], *spacing_zyx) for c in range(3)]
    jac = np.stack([np.stack([grads[c][2], grads[c][1], grads[c][0]], axis=-1) for c in range(3)], axis=-2)
    return np.linalg.det(jac + np.eye(3))


def _smoothed_until_invertible(mm: np.ndarray, grid: Grid, region: np.ndarray, what: str,
                               min_jacobian: float = MIN_JACOBIAN) -> np.ndarray:
    """``mm`` smoothed (Gaussian, sigma 0, 1, 2, ... control nodes) until ``J >= min_jacobian``
    on ``region`` (bool, control grid)."""
    for sigma in range(7):
        out = mm if sigma == 0 else np.stack(
            [ndimage.gaussian_filter(mm[..., c], sigma, mode="nearest") for c in range(3)], axis=-1)
        worst = float(_control_jacobian(out, grid.spacing_zyx)[region].min(initial=1.0))
        if worst >= min_jacobian:
            return out
    raise GraphregError(f"{what}: the breathing field folds (min Jacobian {worst:.3f}) even after "
                        "smoothing; lower the amplitude")


@dataclass(eq=False)
class SlidingBreathing:
    """Breathing that slides at the pleura: ``u = u_in`` in the lungs, ``u_out`` outside, plus a
    whole-body ``translation`` (mm, (3,)).

    ``phi`` is the lungs' signed distance (mm, negative inside) on the fixed grid; a point is in
    the lungs where its trilinear ``phi`` is negative (exactly the fixed lung mask at the fixed
    voxel centres).
    """

    inside: _ControlField
    outside: _ControlField
    phi: Volume
    translation: np.ndarray

    def __post_init__(self) -> None:
        self._phi = torch.from_numpy(self.phi.array.astype(np.float64))[None, None]

    def in_lungs(self, points: np.ndarray) -> np.ndarray:
        return self._phi_at(points) < 0

    def _phi_at(self, points: np.ndarray) -> np.ndarray:
        return sample_points(self._phi, _index(self.phi.grid, points), padding_mode="border")[0, 0].numpy()

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """``u(points)`` ``(N, 3)`` mm (fixed -> moving)."""
        inside = self.in_lungs(points)
        out = self.outside.displacement(points)
        if inside.any():
            out[inside] = self.inside.displacement(points[inside])
        return out + self.translation

    def pull(self, targets: np.ndarray):
        """For moving-image points ``targets`` ``(N, 3)``: their fixed-space origins ``x`` (N, 3),
        whether ``x`` is in the lungs (N,), ``J(x)`` (N,), the inversion residual (N,) mm and
        whether the point lies in a gap (N,).

        The lung solution wins where both exist. In a gap (the lung solution lies outside the
        lungs and the wall solution inside them: the lungs slide along a curved wall and leave a
        thin shell, ~1 mm, that neither side reaches) the point takes the lung solution moved onto
        the lung surface along the signed distance's gradient, so the lung fills it.
        """
        shifted = targets - self.translation
        x, error, jac = self.outside.inverse(shifted)
        inside = np.zeros(len(targets), dtype=bool)
        gap = np.zeros(len(targets), dtype=bool)
        candidates = np.flatnonzero(self._near_lungs(shifted))
        if candidates.size:
            x_in, e_in, j_in = self.inside.inverse(shifted[candidates])
            ok = self.in_lungs(x_in)
            hole = ~ok & self.in_lungs(x[candidates])
            x_in[hole] = self._onto_lungs(x_in[hole])
            use = ok | hole
            pick = candidates[use]
            x[pick], error[pick], jac[pick] = x_in[use], e_in[use], j_in[use]
            inside[pick] = True
            gap[candidates[hole]] = True
        return x, inside, jac, error, gap

    def _onto_lungs(self, points: np.ndarray, depth_mm: float = 0.05) -> np.ndarray:
        """``points`` just outside the lungs moved along ``-grad phi`` to ``depth_mm`` inside them."""
        h = 0.5
        gradient = np.stack([(self._phi_at(points + h * e) - self._phi_at(points - h * e)) / (2 * h)
                             for e in np.eye(3)], axis=1)
        normal = gradient / np.maximum(np.linalg.norm(gradient, axis=1, keepdims=True), 1e-6)
        return points - (self._phi_at(points) + depth_mm)[:, None] * normal

    def _near_lungs(self, points: np.ndarray) -> np.ndarray:
        """Points within the largest lung displacement of the lungs (where a lung solution may exist)."""
        reach = float(np.linalg.norm(self.inside.mm, axis=-1).max(initial=0.0)) + 2.0
        return self._phi_at(points) < reach


def signed_distance(mask: Volume) -> Volume:
    """Signed distance (mm, float64) to the mask's boundary, negative inside; ``|phi| >= s/2`` at
    every voxel centre, so ``phi < 0`` exactly on the mask's voxels."""
    inside = mask.array > 0
    sampling = mask.grid.spacing_zyx
    d_out = ndimage.distance_transform_edt(~inside, sampling=sampling)
    d_in = ndimage.distance_transform_edt(inside, sampling=sampling)
    half = 0.5 * min(sampling)
    return Volume(np.where(inside, half - d_in, d_out - half), mask.grid)


def sliding_breathing(pattern: MotionPattern, lung: Volume, falloff_mm: float = 20.0,
                      axial_stretch: float = 2.5, control_mm: float = 4.0, wall_fraction: float = 0.2,
                      normal_smoothing_mm: float = 4.0) -> SlidingBreathing:
    """Sliding breathing of ``pattern`` in the lungs ``lung`` (a mask on the fixed grid).

    ``u_in`` is the pattern's thin-plate spline on a ``control_mm`` grid over the lungs plus the
    falloff; ``u_out = w (n.u_in) n + w wall_fraction (u_in - (n.u_in) n)`` with ``n`` the
    gradient of the Gaussian-smoothed signed distance (unit length except near its ridges) and
    ``w`` :func:`~graphreg.datasets.breathing.sliding_weight`. Each is smoothed further where
    needed until its Jacobian determinant is at least :data:`MIN_JACOBIAN` (lungs) or
    :data:`_WALL_MIN_JACOBIAN` (outside) on its side.
    """
    margin = (falloff_mm * axial_stretch + control_mm, falloff_mm + control_mm, falloff_mm + control_mm)
    support = _support(lung.grid, lung, margin, control_mm)
    coarse = support.coarse
    nodes = grid_points(coarse).reshape(coarse.shape + (3,))
    start, stop = bounding_box(lung.array > 0)
    corners = lung.grid.voxel_to_world(np.array([start, np.array(stop) - 1], dtype=np.float64))
    motion = pattern.lung_motion((corners.min(0), corners.max(0)))
    u_lung = motion(nodes.reshape(-1, 3)).reshape(nodes.shape)
    phi = signed_distance(lung)
    phi_nodes = sample_points(torch.from_numpy(phi.array)[None, None], _index(phi.grid, nodes.reshape(-1, 3)),
                              padding_mode="border")[0, 0].numpy().reshape(coarse.shape)
    inside_nodes = phi_nodes < 0
    u_in = _smoothed_until_invertible(u_lung, coarse, inside_nodes, "lung motion")
    smooth = ndimage.gaussian_filter(phi_nodes, normal_smoothing_mm / np.array(coarse.spacing_zyx),
                                     mode="nearest")
    gz, gy, gx = np.gradient(smooth, *coarse.spacing_zyx)
    gradient = np.stack([gx, gy, gz], axis=-1)
    normal = gradient / np.maximum(np.linalg.norm(gradient, axis=-1, keepdims=True), 0.5)
    along = np.sum(u_in * normal, axis=-1, keepdims=True) * normal
    weight = sliding_weight(lung, coarse, falloff_mm, axial_stretch)[..., None]
    u_out = weight * (along + wall_fraction * (u_in - along))
    u_out = _smoothed_until_invertible(u_out, coarse, ~inside_nodes, "wall motion", _WALL_MIN_JACOBIAN)
    translation = np.asarray(pattern.translation_mm, dtype=np.float64)
    return SlidingBreathing(_ControlField(coarse, u_in), _ControlField(coarse, u_out), phi, translation)


# ---------------------------------------------------------------------- acquisition
@dataclass(frozen=True)
class Acquisition:
    """How the two images are acquired (mm, HU; ranges are drawn uniformly per pair).

    Attributes:
        spacing_mm: fixed-image voxel ``(x, y, z)``.
        moving_spacing_mm: moving-image voxel; None: in-plane as the fixed, slices 1.25 times
            the fixed slice (2.5 mm for 2 mm).
        noise_hu: range of the noise standard deviation, drawn for each image.
        recon_blur_mm: range of the extra Gaussian blur (sigma) of the moving image.
        fov_trim_mm: range of the amount cut off each end of the moving image's z extent.
        margin_mm: margin around the patient's lungs of the fixed field of view.
        wall_fraction: share of the lungs' tangential motion the chest wall follows.
    """

    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    moving_spacing_mm: Optional[tuple[float, float, float]] = None
    noise_hu: tuple[float, float] = (10.0, 25.0)
    recon_blur_mm: tuple[float, float] = (0.0, 0.6)
    fov_trim_mm: tuple[float, float] = (0.0, 12.0)
    margin_mm: float = 20.0
    wall_fraction: float = 0.2

    def moving_spacing(self) -> tuple[float, float, float]:
        if self.moving_spacing_mm is not None:
            return tuple(float(s) for s in self.moving_spacing_mm)
        sx, sy, sz = self.spacing_mm
        return (float(sx), float(sy), 1.25 * float(sz))


def _patient_box(source: SourceCT, anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """World box of the patient's lungs (voxel centres of a 3 mm probe grid)."""
    lo, hi = source.box
    reach = 0.25 * (hi - lo) + 20.0
    probe = Grid(tuple(np.ceil((hi - lo + 2 * reach)[::-1] / 3.0).astype(int) + 1), (3.0, 3.0, 3.0),
                 tuple(lo - reach))
    inside = source.lung_fraction(anatomy.source_points(grid_points(probe), source.centre)) >= 0.5
    start, stop = bounding_box(inside.reshape(probe.shape))
    corners = probe.voxel_to_world(np.array([start, np.array(stop) - 1], dtype=np.float64))
    return corners.min(0), corners.max(0)


def _grid_over(lo: np.ndarray, hi: np.ndarray, spacing: Sequence[float], offset: np.ndarray) -> Grid:
    spacing = np.asarray(spacing, dtype=np.float64)
    origin = lo - offset
    size = np.floor((hi - origin) / spacing).astype(int) + 1
    return Grid(tuple(size[::-1]), tuple(spacing), tuple(origin))


def _image(source: SourceCT, anatomy: Anatomy, volume: torch.Tensor, points: np.ndarray,
           inside: np.ndarray, jac: Optional[np.ndarray]) -> np.ndarray:
    """Clean HU at patient points ``(N, 3)`` (the anatomy's density changes, mass preservation
    ``(HU + 1000) / J`` in the lungs when ``jac`` is given), float32 ``(N,)``."""
    out = np.empty(len(points), dtype=np.float32)
    for a in range(0, len(points), _CHUNK):
        b = min(len(points), a + _CHUNK)
        src = anatomy.source_points(points[a:b], source.centre)
        hu = anatomy.lung_hu(source.sample(volume, src), src, inside[a:b], source.box)
        if jac is not None:
            lung = inside[a:b]
            hu[lung] = (hu[lung] - _HU_AIR) / jac[a:b][lung].astype(np.float32) + _HU_AIR
        out[a:b] = hu
    return out


def _int16(hu: np.ndarray) -> np.ndarray:
    info = np.iinfo(np.int16)
    return np.clip(np.round(hu), info.min, info.max).astype(np.int16)


def realistic_pair(source: SourceCT, anatomy: Anatomy, pattern: MotionPattern, seed: Sequence[int],
                   acquisition: Acquisition = Acquisition(), landmarks: int = 300, name: str = "pair",
                   meta: Optional[dict] = None, noise: bool = True) -> PairData:
    """Acquire a fixed (inhale) and a moving (exhale) image of ``anatomy`` breathing ``pattern``.

    Args:
        source: the denoised source CT (:meth:`SourceCT.load`).
        anatomy: the patient (:meth:`~graphreg.datasets.anatomy.Anatomy.draw`).
        pattern: the motion (:meth:`~graphreg.datasets.anatomy.MotionPattern.draw`).
        seed: the pair's seed sequence (grids, noise, blur, landmarks); the same seed, source,
            anatomy, pattern and acquisition give the same pair.
        acquisition: grids, noise, blur (:class:`Acquisition`).
        landmarks: number of evaluation landmark pairs (vessels deep in the lungs).
        name, meta: the pair's name and extra :attr:`PairData.meta` entries.
        noise: add the noise (False gives the clean images of the same pair).

    Returns:
        :class:`~graphreg.datasets.pairs.PairData` with both images (int16 HU, own grids), both
        masks, exact landmark pairs (world mm), the ground truth sampled on the fixed grid, and
        ``meta`` (initial TRE, grids, noise, residuals).

    Raises:
        GraphregError: the anatomy's map or the motion cannot be made invertible.
    """
    seed = [int(s) for s in seed]
    rng = np.random.default_rng(seed + [0])
    lo, hi = _patient_box(source, anatomy)
    check_invertible(anatomy, (lo, hi), source.centre)
    margin = acquisition.margin_mm
    spacing = np.asarray(acquisition.spacing_mm, dtype=np.float64)
    fixed_grid = _grid_over(lo - margin, hi + margin, spacing, rng.uniform(0, 1, 3) * spacing)
    moving_spacing = np.asarray(acquisition.moving_spacing(), dtype=np.float64)
    trim = rng.uniform(*acquisition.fov_trim_mm, size=2)
    moving_grid = _grid_over(lo - margin + [0, 0, trim[0]], hi + margin - [0, 0, trim[1]], moving_spacing,
                             rng.uniform(0, 1, 3) * moving_spacing)
    noise_hu = rng.uniform(*acquisition.noise_hu, size=2)
    blur = float(rng.uniform(*acquisition.recon_blur_mm))

    fixed_points = grid_points(fixed_grid)
    lung_fraction = np.concatenate([
        source.lung_fraction(anatomy.source_points(fixed_points[a:a + _CHUNK], source.centre))
        for a in range(0, len(fixed_points), _CHUNK)])
    fixed_mask = Volume((lung_fraction >= 0.5).reshape(fixed_grid.shape).astype(np.uint8), fixed_grid)
    if not fixed_mask.array.any():
        raise GeometryError("anatomy: the patient's lungs are empty on the fixed grid")
    motion = sliding_breathing(pattern, fixed_mask, wall_fraction=acquisition.wall_fraction)

    fixed_inside = fixed_mask.array.reshape(-1) > 0
    fixed_clean = _image(source, anatomy, source.prefiltered(fixed_grid.spacing), fixed_points,
                         fixed_inside, None).reshape(fixed_grid.shape)
    moving_points = grid_points(moving_grid)
    pulled, moving_inside, jac, residual, gap = (np.concatenate(parts) for parts in zip(*[
        motion.pull(moving_points[a:a + _CHUNK]) for a in range(0, len(moving_points), _CHUNK)]))
    moving_clean = _image(source, anatomy, source.prefiltered(moving_grid.spacing, blur), pulled,
                          moving_inside, jac).reshape(moving_grid.shape)
    fixed_hu, moving_hu = fixed_clean, moving_clean
    if noise:
        fixed_hu = fixed_clean + ct_noise(fixed_grid.shape, fixed_grid.spacing_zyx, noise_hu[0],
                                          np.random.default_rng(seed + [1]))
        moving_hu = moving_clean + ct_noise(moving_grid.shape, moving_grid.spacing_zyx, noise_hu[1],
                                            np.random.default_rng(seed + [2]))

    fixed_landmarks = moving_landmarks = np.zeros((0, 3))
    initial_tre = None
    landmark_residual = 0.0
    if landmarks > 0:
        clean = Volume(fixed_clean, fixed_grid)
        fixed_landmarks = fixed_grid.voxel_to_world(
            vessel_landmarks(clean, fixed_mask, np.random.default_rng(seed + [3]), count=landmarks))
        moving_landmarks = fixed_landmarks + motion.displacement(fixed_landmarks)
        back, back_inside, _, _, back_gap = motion.pull(moving_landmarks)
        if not back_inside.all() or back_gap.any():
            raise GraphregError("landmarks: a landmark's exhale position pulls from outside the lungs")
        landmark_residual = float(np.linalg.norm(back - fixed_landmarks, axis=1).max())
        tre = summarize_errors(landmark_errors(fixed_landmarks, moving_landmarks))
        initial_tre = {k: tre[k] for k in ("mean_mm", "std_mm", "p50_mm", "p75_mm", "max_mm")}

    gt = np.concatenate([motion.displacement(fixed_points[a:a + _CHUNK])
                         for a in range(0, len(fixed_points), _CHUNK)])
    gt_field = DisplacementField.from_mm_array(gt.reshape(fixed_grid.shape + (3,)).astype(np.float32), fixed_grid)
    moving_mask = Volume(moving_inside.reshape(moving_grid.shape).astype(np.uint8), moving_grid)
    lung_jac = jac[moving_inside]
    info = dict(meta or {})
    info.update({
        "name": name, "set": "realistic", "seed": seed, "anatomy": anatomy.__dict__.copy(),
        "motion_pattern": pattern.__dict__.copy(), "initial_tre_mm": initial_tre,
        "n_landmarks": int(landmarks), "noise_hu": [float(n) for n in noise_hu] if noise else [0.0, 0.0],
        "moving_recon_blur_mm": blur, "fixed_spacing_mm": list(fixed_grid.spacing),
        "moving_spacing_mm": list(moving_grid.spacing), "fixed_origin_mm": list(fixed_grid.origin),
        "moving_origin_mm": list(moving_grid.origin), "fov_trim_mm": [float(t) for t in trim],
        "jacobian_lung_min": float(lung_jac.min()) if lung_jac.size else None,
        "jacobian_lung_mean": float(lung_jac.mean()) if lung_jac.size else None,
        "lung_volume_ratio": float(moving_inside.sum() * np.prod(moving_spacing)
                                   / max(1.0, fixed_inside.sum() * np.prod(spacing))),
        "inverse_residual_mm": {"max": float(residual.max()),
                                "lung_max": float(residual[moving_inside & ~gap].max(initial=0.0)),
                                "voxels_over_0.01mm": int((residual > 0.01).sum())},
        "sliding_gap_voxels": int(gap.sum()),
        "sliding_gap_fraction_of_lung": float(gap.sum() / max(1, int(moving_inside.sum()))),
        "landmark_residual_mm": landmark_residual,
        "sliding": {"kind": "discontinuity", "wall_fraction": acquisition.wall_fraction},
    })
    return PairData(name=name, fixed=Volume(_int16(fixed_hu), fixed_grid),
                    moving=Volume(_int16(moving_hu), moving_grid), fixed_mask=fixed_mask,
                    moving_mask=moving_mask, fixed_landmarks_mm=fixed_landmarks,
                    moving_landmarks_mm=moving_landmarks, meta=info, gt_field=gt_field)
