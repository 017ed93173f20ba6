"""``graphreg apply``: a result folder applied to an image, a label map or a point set, either way.

Directions are those of :mod:`graphreg.result.mapping`: images are pulled (forward: a moving-space
image onto the fixed grid), points are pushed (forward: fixed points into the moving image);
``inverse`` swaps both. Point files keep their format (:mod:`graphreg.io.landmarks`): world-mm
CSV stays world mm; DIR-Lab (1-based) and Learn2Reg (0-based) voxel indices are read on the grid
the points start on and written on the grid they land on. The output is written atomically,
after every check and the whole computation, so a refused input leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from graphreg.result.mapping import conventions
from graphreg.errors import GraphregError
from graphreg.core.field import INTERPOLATIONS

KINDS = ("image", "labels", "points")


def apply_result(result_dir: str | os.PathLike, out: str | os.PathLike, *, image=None, labels=None,
                 points=None, inverse: bool = False, interpolation: str = "linear",
                 default: Optional[float] = None, echo: Callable[[str], None] = print) -> Path:
    """Warp ``image`` / ``labels`` or map ``points`` (exactly one) through a result folder; write ``out``.

    Args:
        result_dir: a folder written by ``graphreg register`` (see :func:`graphreg.result.loaded.load_result`).
        out: output file: an image file (``.nii.gz``, ``.mha``, ...) for images and labels, a
            landmark file for points (written in the input's format).
        image: an image file; resampled with ``interpolation`` (``"linear"`` or ``"bspline"``).
        labels: a label-map file; resampled by nearest neighbour (same dtype, no new labels).
        points: a landmark file (DIR-Lab ``.txt``, Learn2Reg ``.csv``, world-mm ``.csv``).
        inverse: map moving -> fixed instead of fixed -> moving.
        default: value outside the source image (images: the image's minimum; labels: 0).
        echo: receives one line per convention applied.

    Returns:
        ``Path(out)``.

    Raises:
        GraphregError: not exactly one input, an unknown interpolation, an output type that does
            not fit, or any error of reading the result or the input (points outside the image
            they start on included).
    """
    from graphreg.io.images import SITK_SUFFIXES, read_image, write_image
    from graphreg.io.landmarks import Landmarks, landmark_format, read_landmarks, write_landmarks
    from graphreg.result.loaded import load_result

    given = {kind: value for kind, value in zip(KINDS, (image, labels, points)) if value is not None}
    if len(given) != 1:
        raise GraphregError(f"input: expected exactly one of --image, --labels, --points, got "
                            f"{len(given)} ({', '.join(given) or 'none'})")
    (kind, source), = given.items()
    if kind == "image" and interpolation not in INTERPOLATIONS:
        raise GraphregError(f"interpolation: expected one of {list(INTERPOLATIONS)}, got {interpolation!r}")
    out = Path(out)
    if kind != "points" and not out.name.lower().endswith(SITK_SUFFIXES):
        raise GraphregError(f"out: expected an image file name ending in one of {', '.join(SITK_SUFFIXES)}, "
                            f"got {out.name!r}")
    result = load_result(result_dir)
    echo(conventions(kind, inverse))
    start, target = ("moving", "fixed") if inverse else ("fixed", "moving")
    if kind == "points":
        fmt = landmark_format(source)
        marks = read_landmarks(source, fmt)
        source_grid, target_grid = ((result.moving_grid, result.fixed_grid) if inverse
                                    else (result.fixed_grid, result.moving_grid))
        world = marks.to_world(source_grid).points
        moved = Landmarks(result.transform_points(world, inverse=inverse), "world")
        where = "world mm" if fmt == "world" else f"voxel indices of the {start} grid -> the {target} grid"
        echo(f"points: {len(world)} read and written as {fmt} ({where})")
        return write_landmarks(moved, out, fmt, grid=target_grid)
    volume = read_image(source)
    if kind == "labels":
        if volume.array.dtype.kind == "f" and not np.array_equal(volume.array, np.round(volume.array)):
            raise GraphregError(f"--labels {source}: expected integer labels, got non-integer values")
        warped = result.warp_labels(volume, inverse=inverse, default=0 if default is None else default)
    else:
        fill = float(volume.array.min()) if default is None else float(default)
        warped = result.warp(volume, interpolation, fill, inverse=inverse)
    echo(f"{kind}: written on the {start} grid [{' '.join(warped.grid.describe().split())}]")
    return write_image(warped, out)
