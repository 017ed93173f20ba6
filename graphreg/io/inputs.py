"""Coercion of user inputs (paths, SimpleITK images, arrays with geometry) into :class:`Volume`.

The API accepts what users have at hand; everything is turned into a ``Volume`` here, once, and
validated (3D, finite values, non-constant) with messages that name the argument.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import SimpleITK as sitk

from graphreg.errors import GraphregError, ShapeError, check_finite
from graphreg.core.geometry import Grid
from graphreg.core.volume import Volume


def as_volume(value: Any, name: str, require_contrast: bool = True) -> Volume:
    """A :class:`Volume` from a path, ``SimpleITK.Image``, ``Volume`` or ``(array, Grid)`` pair.

    Args:
        value: the input. A bare numpy array is accepted only with a grid: ``(array, grid)``.
        name: the argument's name, used in error messages.
        require_contrast: reject constant images (nothing to register).
    """
    if isinstance(value, (str, Path)):
        from graphreg.io.images import read_image

        volume = read_image(value)
    elif isinstance(value, sitk.Image):
        if value.GetDimension() != 3:
            raise ShapeError(f"{name}: expected a 3D image, got a {value.GetDimension()}D SimpleITK image")
        volume = Volume.from_sitk(value)
    elif isinstance(value, Volume):
        volume = value
    elif isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], Grid):
        array = np.asarray(value[0])
        if array.ndim != 3:
            raise ShapeError(f"{name}: expected a 3D array (z, y, x), got shape {array.shape}")
        volume = Volume(array, value[1])
    elif isinstance(value, np.ndarray):
        raise GraphregError(f"{name}: a bare array has no geometry; pass (array, graphreg.Grid(...)) instead")
    else:
        raise GraphregError(f"{name}: expected a path, SimpleITK image, Volume or (array, Grid), "
                            f"got {type(value).__name__}")
    check_finite(name, volume.array)
    if require_contrast and float(volume.array.max()) == float(volume.array.min()):
        raise GraphregError(f"{name}: the image is constant ({float(volume.array.min())}); nothing to register")
    return volume


def as_optional_mask(value: Optional[Any], name: str) -> Optional[Volume]:
    """Like :func:`as_volume` for an optional mask (constant masks are checked later, per grid)."""
    return None if value is None else as_volume(value, name, require_contrast=False)
