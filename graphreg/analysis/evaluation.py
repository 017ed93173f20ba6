"""Landmark evaluation of a registration from files: the engine behind ``graphreg evaluate``.

Convention:
    All errors are Euclidean distances in world mm. Voxel landmark files (DIR-Lab txt, Learn2Reg
    CSV) are placed in world space with the geometry of a DIR-Lab case, an explicit spacing (origin
    0, identity direction, as DIR-Lab defines its coordinates) or the field's own grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from graphreg.errors import GraphregError
from graphreg.core.geometry import Grid
from graphreg.io.dirlab import dirlab_case as lookup_dirlab_case
from graphreg.io.landmarks import Landmarks, check_pairs, read_landmarks
from graphreg.ops.metrics import landmark_errors, summarize_errors


def parse_spacing(text: str) -> tuple[float, float, float]:
    """``"SX,SY,SZ"`` -> three positive floats (mm); raises naming ``--spacing``."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise GraphregError(f"--spacing: expected three positive numbers 'SX,SY,SZ' in mm, got {text!r}")
    return values  # type: ignore[return-value]


def _voxel_grid(dirlab_case: Optional[str], spacing: Optional[str], field_grid: Optional[Grid]) -> Optional[Grid]:
    if dirlab_case is not None and spacing is not None:
        raise GraphregError("--dirlab-case and --spacing: give one of them, not both")
    if dirlab_case is not None:
        return lookup_dirlab_case(dirlab_case).grid
    if spacing is not None:
        return Grid((1, 1, 1), parse_spacing(spacing))
    return field_grid


def _fixed_grid_of(field_path: Path, field) -> Grid:
    """The fixed image's grid for a field: from the ``report.json`` beside it (graphreg result folders,
    whose field covers the fixed image on the working lattice), else the field's own grid."""
    report_path = Path(field_path).parent / "report.json"
    if report_path.is_file():
        import json

        from graphreg.result.registration import grid_from_dict

        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
            if isinstance(report, dict) and "fixed_grid" in report:
                return grid_from_dict(report["fixed_grid"])
        except (ValueError, KeyError, TypeError, IndexError) as error:
            raise GraphregError(f"{report_path}: unreadable fixed_grid ({type(error).__name__}: {error}); "
                                f"give --dirlab-case or --spacing for voxel landmarks") from error
    return field.grid


def _to_world(landmarks: Landmarks, grid: Optional[Grid], path: Path) -> np.ndarray:
    if landmarks.space == "world":
        return landmarks.points
    if grid is None:
        raise GraphregError(
            f"{path}: voxel landmarks need a geometry: give --dirlab-case, --spacing or --field")
    return landmarks.to_world(grid).points


def evaluate_landmarks(fixed_path: Path, moving_path: Path, moved_path: Optional[Path] = None,
                       field_path: Optional[Path] = None, dirlab_case: Optional[str] = None,
                       spacing: Optional[str] = None, jacobian: bool = False) -> dict:
    """TRE of landmark pairs before registration and, given mapped points or a field, after it.

    Args:
        jacobian: also compute the Jacobian statistics of the field (over its whole grid, slab by
            slab: :func:`graphreg.result.registration.jacobian_stats_chunked`); needs ``field_path``.

    Returns:
        dict with ``n_points``, ``tre_before_{mean,std,p25,p50,p75,max}_mm``, ``registered`` and,
        after registration, ``tre_{...}_mm`` and (with a field and ``jacobian``) the Jacobian
        statistics of :func:`graphreg.ops.metrics.jacobian_stats`. Without a registration the
        ``tre_*`` keys equal the ``tre_before_*`` keys (the identity mapping).
    """
    if jacobian and field_path is None:
        raise GraphregError("--jacobian: needs a displacement field (--field)")
    field = None
    if field_path is not None:
        from graphreg.io.fields import read_itk_field

        field = read_itk_field(field_path)
    grid = _voxel_grid(dirlab_case, spacing, None if field is None else _fixed_grid_of(field_path, field))
    fixed = _to_world(read_landmarks(fixed_path), grid, fixed_path)
    moving = _to_world(read_landmarks(moving_path), grid, moving_path)
    check_pairs(fixed, moving, names=(str(fixed_path), str(moving_path)))

    result: dict = {"n_points": int(len(fixed)), "registered": False}
    before = summarize_errors(landmark_errors(fixed, moving))
    result.update({f"tre_before_{key}": value for key, value in before.items() if key != "n_points"})
    mapped = fixed
    if moved_path is not None:
        mapped = _to_world(read_landmarks(moved_path), grid, moved_path)
        check_pairs(fixed, mapped, names=(str(fixed_path), str(moved_path)))
        result["registered"] = True
    elif field is not None:
        mapped = field.transform_points(fixed)
        result["registered"] = True
        if jacobian:
            from graphreg.result.registration import jacobian_stats_chunked

            result.update(jacobian_stats_chunked(field))
    after = summarize_errors(landmark_errors(mapped, moving))
    result.update({f"tre_{key}": value for key, value in after.items() if key != "n_points"})
    return result
