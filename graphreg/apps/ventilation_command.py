"""``graphreg ventilation RESULT_DIR``: the ventilation maps (:mod:`graphreg.analysis.ventilation`) of a result
folder, with the fixed image, lung mask and moving image it refers to, written to one output folder.

Kept apart from :mod:`graphreg.analysis.ventilation` because it reads result folders
(:mod:`graphreg.result.loaded`), whose mapping class itself offers ``ventilation()``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from graphreg.errors import GeometryError, GraphregError, InputFileError
from graphreg.analysis.ventilation import HU_SMOOTHING_MM, INHALE_CHOICES, MAP_FILES, VentilationMaps


def ventilation_result(result_dir, out=None, inhale: str = "auto", fixed=None, moving=None, fixed_mask=None,
                       overwrite: bool = False, hu_smoothing_mm: float = HU_SMOOTHING_MM,
                       echo: Callable[[str], None] = print) -> Path:
    """``graphreg ventilation RESULT_DIR``: the maps of a result folder, written to ``out``
    (default ``RESULT_DIR/ventilation``).

    The fixed image and lung mask are the explicit paths or those ``report.json`` names
    (``inputs`` or ``pair``); the warped moving image is ``moving`` warped through the result, else
    the folder's ``warped.nii.gz`` / ``warped.mha``, else the moving image ``report.json`` names.

    Raises:
        InputFileError: the folder is not a result, or an image it needs is not found.
        GeometryError: the fixed image or the mask is not on the result's fixed grid.
    """
    from graphreg.runtime.extras import missing_packages
    from graphreg.io.images import read_image
    from graphreg.result.loaded import load_result
    from graphreg.apps.viz.report import find_input

    result_dir = Path(result_dir)
    result = load_result(result_dir)
    if inhale not in INHALE_CHOICES:
        raise GraphregError(f"inhale: expected one of {', '.join(INHALE_CHOICES)}, got {inhale!r}")
    paths = {}
    for name, explicit in (("fixed", fixed), ("fixed_mask", fixed_mask)):
        paths[name] = find_input(name, result_dir, result.report, explicit)
        if paths[name] is None:
            what = "fixed lung mask" if name == "fixed_mask" else "fixed image"
            raise InputFileError(f"{result_dir}: cannot find the {what} for the ventilation maps "
                                 f"(report.json names none); pass --{name.replace('_', '-')} PATH")
    stored = next((result_dir / f"warped{suffix}" for suffix in (".nii.gz", ".mha")
                   if (result_dir / f"warped{suffix}").is_file()), None)
    moving_path = None
    if moving is not None or stored is None:
        moving_path = find_input("moving", result_dir, result.report, moving)
        if moving_path is None:
            raise InputFileError(f"{result_dir}: cannot find the moving image for the ventilation maps (no "
                                 "warped.nii.gz, and report.json names none); pass --moving PATH")
    out = Path(out) if out is not None else result_dir / "ventilation"
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise GraphregError(f"out: {out} already holds results; pass --overwrite to replace them")
    fixed_image, lungs = read_image(paths["fixed"]), read_image(paths["fixed_mask"])
    for name, volume in (("fixed", fixed_image), ("fixed_mask", lungs)):
        if not volume.grid.same_as(result.fixed_grid, tol_mm=1e-3):
            raise GeometryError(f"--{name.replace('_', '-')} {paths[name]}: expected an image on the result's fixed grid "
                                f"[{' '.join(result.fixed_grid.describe().split())}], got "
                                f"[{' '.join(volume.grid.describe().split())}]")
    warped = result.warp(read_image(moving_path)) if moving_path is not None else read_image(stored)
    echo(f"fixed {paths['fixed']}, lungs {paths['fixed_mask']}, warped moving "
         f"{moving_path if moving_path is not None else stored}")
    maps = result.ventilation(fixed_image, lungs, warped=warped, inhale=inhale, hu_smoothing_mm=hu_smoothing_mm)
    figure = "matplotlib" not in missing_packages("viz")
    if not figure:
        echo("figure skipped: matplotlib is missing (pip install 'graphreg[viz]')")
    write_ventilation(maps, out, overwrite=overwrite, figure=figure)
    lungs_summary = maps.summary["regions"]["lungs"]
    echo(f"inhale: {maps.summary['inhale']} image ({maps.summary['inhale_detection']['by']}); lungs "
         f"{lungs_summary['fixed_volume_ml']:.0f} ml fixed, {lungs_summary['moving_volume_ml']:.0f} ml moving; "
         f"mean ventilation (V_in - V_ex)/V_ex: Jacobian {lungs_summary['ventilation_jacobian']['mean']:.3f}, "
         f"HU {lungs_summary['ventilation_hu']['mean']:.3f}; tissue mass moving/fixed "
         f"{lungs_summary['mass_ratio_moving_to_fixed']:.3f}")
    return out


def write_ventilation(result: VentilationMaps, out, overwrite: bool = False, figure: bool = True) -> Path:
    """Write ``out/``: the maps (:data:`MAP_FILES`, float32 NIfTI), ``lung_regions.nii.gz`` (uint8,
    :func:`lung_regions`), ``ventilation.json`` (the summary) and, with ``figure``,
    ``ventilation.png`` (coronal and axial maps over the CT). The folder appears complete or not at
    all (:class:`graphreg.io.outputs.ResultDirectory`); an existing non-empty ``out`` is refused
    unless ``overwrite``."""
    from graphreg.io.images import write_image
    from graphreg.io.outputs import ResultDirectory
    from graphreg.io.jsonable import to_jsonable

    with ResultDirectory(out, overwrite=overwrite) as staging:
        for key, name in MAP_FILES.items():
            write_image(result.maps[key], staging / name)
        write_image(result.regions, staging / "lung_regions.nii.gz")
        summary = {**result.summary, "files": {**MAP_FILES, "regions": "lung_regions.nii.gz"}}
        if figure:
            from graphreg.apps.viz.slices import plot_ventilation, save_figure

            save_figure(plot_ventilation(result.fixed, {"Jacobian: 1/J - 1" if result.summary["inhale"] == "fixed"
                                                        else "Jacobian: J - 1": result.maps["ventilation_jacobian"],
                                                        "HU: mass conservation": result.maps["ventilation_hu"]},
                                         result.lungs), staging / "ventilation.png")
            summary["files"]["figure"] = "ventilation.png"
        (staging / "ventilation.json").write_text(json.dumps(to_jsonable(summary), indent=2), encoding="utf-8")
    return Path(out)
