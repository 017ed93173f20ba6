"""A dense displacement field together with the grid it lives on.

Convention:
    ``DisplacementField.displacement`` is a tensor ``(1, 3, D, H, W)`` in voxels of
    ``DisplacementField.grid`` (the fixed image's grid), components ``(z, y, x)``, pointing
    fixed -> moving: a fixed point ``p`` corresponds to ``p + u(p)`` in the moving image and the
    warped moving image is ``M(x + u(x))``.

    Outside exchange formats are handled here and in :mod:`graphreg.io.fields`:

    - ITK / 3D Slicer / ANTs: a vector image on the fixed grid holding the displacement in world
      mm along the LPS axes ``(x, y, z)`` (:meth:`DisplacementField.to_mm_array`,
      :meth:`DisplacementField.to_sitk`).
    - Learn2Reg: ``(X, Y, Z, 3)`` in the nibabel (= ITK index) array order, voxel units,
      components in index order ``(i, j, k) = (x, y, z)``
      (:meth:`DisplacementField.to_l2r_array`).

    Every conversion between voxels and millimetres goes through :class:`graphreg.core.geometry.Grid`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from graphreg.errors import GeometryError, GraphregError, ShapeError, check_finite
from graphreg.core.geometry import Grid, mapped_voxels
from graphreg.core.spatial import grid_sample_parallel, identity_grid, sample_points
from graphreg.core.volume import Volume

_MODES = {"linear": "bilinear", "nearest": "nearest"}
#: interpolations :meth:`DisplacementField.warp` offers: ``grid_sample`` modes and a cubic B-spline
INTERPOLATIONS = (*_MODES, "bspline")
#: voxels per slab of :meth:`DisplacementField.warp` and :meth:`DisplacementField.from_mm_array` (bounds
#: their temporaries)
_WARP_CHUNK_VOXELS = 1_000_000


def _check_points(name: str, points) -> None:
    if points.ndim != 2 or points.shape[-1] != 3:
        raise ShapeError(f"{name}: expected shape (N, 3), got {tuple(points.shape)}")


@dataclass(frozen=True, eq=False)
class DisplacementField:
    """A fixed -> moving displacement field in voxels on the fixed image's grid.

    Attributes:
        displacement: ``(1, 3, D, H, W)`` floating tensor, voxels of ``grid``, components
            ``(z, y, x)``.
        grid: the fixed image's :class:`~graphreg.core.geometry.Grid`; ``grid.shape == (D, H, W)``.

    Raises:
        ShapeError: ``displacement`` is not a floating ``(1, 3, D, H, W)`` tensor.
        GeometryError: ``(D, H, W)`` differs from ``grid.shape``.
        GraphregError: ``displacement`` holds NaN or Inf.
    """

    displacement: torch.Tensor
    grid: Grid

    def __post_init__(self) -> None:
        disp = self.displacement
        if not isinstance(disp, torch.Tensor):
            raise ShapeError(
                f"displacement: expected a torch.Tensor (1, 3, D, H, W), got {type(disp).__name__}"
            )
        if disp.ndim != 5 or disp.shape[0] != 1 or disp.shape[1] != 3:
            raise ShapeError(f"displacement: expected shape (1, 3, D, H, W), got {tuple(disp.shape)}")
        if not disp.is_floating_point():
            raise ShapeError(f"displacement: expected a floating dtype, got {disp.dtype}")
        if not isinstance(self.grid, Grid):
            raise GeometryError(f"grid: expected a graphreg Grid, got {type(self.grid).__name__}")
        if tuple(disp.shape[2:]) != self.grid.shape:
            raise GeometryError(
                f"displacement: spatial shape {tuple(disp.shape[2:])} does not match grid shape "
                f"{self.grid.shape}"
            )
        check_finite("displacement", disp.detach())

    # ------------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple[int, int, int]:
        """``(D, H, W)`` of the grid."""
        return self.grid.shape

    @property
    def device(self) -> torch.device:
        return self.displacement.device

    @property
    def dtype(self) -> torch.dtype:
        return self.displacement.dtype

    def to(self, device=None, dtype: torch.dtype | None = None) -> "DisplacementField":
        """The same field with its tensor moved to ``device`` and/or cast to ``dtype``."""
        return DisplacementField(self.displacement.to(device=device, dtype=dtype), self.grid)

    # ------------------------------------------------------------------ construction
    @classmethod
    def identity(cls, grid: Grid, dtype: torch.dtype = torch.float32, device=None) -> "DisplacementField":
        """The zero displacement on ``grid``."""
        return cls(torch.zeros((1, 3, *grid.shape), dtype=dtype, device=device), grid)

    @classmethod
    def from_affine(cls, matrix, grid: Grid, dtype: torch.dtype = torch.float32,
                    device=None) -> "DisplacementField":
        """The field of the world map ``x -> A x`` sampled on ``grid``.

        Convention:
            ``matrix`` is a ``(4, 4)`` homogeneous affine acting on world points ``(x, y, z, 1)``
            in mm (LPS); it maps a fixed point to its moving position (the same direction as the
            field). Computed in float64, then cast to ``dtype``.
        """
        affine = np.asarray(matrix, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ShapeError(f"matrix: expected shape (4, 4), got {affine.shape}")
        if not np.isfinite(affine).all():
            raise GraphregError("matrix: expected finite values, found NaN/Inf")
        voxels = identity_grid(grid.shape, dtype=torch.float64)[0].movedim(0, -1).numpy()
        world = grid.voxel_to_world(voxels)
        moved = world @ affine[:3, :3].T + affine[:3, 3]
        moving_voxels = grid.world_to_voxel(moved)
        disp = torch.from_numpy(np.ascontiguousarray(moving_voxels - voxels)).movedim(-1, 0)[None]
        return cls(disp.to(device=device, dtype=dtype), grid)

    @classmethod
    def from_mm_array(cls, array, grid: Grid, dtype: torch.dtype = torch.float32,
                      device=None) -> "DisplacementField":
        """From an ITK-convention array: displacement in world mm.

        Shapes:
            array: ``(z, y, x, 3)`` = ``(D, H, W, 3)``, vectors in world mm ``(x, y, z)`` (LPS),
            as ``sitk.GetArrayFromImage`` returns a displacement-field vector image.
        """
        # a float32 array for a float32 field stays float32 (half the memory); the conversion is float64
        single = np.asarray(array).dtype == np.float32 and dtype == torch.float32
        array = np.require(np.asarray(array, dtype=np.float32 if single else np.float64), requirements=("C", "W"))
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ShapeError(f"array: expected shape (z, y, x, 3), got {array.shape}")
        if tuple(array.shape[:3]) != grid.shape:
            raise GeometryError(
                f"array: spatial shape {array.shape[:3]} does not match grid shape {grid.shape}"
            )
        check_finite("array", array)
        disp = torch.empty((1, 3) + grid.shape, dtype=torch.float32 if single else torch.float64)
        depth, height, width = grid.shape
        slab = max(1, _WARP_CHUNK_VOXELS // (height * width))
        for z0 in range(0, depth, slab):  # slab by slab: no whole-grid temporaries
            z1 = min(depth, z0 + slab)
            part = torch.from_numpy(array[z0:z1]).to(torch.float64)
            disp[0, :, z0:z1] = grid.mm_vectors_to_voxel(part).movedim(-1, 0)
        return cls(disp.to(device=device, dtype=dtype), grid)

    @classmethod
    def from_sitk(cls, image: sitk.Image, dtype: torch.dtype = torch.float32,
                  device=None) -> "DisplacementField":
        """From a 3D SimpleITK vector image of 3 components holding world-mm displacements."""
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 3:
            raise ShapeError(
                f"image: expected a 3D vector image of 3 components, got {image.GetDimension()}D "
                f"with {image.GetNumberOfComponentsPerPixel()} components"
            )
        array = sitk.GetArrayFromImage(image)  # (z, y, x, 3)
        return cls.from_mm_array(array, Grid.from_sitk(image), dtype=dtype, device=device)

    @classmethod
    def from_l2r_array(cls, array, grid: Grid, dtype: torch.dtype = torch.float32,
                       device=None) -> "DisplacementField":
        """From a Learn2Reg displacement array.

        Shapes:
            array: ``(X, Y, Z, 3)`` = nibabel array order of the fixed image (``grid.size_xyz``),
            voxel units, components in index order ``(x, y, z)``, fixed -> moving.
        """
        array = np.asarray(array)
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ShapeError(f"array: expected shape (X, Y, Z, 3), got {array.shape}")
        if tuple(array.shape[:3]) != grid.size_xyz:
            raise GeometryError(
                f"array: spatial shape (X, Y, Z) {array.shape[:3]} does not match the grid's "
                f"size (x, y, z) {grid.size_xyz}"
            )
        check_finite("array", array)
        disp = torch.from_numpy(np.ascontiguousarray(array)).permute(3, 2, 1, 0).flip(0)[None]
        return cls(disp.to(device=device, dtype=dtype).contiguous(), grid)

    # ------------------------------------------------------------------ export
    def to_mm_array(self, dtype=np.float64) -> np.ndarray:
        """Displacement in world mm, ``(z, y, x, 3)`` of ``dtype``, vectors ``(x, y, z)`` LPS (ITK).

        Converted in float64 slab by slab, so a float32 result needs no whole-grid float64 copy.
        """
        depth, height, width = self.shape
        out = np.empty((depth, height, width, 3), dtype=dtype)
        slab = max(1, _WARP_CHUNK_VOXELS // (height * width))
        for z0 in range(0, depth, slab):
            z1 = min(depth, z0 + slab)
            voxels = self.displacement.detach()[0, :, z0:z1].movedim(0, -1).cpu().to(torch.float64)
            out[z0:z1] = self.grid.voxel_vectors_to_mm(voxels).numpy()
        return out

    def mm_component_slabs(self, dtype=np.float32) -> Iterator[np.ndarray]:
        """The displacement in world mm, one component at a time, in slabs: what a NIfTI vector
        file holds (:mod:`graphreg.io.nifti_stream`), without a whole-grid ``(z, y, x, 3)`` array.

        Shapes:
            yields ``(z1 - z0, H, W)`` arrays of ``dtype``: component ``x`` (LPS) for every slab
            from the first slice to the last, then ``y``, then ``z``; the values of
            :meth:`to_mm_array` up to rounding (computed in ``dtype``; an axis-aligned grid needs
            one product per value).
        """
        depth, height, width = self.shape
        slab = max(1, _WARP_CHUNK_VOXELS // (height * width))
        torch_dtype = torch.from_numpy(np.zeros(0, dtype)).dtype
        # row k: the world mm vector (x, y, z) of one voxel along tensor axis k (z, y, x)
        columns = self.grid.voxel_vectors_to_mm(np.eye(3))
        for component in range(3):
            terms = [(axis, float(columns[axis, component])) for axis in range(3) if columns[axis, component] != 0.0]
            for z0 in range(0, depth, slab):
                voxels = self.displacement.detach()[0, :, z0:min(depth, z0 + slab)].cpu()
                (axis, weight), *rest = terms  # a grid's unit vectors are never zero: one term at least
                out = torch.mul(voxels[axis].to(torch_dtype), weight)
                for axis, weight in rest:
                    out.add_(voxels[axis].to(torch_dtype), alpha=weight)
                yield out.numpy()

    def to_sitk(self) -> sitk.Image:
        """A ``sitkVectorFloat64`` image on the grid holding the displacement in world mm."""
        image = sitk.GetImageFromArray(self.to_mm_array(), isVector=True)
        self.grid.apply_to_sitk(image)
        return image

    def to_transform(self) -> sitk.DisplacementFieldTransform:
        """A ``sitk.DisplacementFieldTransform`` mapping fixed world points to moving ones.

        ITK uses zero displacement outside the grid, unlike :meth:`transform_points`.
        """
        return sitk.DisplacementFieldTransform(self.to_sitk())

    def to_l2r_array(self, dtype=np.float64) -> np.ndarray:
        """Learn2Reg layout: ``(X, Y, Z, 3)`` voxels of ``dtype``, components ``(x, y, z)``."""
        disp = self.displacement.detach()[0].cpu()
        return np.ascontiguousarray(disp.flip(0).permute(3, 2, 1, 0).numpy(), dtype=dtype)

    # ------------------------------------------------------------------ points
    def _displacement_at(self, voxels_zyx: torch.Tensor) -> torch.Tensor:
        """``u`` (voxels, ``(N, 3)`` z, y, x) at fixed voxel positions, trilinear, border-clamped."""
        return sample_points(self.displacement, voxels_zyx.to(self.device, self.dtype))[0].T

    def transform_voxels(self, points_zyx, moving_grid: Grid | None = None):
        """Map fixed voxel positions to ``p + u(p)``.

        Shapes:
            points_zyx: ``(N, 3)`` continuous voxel ``(z, y, x)`` of :attr:`grid`.
            returns: ``(N, 3)`` voxel ``(z, y, x)``: of the fixed grid (the frame the
            displacement is expressed in, as in Learn2Reg TRE) when ``moving_grid`` is None,
            else of ``moving_grid`` (through world coordinates).

        Convention:
            ``u`` is sampled trilinearly; points outside the grid take the displacement of the
            nearest border voxel (``padding_mode="border"``). A numpy input gives a float64
            numpy output; a tensor input gives a tensor in the field's dtype and device
            (differentiable w.r.t. the displacement and the points).
        """
        _check_points("points_zyx", points_zyx)
        if isinstance(points_zyx, torch.Tensor):
            points = points_zyx.to(self.device, self.dtype)
            mapped = points + self._displacement_at(points)
            if moving_grid is not None:
                mapped = moving_grid.world_to_voxel(self.grid.voxel_to_world(mapped))
            return mapped
        points = np.asarray(points_zyx, dtype=np.float64)
        u = self._displacement_at(torch.from_numpy(points)).detach().cpu().double().numpy()
        mapped = points + u
        if moving_grid is not None:
            mapped = moving_grid.world_to_voxel(self.grid.voxel_to_world(mapped))
        return mapped

    def transform_points(self, points_mm):
        """Map fixed world points to their moving world positions ``p + u(p)``.

        Shapes:
            points_mm: ``(N, 3)`` world mm ``(x, y, z)`` (LPS).
            returns: ``(N, 3)`` world mm ``(x, y, z)`` in the moving image.

        Convention:
            ``u`` is sampled trilinearly on the fixed grid; points outside the grid take the
            displacement of the nearest border voxel (``sitk.DisplacementFieldTransform`` uses
            zero there instead). A numpy input gives a float64 numpy output (point arithmetic in
            float64); a tensor input gives a tensor in the field's dtype and device.
        """
        _check_points("points_mm", points_mm)
        if isinstance(points_mm, torch.Tensor):
            points = points_mm.to(self.device, self.dtype)
            u_voxel = self._displacement_at(self.grid.world_to_voxel(points))
            return points + self.grid.voxel_vectors_to_mm(u_voxel)
        points = np.asarray(points_mm, dtype=np.float64)
        voxels = self.grid.world_to_voxel(points)
        u_voxel = self._displacement_at(torch.from_numpy(voxels)).detach().cpu().double().numpy()
        return points + self.grid.voxel_vectors_to_mm(u_voxel)

    # ------------------------------------------------------------------ images
    def warp(self, moving: Volume, interpolation: str = "linear", default: float = 0.0) -> Volume:
        """Resample ``moving`` onto the fixed grid: ``out(x) = M(x + u(x))``.

        ``moving`` may have any grid: every fixed voxel centre ``x`` goes to the world point
        ``world(x + u(x))``, then to the continuous voxel index of ``moving.grid``, where the
        image is sampled (``torch.nn.functional.grid_sample`` via :func:`graphreg.core.spatial.sample_points`).

        Convention:
            Like ITK's ``ResampleImageFilter``: a sample counts as inside when its continuous
            index lies in ``[-0.5, n - 0.5)`` on every axis (values in the outer half voxel are
            clamped to the border voxel); elsewhere the output is ``default``. ``"linear"``
            and ``"bspline"`` return float32 (float64 when the field or the image is float64);
            ``"nearest"`` keeps the moving image's dtype (label maps: no new values but ``default``).

        Args:
            moving: the moving image, any geometry.
            interpolation: ``"linear"``, ``"nearest"`` or ``"bspline"``.
            default: output value outside the moving image.

        Returns:
            A :class:`~graphreg.core.volume.Volume` on :attr:`grid`.
        """
        if interpolation not in INTERPOLATIONS:
            raise GraphregError(
                f"interpolation: expected one of {list(INTERPOLATIONS)}, got {interpolation!r}"
            )
        if not isinstance(moving, Volume):
            raise GraphregError(f"moving: expected a graphreg Volume, got {type(moving).__name__}")
        wide = self.dtype == torch.float64 or moving.array.dtype == np.float64
        dtype = torch.float64 if wide else torch.float32
        bspline = interpolation == "bspline"
        axis_map = None if bspline else self.grid.normalized_axis_map(moving.grid)
        if axis_map is not None:  # parallel axes: grid_sample coordinates straight from u, axis by axis
            array = self._warp_parallel(moving, axis_map, _MODES[interpolation], dtype, default)
        else:
            array = self._warp_points(moving, interpolation, dtype, default)
        if interpolation == "nearest":
            array = array.astype(moving.array.dtype)
        return Volume(array, self.grid)

    def _warp_points(self, moving: Volume, interpolation: str, dtype: torch.dtype, default: float) -> np.ndarray:
        """:meth:`warp` for any pair of grids and every interpolation: the moving voxel index of every
        fixed voxel ``x``, ``offset + (x + u(x)) @ steps``, slab by slab. Returns ``(D, H, W)`` of ``dtype``."""
        depth, height, width = self.shape
        slab = max(1, _WARP_CHUNK_VOXELS // (height * width))
        bspline = interpolation == "bspline"
        offset, steps = self.grid.voxel_map_to(moving.grid)
        step_matrix = torch.as_tensor(steps, dtype=dtype, device=self.device)
        out = torch.empty(depth * height * width, dtype=dtype, device=self.device)
        with torch.no_grad():
            # cubic B-spline coefficients of the whole image once (ITK's mirror boundary), sampled per slab
            coefficients = ndimage.spline_filter(moving.array.astype(np.float64), order=3, mode="mirror") \
                if bspline else None
            image = None if bspline else moving.to_tensor(device=self.device, dtype=dtype)
            size = torch.tensor(moving.grid.shape, dtype=dtype, device=self.device)
            for z0 in range(0, depth, slab):
                z1 = min(depth, z0 + slab)
                u = self.displacement[0, :, z0:z1].to(dtype).reshape(3, -1).T
                points = mapped_voxels(offset, steps, self.shape, z0, z1, dtype, self.device)
                points += u @ step_matrix
                if bspline:
                    values = torch.from_numpy(ndimage.map_coordinates(
                        coefficients, points.cpu().double().numpy().T, order=3, mode="mirror", prefilter=False))
                    values = values.to(self.device, dtype)
                else:
                    values = sample_points(image, points, mode=_MODES[interpolation], padding_mode="border")[0, 0]
                outside = (points < -0.5).logical_or_(points >= size - 0.5)
                outside = outside[:, 0].logical_or(outside[:, 1]).logical_or_(outside[:, 2])
                out[z0 * height * width:z1 * height * width] = values.masked_fill_(outside, float(default))
        return out.reshape(self.shape).cpu().numpy()

    def _warp_parallel(self, moving: Volume, axis_map: tuple, mode: str, dtype: torch.dtype,
                       default: float) -> np.ndarray:
        """:meth:`warp`'s ``"linear"`` / ``"nearest"`` sampling when the moving grid's axes are parallel
        to :attr:`grid`'s (:meth:`graphreg.core.geometry.Grid.normalized_axis_map`): slab by slab, each
        ``grid_sample`` coordinate is one multiply-add of a displacement component, with no voxel
        coordinate arrays. Returns the ``(D, H, W)`` array of ``dtype``."""
        depth, height, width = self.shape
        slab = max(1, _WARP_CHUNK_VOXELS // (height * width))
        bases = [torch.as_tensor(base, dtype=dtype, device=self.device) for base in axis_map[0]]
        gains = [float(gain) for gain in axis_map[1]]
        # inside: continuous moving index in [-0.5, n - 0.5) on every axis, as normalised (x, y, z) bounds
        bounds = moving.grid.voxel_to_normalized(np.array([[-0.5] * 3, np.asarray(moving.grid.shape) - 0.5]))
        low, high = bounds[0][::-1].tolist(), bounds[1][::-1].tolist()  # (z, y, x)
        # a sample can leave the moving image only from voxels within the largest displacement of its
        # border: per axis, the outside test covers the index ranges before ``first`` and from ``stop``
        edges = []
        for axis, base in enumerate(axis_map[0]):
            smallest, largest = (float(value) for value in torch.aminmax(self.displacement[0, axis]))
            reach = abs(gains[axis]) * max(-smallest, largest) + 1e-5  # + float32 rounding, generously
            safe = np.flatnonzero((base - reach >= low[axis]) & (base + reach < high[axis]))  # an interval
            first, stop = (int(safe[0]), int(safe[-1]) + 1) if len(safe) else (len(base), len(base))
            edges.append(((0, first), (stop, len(base))))
        out = torch.empty(self.shape, dtype=dtype, device=self.device)
        with torch.no_grad():
            image = moving.to_tensor(device=self.device, dtype=dtype)
            for z0 in range(0, depth, slab):
                z1 = min(depth, z0 + slab)
                u = self.displacement[0, :, z0:z1].to(dtype)
                coords = torch.empty((1, z1 - z0, height, width, 3), dtype=dtype, device=self.device)
                along = (bases[0][z0:z1, None, None], bases[1][:, None], bases[2])
                for axis in range(3):  # grid_sample's last dimension is (x, y, z)
                    torch.add(along[axis], u[axis], alpha=gains[axis], out=coords[0, ..., 2 - axis])
                values = grid_sample_parallel(image, coords, mode=mode, padding_mode="border")[0, 0]
                outside = torch.zeros((z1 - z0, height, width), dtype=torch.bool, device=self.device)
                for axis in range(3):
                    for start, stop in edges[axis]:
                        if axis == 0:  # the slab's part of the range
                            start, stop = max(start, z0) - z0, min(stop, z1) - z0
                        if stop > start:
                            part = coords[0, ..., 2 - axis].narrow(axis, start, stop - start)
                            outside.narrow(axis, start, stop - start).logical_or_(
                                part.lt(low[axis]).logical_or_(part.ge(high[axis])))
                out[z0:z1] = values.masked_fill_(outside, float(default))
        return out.cpu().numpy()

    def jacobian_determinant(self) -> torch.Tensor:
        """Jacobian determinant of ``x -> x + u(x)``, ``(D, H, W)``.

        See :func:`graphreg.ops.metrics.jacobian_determinant`.
        """
        from graphreg.ops.metrics import jacobian_determinant

        return jacobian_determinant(self.displacement, self.grid.spacing_zyx)[0]

    def __repr__(self) -> str:
        return (f"DisplacementField(shape={self.shape}, dtype={self.dtype}, device={self.device}, "
                f"grid=[{self.grid.describe()}])")
