"""Points and images mapped either way through a registration: its forward field and the inverse.

Convention (ITK's, and what ``graphreg apply`` prints):
    - forward (the default), ``u`` on the fixed grid, fixed -> moving. Points are **pushed**: a
      fixed point ``p`` lands at ``p + u(p)`` in the moving image. Images are **pulled**: an image
      in moving space is resampled onto the fixed grid, ``out(x) = M(x + u(x))``.
    - inverse, ``v`` on the moving grid, moving -> fixed (``v`` inverts ``u``). A moving point
      ``q`` lands at ``q + v(q)`` in the fixed image; an image in fixed space is resampled onto the
      moving grid, ``out(y) = F(y + v(y))``.

    Points are ``(N, 3)`` world mm ``(x, y, z)`` (LPS); a point outside the grid it starts on is
    refused (the registration knows nothing there).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from graphreg.errors import GeometryError, GraphregError, check_shape
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.analysis.ventilation import HU_SMOOTHING_MM
from graphreg.core.volume import Volume


def conventions(kind: str, inverse: bool) -> str:
    """One line saying which way ``kind`` (``"image"``, ``"labels"`` or ``"points"``) is mapped."""
    if kind == "points":
        return ("points pushed moving -> fixed through the inverse field: q -> q + v(q) (world mm, LPS)"
                if inverse else "points pushed fixed -> moving through the forward field: p -> p + u(p) "
                                "(world mm, LPS)")
    how = "nearest neighbour, no new labels" if kind == "labels" else "interpolated"
    return (f"{kind} in fixed space pulled onto the moving grid through the inverse field: "
            f"out(y) = F(y + v(y)) ({how})" if inverse else
            f"{kind} in moving space pulled onto the fixed grid through the forward field: "
            f"out(x) = M(x + u(x)) ({how})")


def check_inside(name: str, points: np.ndarray, grid: Grid, image: str) -> None:
    """Raise :class:`GeometryError` when a world point lies more than half a voxel outside ``grid``."""
    voxels = grid.world_to_voxel(points)
    outside = np.any((voxels < -0.5) | (voxels > np.asarray(grid.shape) - 0.5), axis=1)
    if outside.any():
        first = int(np.argmax(outside))
        raise GeometryError(f"{name}: expected points inside the {image} image (world extent of grid "
                            f"{grid.size_xyz} voxels), got {int(outside.sum())} of {len(points)} "
                            f"outside, e.g. point {first} at {np.round(points[first], 2).tolist()} mm")


class TwoWayMapping(ABC):
    """Base class: ``transform_points``, ``warp``, ``warp_labels`` and ``write_transform`` in both directions.

    The class provides ``fixed_grid`` and ``moving_grid`` (:class:`Grid`), ``inverse_field()``
    (a field on ``moving_grid``), ``_point_field()`` (the forward field points are pushed
    through), ``_image_field()`` (the forward field on ``fixed_grid``) and ``_transform_field()``
    (the forward field written to transform files).
    """

    fixed_grid: Grid

    def transform_points(self, points_mm, inverse: bool = False):
        """Fixed world points -> moving (or, ``inverse``, moving -> fixed).

        Shapes:
            points_mm: ``(N, 3)`` world mm ``(x, y, z)``; returns the same shape (a numpy input
            gives float64 numpy, a tensor input a tensor).

        Raises:
            GeometryError: a point lies outside the image it starts in.
        """
        points = points_mm.detach().cpu().double().numpy() if isinstance(points_mm, torch.Tensor) \
            else np.asarray(points_mm, dtype=np.float64)
        check_shape("points_mm", points, "(N, 3)", points.ndim == 2 and points.shape[1] == 3)
        if inverse:
            check_inside("points_mm", points, self.moving_grid, "moving")
            return self.inverse_field().transform_points(points_mm)
        check_inside("points_mm", points, self.fixed_grid, "fixed")
        return self._point_field().transform_points(points_mm)

    def warp(self, image: Volume, interpolation: str = "linear", default: float = -1000.0,
             inverse: bool = False) -> Volume:
        """A moving-space image (any grid) resampled onto the fixed grid; with ``inverse``, a
        fixed-space image resampled onto the moving grid. ``interpolation``: ``"linear"``,
        ``"bspline"`` or ``"nearest"`` (see :meth:`DisplacementField.warp`)."""
        field = self.inverse_field() if inverse else self._image_field()
        return field.warp(image, interpolation, default)

    def warp_labels(self, labels: Volume, inverse: bool = False, default: int = 0) -> Volume:
        """A label map warped like :meth:`warp` by nearest neighbour: same dtype, no new labels
        (``default`` outside the source image)."""
        return self.warp(labels, "nearest", default, inverse=inverse)

    def write_transform(self, path: str | os.PathLike, inverse: bool = False) -> Path:
        """Write the forward (or inverse) field as an ITK transform file (``.h5``), see
        :func:`graphreg.io.fields.write_itk_transform`. ITK maps points through it exactly as
        :meth:`transform_points` does."""
        from graphreg.io.fields import write_itk_transform

        return write_itk_transform(self.inverse_field() if inverse else self._transform_field(), path)

    def ventilation(self, fixed: Volume, lungs: Volume, moving: Optional[Volume] = None,
                    warped: Optional[Volume] = None, inhale: str = "auto",
                    hu_smoothing_mm: float = HU_SMOOTHING_MM):
        """Regional ventilation maps in the fixed frame (:func:`graphreg.analysis.ventilation.ventilation_maps`):
        Jacobian and HU based, positive = expansion from exhale to inhale, with the tissue-mass check
        and per-lung / per-third summary; write them with :func:`graphreg.apps.ventilation_command.write_ventilation`.

        Args:
            fixed: the fixed image (HU) on :attr:`fixed_grid`; lungs: its lung mask, same grid.
            moving: the moving image (HU, any grid), pulled onto the fixed grid here; default: the
                registration's own moving image when it holds one.
            warped: instead of ``moving``, the moving image already pulled onto the fixed grid.
            inhale: ``"fixed"``, ``"moving"`` or ``"auto"`` (by lung volume, see the module).
            hu_smoothing_mm: Gaussian sigma (mm) of both HU images inside the lungs before the HU
                formulas (0: none).

        Raises:
            GraphregError: no moving image, or ``fixed`` / ``lungs`` / ``warped`` off the fixed grid.
        """
        from graphreg.analysis.ventilation import ventilation_maps

        if warped is None:
            moving = moving if moving is not None else getattr(self, "moving", None)
            if moving is None:
                raise GraphregError("moving: expected the moving image (or warped=, the moving image on the "
                                    "fixed grid); this registration does not hold it")
            warped = self.warp(moving, default=-1000.0)
        return ventilation_maps(self._image_field(), fixed, warped, lungs, inhale, hu_smoothing_mm)

    # what each class provides
    @property
    @abstractmethod
    def moving_grid(self) -> Grid:
        """The moving image's grid (where the inverse field lives)."""

    @abstractmethod
    def inverse_field(self) -> DisplacementField:
        """The inverse field (moving -> fixed) on :attr:`moving_grid`."""

    @abstractmethod
    def _point_field(self) -> DisplacementField:
        """The forward field points are pushed through."""

    @abstractmethod
    def _image_field(self) -> DisplacementField:
        """The forward field on the fixed grid (images are pulled through it)."""

    @abstractmethod
    def _transform_field(self) -> DisplacementField:
        """The forward field a transform file holds (ITK interpolates it as :meth:`_point_field`)."""
