"""A 3D image together with its physical geometry.

Convention:
    ``Volume.array`` is a numpy array ``(z, y, x)`` as ``SimpleITK.GetArrayFromImage`` returns it;
    ``Volume.grid`` carries shape, spacing, origin and direction (see :mod:`graphreg.core.geometry`).
    Resampling goes through SimpleITK, so physical placement is handled by ITK itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage, special

from graphreg.errors import GeometryError, ShapeError, check_finite
from graphreg.core.geometry import Grid

_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}


def _discrete_gaussian(variance: float, half_width: int) -> np.ndarray:
    """Lindeberg's discrete Gaussian ``exp(-t) I_n(t)``, ``n = -half_width .. half_width``, ``t`` the
    variance (voxels²), normalised to sum 1: its variance is ``t`` even below a voxel, where a
    sampled Gaussian's falls short."""
    kernel = special.ive(np.arange(-half_width, half_width + 1), variance)
    return kernel / kernel.sum()


@dataclass(frozen=True)
class Volume:
    """A 3D scalar image: ``array`` ``(z, y, x)`` and its ``grid``."""

    array: np.ndarray
    grid: Grid

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise ShapeError(f"array: expected a 3D array (z, y, x), got shape {array.shape}")
        if tuple(array.shape) != self.grid.shape:
            raise GeometryError(
                f"array: shape {array.shape} does not match grid shape {self.grid.shape}"
            )
        object.__setattr__(self, "array", array)

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        """Wrap a 3D scalar ``SimpleITK.Image`` (array copied)."""
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ShapeError(
                f"image: expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components"
            )
        return cls(sitk.GetArrayFromImage(image), Grid.from_sitk(image))

    def to_sitk(self) -> sitk.Image:
        """A ``SimpleITK.Image`` with this array and geometry."""
        image = sitk.GetImageFromArray(self.array)
        self.grid.apply_to_sitk(image)
        return image

    def to_tensor(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """The array as a ``(1, 1, D, H, W)`` tensor."""
        return torch.as_tensor(np.ascontiguousarray(self.array), dtype=dtype, device=device)[None, None]

    def resampled(self, grid: Grid, interpolation: str = "linear", default: float = 0.0,
                  extrapolate: bool = False) -> "Volume":
        """This image sampled on ``grid`` (any placement), by SimpleITK.

        Args:
            grid: target geometry.
            interpolation: ``"linear"``, ``"nearest"`` (labels) or ``"bspline"``.
            default: value outside this image.
            extrapolate: outside this image, the value of its nearest voxel instead of ``default``.
        """
        if interpolation not in _INTERPOLATORS:
            raise GeometryError(
                f"interpolation: expected one of {sorted(_INTERPOLATORS)}, got {interpolation!r}"
            )
        reference = sitk.Image(list(grid.size_xyz), sitk.sitkUInt8)
        grid.apply_to_sitk(reference)
        source = self.to_sitk()
        if interpolation != "nearest" and source.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
            source = sitk.Cast(source, sitk.sitkFloat32)
        out = sitk.Resample(source, reference, sitk.Transform(), _INTERPOLATORS[interpolation],
                            float(default), source.GetPixelID(), bool(extrapolate))
        return Volume(sitk.GetArrayFromImage(out), grid)

    def antialiased(self, spacing: Sequence[float], region: Grid | None = None) -> "Volume":
        """This image low-pass filtered for linear resampling to voxels of ``spacing`` (x, y, z) mm.

        Along every axis whose spacing grows from ``s`` to ``t``, a Gaussian of variance
        ``(t**2 - s**2) / 12`` mm² (the box variance of the new voxel size less that of the old)
        removes the detail the new grid cannot hold, which linear interpolation alone would
        alias into noise. Axes whose spacing stays or shrinks are left alone; with none growing
        the image itself is returned. Float32 result; the kernel is the discrete Gaussian, whose
        variance is exact even below a voxel (a sampled Gaussian's is not), truncated at 4 sigma;
        the border value continues outside the image.

        Args:
            region: when given, only the part of this image that resampling onto ``region``
                reads is filtered and returned (a crop, with a margin of the kernel's reach):
                the same values there, a fraction of the work.
        """
        target = np.asarray(spacing, dtype=np.float64)
        if target.shape != (3,) or not np.all(target > 0):
            raise GeometryError(f"spacing: expected three positive numbers (x, y, z) mm, got {list(spacing)}")
        own = np.asarray(self.grid.spacing, dtype=np.float64)
        sigma_voxels = np.sqrt(np.maximum(target ** 2 - own ** 2, 0.0) / 12.0) / own  # x, y, z
        if not np.any(sigma_voxels > 0):
            return self
        reach = np.ceil(4.0 * sigma_voxels[::-1]).astype(int) + 1  # z, y, x kernel half-widths (voxels)
        source = self if region is None else self._covering(region, reach + 1)
        smoothed = source.array.astype(np.float32)
        for axis, (sigma, half) in enumerate(zip(sigma_voxels[::-1], reach)):
            if sigma > 0:
                smoothed = ndimage.correlate1d(smoothed, _discrete_gaussian(sigma ** 2, half), axis=axis,
                                               mode="nearest")
        return Volume(smoothed, source.grid)

    def _covering(self, region: Grid, margin_zyx: np.ndarray) -> "Volume":
        """The crop of this image holding every voxel within ``margin_zyx`` voxels of ``region``'s box."""
        corners = np.array(np.meshgrid(*[(0, n - 1) for n in region.shape], indexing="ij")).reshape(3, -1).T
        inside = self.grid.world_to_voxel(region.voxel_to_world(corners.astype(np.float64)))  # (8, 3) z, y, x
        start = np.clip(np.floor(inside.min(axis=0) - margin_zyx), 0, None).astype(int)
        stop = np.minimum(np.ceil(inside.max(axis=0) + margin_zyx) + 1, self.grid.shape).astype(int)
        if np.any(stop <= start):  # no overlap: nothing to save
            return self
        return self.cropped(start, stop)

    def with_spacing(self, spacing: Sequence[float], interpolation: str = "linear",
                     default: float = 0.0) -> "Volume":
        """Resampled to ``spacing`` (x, y, z) mm over the same extent (see :meth:`Grid.with_spacing`)."""
        return self.resampled(self.grid.with_spacing(spacing), interpolation, default)

    def cropped(self, start_zyx: Sequence[int], stop_zyx: Sequence[int]) -> "Volume":
        """Voxels ``start <= index < stop`` (z, y, x) with the geometry moved to match."""
        grid = self.grid.cropped(start_zyx, stop_zyx)
        (z0, y0, x0), (z1, y1, x1) = start_zyx, stop_zyx
        return Volume(self.array[z0:z1, y0:y1, x0:x1].copy(), grid)

    def check_finite(self, name: str = "image") -> "Volume":
        """Raise when the image holds NaN or Inf; returns ``self`` for chaining."""
        check_finite(name, self.array)
        return self


def bounding_box(mask: np.ndarray, margin: int | Sequence[int] = 0) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Index bounding box ``(start, stop)`` (z, y, x) of the non-zero voxels, grown by ``margin``.

    Raises:
        GeometryError: the mask is empty.
    """
    nonzero = np.argwhere(np.asarray(mask) > 0)
    if nonzero.size == 0:
        raise GeometryError("mask: expected at least one non-zero voxel, got an empty mask")
    margin = np.broadcast_to(np.asarray(margin, dtype=int), (3,))
    start = np.maximum(nonzero.min(0) - margin, 0)
    stop = np.minimum(nonzero.max(0) + 1 + margin, mask.shape)
    return tuple(int(s) for s in start), tuple(int(s) for s in stop)
