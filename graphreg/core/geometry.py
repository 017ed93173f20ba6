"""Physical geometry of a 3D voxel grid, and the only place where coordinates are converted.

Convention:
    - A volume is a numpy array ``(z, y, x)`` exactly as ``SimpleITK.GetArrayFromImage`` returns
      it, or a tensor ``(B, C, D, H, W)`` with ``D, H, W = z, y, x``.
    - ``Grid.spacing``, ``Grid.origin`` and ``Grid.direction`` are in SimpleITK's ``x, y, z`` order
      (mm, mm, row-major 3x3 cosines).
    - Voxel coordinates of points are ``(N, 3)`` in ``(z, y, x)`` order, 0-based, voxel centres at
      integers.
    - World coordinates are ``(N, 3)`` in mm, ``(x, y, z)`` order, ITK's LPS frame:
      ``world = origin + direction @ (spacing * index_xyz)``.
    - ``grid_sample`` coordinates are normalised to ``[-1, 1]`` with ``align_corners=True``,
      component order ``(x, y, z)``: ``n = 2 * index / (size - 1) - 1``.
    - Displacements ``u`` in voxels are ``(..., 3)`` (points) or ``(B, 3, D, H, W)`` (fields), in
      ``(z, y, x)`` order, and point fixed -> moving.

Every function accepts numpy arrays (computed in float64) or torch tensors (computed in the
tensor's dtype and device).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from graphreg.errors import GeometryError, ShapeError

#: ``grid_sample`` is always called with this; every conversion below assumes it.
ALIGN_CORNERS = True


def _as_matrix(like, matrix: np.ndarray):
    """``matrix`` (numpy float64) as the same kind of array as ``like``."""
    if isinstance(like, torch.Tensor):
        dtype = like.dtype if like.is_floating_point() else torch.float32
        return torch.as_tensor(matrix, dtype=dtype, device=like.device)
    return matrix


def _check_points(name: str, points) -> None:
    if points.ndim < 1 or points.shape[-1] != 3:
        raise ShapeError(f"{name}: expected shape (..., 3), got {tuple(points.shape)}")


@dataclass(frozen=True)
class Grid:
    """Size and physical placement of a 3D voxel grid.

    Attributes:
        shape: ``(D, H, W)`` = number of voxels along ``(z, y, x)``.
        spacing: ``(sx, sy, sz)`` voxel size in mm.
        origin: ``(ox, oy, oz)`` world position of voxel ``(0, 0, 0)`` in mm.
        direction: row-major 3x3 direction cosines (9 floats), columns = image axes x, y, z.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        spacing = tuple(float(s) for s in self.spacing)
        origin = tuple(float(o) for o in self.origin)
        direction = tuple(float(d) for d in np.asarray(self.direction, dtype=np.float64).ravel())
        if len(shape) != 3 or min(shape) < 1:
            raise GeometryError(f"shape: expected 3 positive sizes (D, H, W), got {self.shape}")
        if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise GeometryError(f"spacing: expected 3 positive finite mm values, got {self.spacing}")
        if len(origin) != 3 or not all(np.isfinite(origin)):
            raise GeometryError(f"origin: expected 3 finite mm values, got {self.origin}")
        if len(direction) != 9 or abs(np.linalg.det(np.reshape(direction, (3, 3)))) < 1e-6:
            raise GeometryError(
                f"direction: expected an invertible 3x3 matrix (9 values), got {self.direction}"
            )
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_sitk(cls, image) -> "Grid":
        """The grid of a 3D ``SimpleITK.Image``."""
        if image.GetDimension() != 3:
            raise GeometryError(f"image: expected a 3D image, got {image.GetDimension()}D")
        size = image.GetSize()  # x, y, z
        return cls(
            shape=(size[2], size[1], size[0]),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=image.GetDirection(),
        )

    def apply_to_sitk(self, image) -> None:
        """Set spacing, origin and direction of a ``SimpleITK.Image`` of this grid's size."""
        if tuple(image.GetSize()) != self.size_xyz:
            raise GeometryError(
                f"image: expected size (x, y, z) {self.size_xyz}, got {tuple(image.GetSize())}"
            )
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)

    # ------------------------------------------------------------------ properties
    @property
    def size_xyz(self) -> tuple[int, int, int]:
        """Number of voxels along ``(x, y, z)``, as SimpleITK reports it."""
        return (self.shape[2], self.shape[1], self.shape[0])

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Voxel size in mm along ``(z, y, x)`` (tensor axis order)."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        """``(3, 3)`` float64 direction cosines."""
        return np.reshape(self.direction, (3, 3))

    @property
    def voxel_to_world_matrix(self) -> np.ndarray:
        """``(4, 4)`` affine mapping homogeneous voxel ``(z, y, x, 1)`` to world ``(x, y, z, 1)``."""
        linear = self.direction_matrix @ np.diag(self.spacing)  # acts on index (x, y, z)
        zyx_to_xyz = np.eye(3)[::-1]
        affine = np.eye(4)
        affine[:3, :3] = linear @ zyx_to_xyz
        affine[:3, 3] = self.origin
        return affine

    @property
    def world_to_voxel_matrix(self) -> np.ndarray:
        """``(4, 4)`` inverse of :attr:`voxel_to_world_matrix`."""
        return np.linalg.inv(self.voxel_to_world_matrix)

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Physical size ``(x, y, z)`` in mm covered by voxel centres plus one voxel."""
        return tuple(n * s for n, s in zip(self.size_xyz, self.spacing))

    # ------------------------------------------------------------------ points
    def voxel_to_world(self, points_zyx):
        """Voxel ``(..., 3)`` (z, y, x) -> world mm ``(..., 3)`` (x, y, z)."""
        _check_points("points_zyx", points_zyx)
        affine = _as_matrix(points_zyx, self.voxel_to_world_matrix)
        return points_zyx @ affine[:3, :3].T + affine[:3, 3]

    def world_to_voxel(self, points_xyz):
        """World mm ``(..., 3)`` (x, y, z) -> continuous voxel ``(..., 3)`` (z, y, x)."""
        _check_points("points_xyz", points_xyz)
        inverse = _as_matrix(points_xyz, self.world_to_voxel_matrix)
        return points_xyz @ inverse[:3, :3].T + inverse[:3, 3]

    def voxel_to_normalized(self, points_zyx):
        """Voxel ``(..., 3)`` (z, y, x) -> ``grid_sample`` coordinates ``(..., 3)`` (x, y, z)."""
        _check_points("points_zyx", points_zyx)
        scale = _as_matrix(points_zyx, self._normalized_scale_zyx())
        normalized = points_zyx * scale - 1.0
        return normalized.flip(-1) if isinstance(normalized, torch.Tensor) else normalized[..., ::-1]

    def normalized_to_voxel(self, points_xyz_normalized):
        """``grid_sample`` coordinates ``(..., 3)`` (x, y, z) -> voxel ``(..., 3)`` (z, y, x)."""
        _check_points("points_xyz_normalized", points_xyz_normalized)
        p = points_xyz_normalized
        zyx = p.flip(-1) if isinstance(p, torch.Tensor) else p[..., ::-1]
        scale = _as_matrix(p, self._normalized_scale_zyx())
        return (zyx + 1.0) / scale

    def _normalized_scale_zyx(self) -> np.ndarray:
        """Per-axis factor ``2 / (size - 1)`` (z, y, x); a size-1 axis maps its only voxel to 0."""
        return np.array([2.0 / (n - 1) if n > 1 else 1.0 for n in self.shape])

    # ------------------------------------------------------------------ vectors
    def voxel_vectors_to_mm(self, vectors_zyx):
        """Displacement vectors in voxels ``(..., 3)`` (z, y, x) -> world mm ``(..., 3)`` (x, y, z)."""
        _check_points("vectors_zyx", vectors_zyx)
        linear = _as_matrix(vectors_zyx, self.voxel_to_world_matrix[:3, :3])
        return vectors_zyx @ linear.T

    def mm_vectors_to_voxel(self, vectors_xyz):
        """Displacement vectors in world mm ``(..., 3)`` (x, y, z) -> voxels ``(..., 3)`` (z, y, x)."""
        _check_points("vectors_xyz", vectors_xyz)
        linear = _as_matrix(vectors_xyz, self.world_to_voxel_matrix[:3, :3])
        return vectors_xyz @ linear.T

    def voxel_map_to(self, other: "Grid") -> tuple[np.ndarray, np.ndarray]:
        """The affine map from voxels of this grid to voxels of ``other`` (through world mm).

        Shapes:
            returns: ``offset (3,)`` and ``steps (3, 3)``, float64, with
            ``v_other = offset + v @ steps`` for voxels ``v`` ``(z, y, x)``; row ``a`` of ``steps``
            is the step in ``other``'s voxels of one voxel of this grid along axis ``a``.
        """
        basis = np.concatenate([np.zeros((1, 3)), np.eye(3)])
        mapped = other.world_to_voxel(self.voxel_to_world(basis))
        return mapped[0], mapped[1:] - mapped[0]

    def normalized_axis_map(self, other: "Grid") -> Optional[tuple[list[np.ndarray], np.ndarray]]:
        """``grid_sample`` coordinates in ``other`` of this grid's voxels moved by a displacement,
        axis by axis, when the two grids' axes are parallel (:meth:`voxel_map_to` is diagonal up to
        1e-9 voxels per voxel).

        Returns:
            None when the axes are not parallel; else ``bases`` (float64 arrays ``(D,)``, ``(H,)``,
            ``(W,)`` for the axes z, y, x) and ``gains`` ``(3,)`` (z, y, x): voxel ``v`` displaced by
            ``u`` voxels of this grid lands at normalised coordinate ``bases[a][v_a] + gains[a] * u_a``
            along axis ``a`` of ``other`` (``grid_sample``'s component ``2 - a``).
        """
        offset, steps = self.voxel_map_to(other)
        diagonal = np.diag(steps)
        if not np.allclose(steps, np.diag(diagonal), rtol=0.0, atol=1e-9):  # rounding of rotated directions
            return None
        scale = other._normalized_scale_zyx()
        bases = [(offset[axis] + np.arange(n) * diagonal[axis]) * scale[axis] - 1.0 for axis, n in enumerate(self.shape)]
        return bases, diagonal * scale

    def field_voxel_to_normalized(self, field: torch.Tensor) -> torch.Tensor:
        """Displacement field ``(B, 3, D, H, W)`` voxels (z, y, x) -> normalised ``(B, D, H, W, 3)`` (x, y, z).

        The result is added to an identity ``grid_sample`` grid; see :mod:`graphreg.core.spatial`.
        """
        if field.ndim != 5 or field.shape[1] != 3:
            raise ShapeError(f"field: expected shape (B, 3, D, H, W), got {tuple(field.shape)}")
        scale = _as_matrix(field, self._normalized_scale_zyx())
        return (field.movedim(1, -1) * scale).flip(-1)

    # ------------------------------------------------------------------ derived grids
    def with_spacing(self, spacing: Sequence[float]) -> "Grid":
        """A grid covering the same physical extent with voxels of ``spacing`` (x, y, z) mm.

        The first voxel centre stays at ``origin``; the size is ``round(extent / spacing)``.
        """
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise GeometryError(f"spacing: expected 3 positive mm values, got {spacing}")
        size_xyz = [max(1, int(round(n * s / t))) for n, s, t in zip(self.size_xyz, self.spacing, spacing)]
        return Grid((size_xyz[2], size_xyz[1], size_xyz[0]), spacing, self.origin, self.direction)

    def cropped(self, start_zyx: Sequence[int], stop_zyx: Sequence[int]) -> "Grid":
        """The sub-grid of voxels ``start <= index < stop`` (z, y, x); the origin moves with it."""
        start = [int(s) for s in start_zyx]
        stop = [int(s) for s in stop_zyx]
        if len(start) != 3 or len(stop) != 3:
            raise GeometryError(f"crop: expected 3 start and 3 stop indices, got {start_zyx}, {stop_zyx}")
        for axis, (a, b, n) in enumerate(zip(start, stop, self.shape)):
            if not 0 <= a < b <= n:
                raise GeometryError(
                    f"crop: axis {'zyx'[axis]} range [{a}, {b}) is empty or outside [0, {n})"
                )
        origin = self.voxel_to_world(np.asarray(start, dtype=np.float64))
        shape = tuple(b - a for a, b in zip(start, stop))
        return Grid(shape, self.spacing, tuple(origin), self.direction)

    def extended_to_cover(self, other: "Grid") -> "Grid":
        """This grid's lattice (spacing, direction, voxel positions) grown by whole voxels until its
        region (voxel centres and half a voxel beyond, where ITK interpolates with the border voxels)
        holds ``other``'s region.

        A field sampled at the new voxels from this grid's field with border extension
        (:func:`graphreg.result.registration.resample_field`) interpolates to exactly the same values.
        """
        corners = np.array([[n - 0.5 if (corner >> axis) & 1 else -0.5 for axis, n in enumerate(other.shape)]
                            for corner in range(8)], dtype=np.float64)
        inside = self.world_to_voxel(other.voxel_to_world(corners))
        start = np.minimum(0, np.floor(inside.min(axis=0) + 0.5 + 1e-6)).astype(int)
        stop = np.maximum(np.array(self.shape), np.ceil(inside.max(axis=0) - 0.5 - 1e-6).astype(int) + 1)
        origin = self.voxel_to_world(start.astype(np.float64))
        return Grid(tuple(int(n) for n in stop - start), self.spacing, tuple(origin), self.direction)

    def same_as(self, other: "Grid", tol_mm: float = 1e-4) -> bool:
        """True when both grids have the same shape and place every voxel within ``tol_mm``."""
        if self.shape != other.shape:
            return False
        corners = np.array([[0, 0, 0], [n - 1 for n in self.shape]], dtype=np.float64)
        return bool(np.abs(self.voxel_to_world(corners) - other.voxel_to_world(corners)).max() <= tol_mm
                    and np.allclose(self.direction, other.direction, atol=1e-5))

    def describe(self) -> str:
        """One line: size, spacing, origin, direction."""
        spacing = ", ".join(f"{s:.4g}" for s in self.spacing)
        origin = ", ".join(f"{o:.4g}" for o in self.origin)
        identity = np.allclose(self.direction_matrix, np.eye(3))
        direction = "identity" if identity else np.array2string(self.direction_matrix, precision=4)
        return (f"size (x, y, z) {self.size_xyz}, spacing {spacing} mm, origin {origin} mm, "
                f"direction {direction}")


def mapped_voxels(offset: np.ndarray, steps: np.ndarray, shape: tuple[int, int, int], z0: int, z1: int,
                  dtype=torch.float32, device=None) -> torch.Tensor:
    """``offset + v @ steps`` for every voxel ``v`` of slices ``z0:z1`` of a grid of ``shape``.

    The map is :meth:`Grid.voxel_map_to`'s; it is applied per axis by broadcasting (in float64,
    then cast), so no whole-grid coordinate array is made.

    Shapes:
        offset: ``(3,)``; steps: ``(3, 3)``; shape: ``(D, H, W)``; returns
        ``((z1 - z0) * H * W, 3)`` voxel ``(z, y, x)`` of the mapped-to grid, C order.
    """
    steps = torch.as_tensor(steps, dtype=torch.float64)
    along = [torch.arange(start, stop, dtype=torch.float64)[:, None] * steps[axis]
             for axis, (start, stop) in enumerate(((z0, z1), (0, shape[1]), (0, shape[2])))]
    yx = (along[1][:, None] + along[2][None] + torch.as_tensor(offset, dtype=torch.float64)).to(device, dtype)
    return (along[0].to(device, dtype)[:, None, None] + yx[None]).reshape(-1, 3)
