"""The kinds of output a registration result folder can hold: one registry, one parser.

``Registration.save(out, outputs=...)``, ``graphreg register --outputs`` and ``graphreg batch
--outputs`` all choose from :data:`OUTPUT_KINDS`; adding a kind is one entry there (a name, whether
it is written by default, a line of help and its writer). ``report.json`` is always written, and
``landmarks_moved.csv`` whenever fixed landmarks are given.

Convention:
    A writer is called as ``write(result, folder, suffix)`` with the
    :class:`~graphreg.result.registration.Registration`, the (staging) folder and the image suffix
    (``".nii.gz"``, or ``".mha"`` for a fixed grid NIfTI cannot store). It returns the entries it
    adds to ``report.json`` (``{}`` for a file-only kind) and writes nothing when the result lacks
    what it needs (no moving image, no keypoints).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Union

import numpy as np

from graphreg.errors import GraphregError

if TYPE_CHECKING:  # pragma: no cover
    from graphreg.result.registration import Registration


@dataclass(frozen=True)
class OutputKind:
    """One selectable output: ``name`` as the user types it, ``default`` whether it is written
    without ``outputs=``, ``help`` (one line for ``--help``) and its writer (see module docstring)."""

    name: str
    default: bool
    help: str
    write: Callable[["Registration", Path, str], dict]


def _write_field(result: "Registration", folder: Path, suffix: str) -> dict:
    from graphreg.io.fields import write_itk_field

    write_itk_field(result.transform_field, folder / f"field{suffix}")
    return {}


def _write_field_fixed_grid(result: "Registration", folder: Path, suffix: str) -> dict:
    from graphreg.io.fields import write_itk_field

    write_itk_field(result.field, folder / f"field_fixed_grid{suffix}")
    return {}


def _write_warped(result: "Registration", folder: Path, suffix: str) -> dict:
    from graphreg.io.images import write_image
    from graphreg.core.volume import Volume

    if result.moving is None:
        return {}
    warped = result.warp(result.moving)
    kind = result.moving.array.dtype
    if np.issubdtype(kind, np.integer):  # e.g. int16 HU: rounded, half the bytes of float32
        limits = np.iinfo(kind)
        array = warped.array  # a fresh array: rounded and clipped in place
        array = np.clip(np.rint(array, out=array), limits.min, limits.max, out=array).astype(kind)
    else:
        array = warped.array.astype(np.float32, copy=False)
    write_image(Volume(array, warped.grid), folder / f"warped{suffix}")
    return {}


def _write_transform(result: "Registration", folder: Path, suffix: str) -> dict:
    result.write_transform(folder / "transform.h5")
    return {}


def _write_inverse(result: "Registration", folder: Path, suffix: str) -> dict:
    result.write_transform(folder / "inverse_transform.h5", inverse=True)
    return {"inverse": result.inverse_report()}


def _write_l2r(result: "Registration", folder: Path, suffix: str) -> dict:
    from graphreg.io.fields import write_l2r_displacement

    write_l2r_displacement(result.field, folder / "disp_l2r.nii.gz")
    return {}


def _jacobian(result: "Registration", folder: Path, suffix: str) -> dict:
    return {"jacobian": result.working_jacobian_stats()}


def _write_valid_mask(result: "Registration", folder: Path, suffix: str) -> dict:
    from graphreg.io.images import write_image
    from graphreg.core.volume import Volume

    if result.valid_mask is not None:  # nearest neighbour; 0 beyond the mask's own grid
        valid = result.valid_mask.resampled(result.fixed_grid, "nearest", default=0).array > 0
        write_image(Volume(valid.astype(np.uint8), result.fixed_grid), folder / f"valid_mask{suffix}")
    return {}


def _write_keypoints(result: "Registration", folder: Path, suffix: str) -> dict:
    if result.keypoints_mm is not None:
        result.write_keypoints(folder / "keypoints.csv")
    return {}


def _write_uncertainty(result: "Registration", folder: Path, suffix: str) -> dict:
    from graphreg.io.images import write_image
    from graphreg.core.volume import Volume

    error_map = result.uncertainty_map()
    if error_map is None:
        return {}
    # outside the working grid the nearest working voxel's value, as the field does
    on_fixed = error_map.resampled(result.fixed_grid, "linear", extrapolate=True)
    write_image(Volume(on_fixed.array.astype(np.float32, copy=False), result.fixed_grid),
                folder / f"uncertainty{suffix}")
    return {"uncertainty_map": result.uncertainty_report()}


#: every output kind, in the order they are written
OUTPUT_KINDS: dict[str, OutputKind] = {kind.name: kind for kind in (
    OutputKind("field", True, "field.nii.gz: ITK displacement field (world mm, float32) on the working grid's "
               "lattice grown to cover the fixed image (the registration's own voxels; ITK, ANTs and Slicer "
               "interpolate it exactly as graphreg maps points)", _write_field),
    OutputKind("warped", True, "warped.nii.gz: the moving image warped onto the fixed grid (in its integer "
               "type, rounded, or float32)", _write_warped),
    OutputKind("transform", False, "transform.h5: ITK displacement-field transform file (fixed -> moving, "
               "for SimpleITK, ANTs, Slicer; the working field, exact for points, 24 bytes per voxel)", _write_transform),
    OutputKind("inverse", False, "inverse_transform.h5: the inverse transform (moving -> fixed, on the moving "
               "grid; its round-trip error in report.json)", _write_inverse),
    OutputKind("l2r", False, "disp_l2r.nii.gz: Learn2Reg displacement (voxels, (X, Y, Z, 3), float32)",
               _write_l2r),
    OutputKind("field_fixed_grid", False, "field_fixed_grid.nii.gz: the same field resampled onto every voxel "
               "of the fixed image (world mm, float32; at 512x512x141 about 120 MB)", _write_field_fixed_grid),
    OutputKind("jacobian", True, "Jacobian determinant statistics of the field (working grid) in report.json",
               _jacobian),
    OutputKind("valid_mask", True, "valid_mask.nii.gz: where the field is trustworthy (uint8 on the fixed grid; "
               "report.json's region says why)", _write_valid_mask),
    OutputKind("keypoints", True, "keypoints.csv: keypoints, their displacements and uncertainty (mm)",
               _write_keypoints),
    OutputKind("uncertainty", False, "uncertainty.nii.gz: predicted graph-stage error (mm, float32, fixed grid) "
               "of keypoint methods, the calibrated keypoint spread densified; not the final field's error "
               "(summary in report.json)", _write_uncertainty),
)}

#: the kinds written when no selection is given
DEFAULT_OUTPUTS: tuple[str, ...] = tuple(name for name, kind in OUTPUT_KINDS.items() if kind.default)


def parse_outputs(outputs: Union[None, str, Iterable[str]]) -> tuple[str, ...]:
    """The selected kinds, in :data:`OUTPUT_KINDS` order, duplicates dropped.

    Args:
        outputs: None (:data:`DEFAULT_OUTPUTS`), ``"all"``, a comma-separated string
            (``"field,warped"``) or an iterable of names.

    Raises:
        GraphregError: an unknown name, or nothing selected.
    """
    if outputs is None:
        return DEFAULT_OUTPUTS
    names = outputs.split(",") if isinstance(outputs, str) else list(outputs)
    if not all(isinstance(name, str) for name in names):
        raise GraphregError(f"outputs: expected names from {', '.join(OUTPUT_KINDS)}, got {names!r}")
    names = [name.strip() for name in names if name.strip()]
    if names == ["all"]:
        return tuple(OUTPUT_KINDS)
    unknown = [name for name in names if name not in OUTPUT_KINDS]
    if unknown:
        raise GraphregError(f"outputs: expected names from {', '.join(OUTPUT_KINDS)} (or 'all'), "
                            f"got {', '.join(repr(name) for name in unknown)}")
    if not names:
        raise GraphregError(f"outputs: expected at least one of {', '.join(OUTPUT_KINDS)}, got none")
    return tuple(name for name in OUTPUT_KINDS if name in names)


def outputs_help(extra: Optional[str] = None) -> str:
    """The ``--outputs`` help text: every kind with its line, and the defaults."""
    kinds = "; ".join(f"{kind.name}: {kind.help}" for kind in OUTPUT_KINDS.values())
    return (f"Comma-separated outputs to write, or 'all' (report.json always; landmarks_moved.csv with "
            f"landmarks). {kinds}. Default: {','.join(DEFAULT_OUTPUTS)}.{' ' + extra if extra else ''}")
