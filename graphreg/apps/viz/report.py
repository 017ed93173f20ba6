"""A one-page HTML report of a registration result folder.

:func:`load_result` gathers everything a result folder refers to (the field, the images, masks
and landmarks named in ``report.json``); :func:`write_report` makes the slice figures, the 3D
scenes and one self-contained ``report.html`` with the numbers of ``report.json`` as tables.

Result folder (written by :meth:`graphreg.result.registration.Registration.save`)::

    field.nii.gz          ITK displacement (world mm, LPS), fixed -> moving, on a grid    required
                          covering the fixed image (the figures are drawn on it)
    report.json           timings_s, jacobian, config, method, and "inputs" (CLI) or
                          "pair" (demo / benchmark: a pair folder)                         required
    warped.nii.gz         moving image warped onto the fixed grid                          optional
    landmarks_moved.csv   fixed landmarks mapped into the moving image, world mm          optional
    keypoints.csv         x,y,z,dx,dy,dz[,uncertainty_mm]: fixed keypoints, mm            optional
    uncertainty.nii.gz    predicted graph-stage error (mm), fixed grid                     optional

Convention:
    Points and vectors are world mm ``(x, y, z)`` (LPS). Inputs are looked up in this order:
    the explicit argument, ``report.json["inputs"][name]``, the pair folder
    ``report.json["pair"]`` (``fixed.nii.gz``, ``moving.nii.gz``, ``fixed_mask.nii.gz``,
    ``moving_mask.nii.gz``, ``fixed_landmarks.csv``, ``moving_landmarks.csv``). Relative paths
    in ``report.json`` are tried from the current folder, then from the result folder.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from graphreg.datasets.pairs import FILES
from graphreg.errors import GraphregError, InputFileError
from graphreg.core.field import DisplacementField
from graphreg.core.volume import Volume

#: what a pair folder calls each input (see :mod:`graphreg.datasets.pairs`)
PAIR_FILES = {name: FILES[name] for name in ("fixed", "moving", "fixed_mask", "moving_mask",
                                           "fixed_landmarks", "moving_landmarks")}
INPUT_NAMES = tuple(PAIR_FILES)
_DESCRIPTIONS = {"fixed": "fixed image", "moving": "moving image", "fixed_mask": "fixed lung mask",
                 "moving_mask": "moving lung mask", "fixed_landmarks": "fixed landmarks",
                 "moving_landmarks": "moving landmarks"}
_KEYPOINT_HEADER = ["x", "y", "z", "dx", "dy", "dz"]


# ---------------------------------------------------------------------- loading
@dataclass(eq=False)
class ResultData:
    """Everything needed to visualise one registration.

    Attributes:
        result_dir: the result folder.
        report: the parsed ``report.json`` (empty when the folder has none).
        field: displacement on the fixed grid (fixed -> moving).
        fixed, moving, warped, fixed_mask, moving_mask: images or None (``warped`` on the fixed
            grid; masks on their image's grid).
        fixed_landmarks_mm, moving_landmarks_mm, moved_landmarks_mm: ``(N, 3)`` world mm or None;
            ``moved`` are the fixed landmarks mapped by the registration (``p + u(p)``).
        keypoints_mm, keypoint_displacements_mm: ``(K, 3)`` world mm or None.
        keypoint_uncertainty_mm: ``(K,)`` mm or None.
        uncertainty: the dense uncertainty map (``uncertainty.nii.gz``, fixed grid) or None.
        sources: where each item was found (file path as text), for the report.
    """

    result_dir: Path
    report: dict
    field: DisplacementField
    fixed: Optional[Volume] = None
    moving: Optional[Volume] = None
    warped: Optional[Volume] = None
    fixed_mask: Optional[Volume] = None
    moving_mask: Optional[Volume] = None
    fixed_landmarks_mm: Optional[np.ndarray] = None
    moving_landmarks_mm: Optional[np.ndarray] = None
    moved_landmarks_mm: Optional[np.ndarray] = None
    keypoints_mm: Optional[np.ndarray] = None
    keypoint_displacements_mm: Optional[np.ndarray] = None
    keypoint_uncertainty_mm: Optional[np.ndarray] = None
    uncertainty: Optional[Volume] = None
    sources: dict = dataclass_field(default_factory=dict)

    @property
    def tre_before_mm(self) -> Optional[np.ndarray]:
        """``(N,)`` distance between paired landmarks before registration, or None."""
        from graphreg.ops.metrics import landmark_errors

        if self.fixed_landmarks_mm is None or self.moving_landmarks_mm is None:
            return None
        return landmark_errors(self.fixed_landmarks_mm, self.moving_landmarks_mm)

    @property
    def tre_after_mm(self) -> Optional[np.ndarray]:
        """``(N,)`` TRE after registration ``|p + u(p) - q|``, or None."""
        from graphreg.ops.metrics import landmark_errors

        if self.moved_landmarks_mm is None or self.moving_landmarks_mm is None:
            return None
        return landmark_errors(self.moved_landmarks_mm, self.moving_landmarks_mm)


def _read_report(result_dir: Path) -> dict:
    path = result_dir / "report.json"
    if not path.is_file():
        return {}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputFileError(f"{path}: not readable JSON ({error})") from error
    if not isinstance(report, dict):
        raise InputFileError(f"{path}: expected a JSON object, got {type(report).__name__}")
    return report


def _resolve(value: str, result_dir: Path, origin: str) -> Path:
    """A path named in report.json: absolute, else from the current folder, else the result folder."""
    path = Path(value)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, result_dir / path]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise InputFileError(f"{origin} names {value!r}, which does not exist (looked at {looked})")


def find_input(name: str, result_dir, report: dict, explicit=None) -> Optional[Path]:
    """Where input ``name`` (one of :data:`INPUT_NAMES`) is: explicit path, ``inputs``, ``pair``.

    Returns:
        The path, or None when nothing names it.

    Raises:
        InputFileError: a path is named (explicitly or in ``report.json``) but does not exist.
    """
    result_dir = Path(result_dir)
    if explicit is not None:
        path = Path(explicit)
        if not path.exists():
            raise InputFileError(f"{name}: file not found: {path}")
        return path
    inputs = report.get("inputs") or {}
    if isinstance(inputs, dict) and inputs.get(name):
        return _resolve(str(inputs[name]), result_dir, f"{result_dir / 'report.json'} inputs.{name}")
    if report.get("pair"):
        folder = _resolve(str(report["pair"]), result_dir, f"{result_dir / 'report.json'} pair")
        candidate = folder / PAIR_FILES[name]
        return candidate if candidate.exists() else None
    return None


def _missing(name: str, result_dir: Path, report: dict) -> GraphregError:
    where = (f"{result_dir / 'report.json'} has neither inputs.{name} nor a 'pair' folder holding "
             f"{PAIR_FILES[name]}" if report else f"{result_dir} has no report.json to find it from")
    return GraphregError(f"{result_dir}: cannot find the {_DESCRIPTIONS[name]} needed for the "
                         f"figures: {where}; pass {name}=PATH (command line: --{name.replace('_', '-')})")


def read_keypoints(path) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Read ``keypoints.csv``: header ``x,y,z,dx,dy,dz[,uncertainty_mm]``.

    Returns:
        ``(points_mm (K, 3), displacement_mm (K, 3), uncertainty_mm (K,) or None)``.

    Raises:
        InputFileError: unreadable file, wrong header, or rows that are not finite numbers.
    """
    path = Path(path)
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise InputFileError(f"{path}: cannot read the keypoint file ({error})") from error
    header = [h.strip().lower() for h in lines[0].split(",")] if lines else []
    if header[:6] != _KEYPOINT_HEADER or header[6:] not in ([], ["uncertainty_mm"]):
        raise InputFileError(f"{path}: expected the header 'x,y,z,dx,dy,dz[,uncertainty_mm]', "
                             f"got {lines[0] if lines else '(empty file)'!r}")
    values = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            row = [float(v) for v in line.split(",")]
        except ValueError:
            row = []
        if len(row) != len(header) or not np.isfinite(row).all():
            raise InputFileError(f"{path}: line {number}: expected {len(header)} finite numbers per "
                                 f"row, got {line.strip()!r}")
        values.append(row)
    rows = np.array(values, dtype=np.float64).reshape(-1, len(header))
    return rows[:, :3], rows[:, 3:6], (rows[:, 6] if len(header) == 7 else None)


def _landmarks_mm(path: Path, grid) -> np.ndarray:
    from graphreg.io import read_landmarks

    return read_landmarks(path).to_world(grid).points


def load_result(result_dir, fixed=None, moving=None, fixed_mask=None, moving_mask=None,
                fixed_landmarks=None, moving_landmarks=None,
                require: Sequence[str] = ("fixed", "moving")) -> ResultData:
    """Read a result folder and the inputs it refers to.

    Args:
        result_dir: folder written by :meth:`~graphreg.result.registration.Registration.save`.
        fixed, moving, fixed_mask, moving_mask: image paths overriding ``report.json``.
        fixed_landmarks, moving_landmarks: landmark files (world CSV ``x,y,z``; DIR-Lab and
            Learn2Reg voxel files are placed with the fixed / moving image's grid).
        require: inputs that must be found (names from :data:`INPUT_NAMES`).

    Returns:
        A :class:`ResultData`. The warped image is ``warped.nii.gz`` or, without it, the moving
        image warped by the field; mapped landmarks are ``landmarks_moved.csv`` when it holds one
        point per fixed landmark, else the fixed landmarks mapped by the field.

    Raises:
        GraphregError: the folder, ``field.nii.gz`` or a required input is missing (the message
            names what and where it was looked for), or a named file does not exist.
    """
    from graphreg.io import read_image, read_itk_field
    from graphreg.io.landmarks import read_landmarks

    result_dir = Path(result_dir)
    if not result_dir.is_dir():
        raise InputFileError(f"result_dir: expected a registration result folder, got {result_dir} "
                             "(not a folder)")
    unknown = set(require) - set(INPUT_NAMES)
    if unknown:
        raise GraphregError(f"require: expected names from {INPUT_NAMES}, got {sorted(unknown)}")
    field_path = result_dir / "field.nii.gz"
    if not field_path.is_file():
        raise InputFileError(f"{result_dir}: not a registration result folder: field.nii.gz is missing")
    report = _read_report(result_dir)
    explicit = dict(fixed=fixed, moving=moving, fixed_mask=fixed_mask, moving_mask=moving_mask,
                    fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks)
    paths = {name: find_input(name, result_dir, report, explicit[name]) for name in INPUT_NAMES}
    for name in require:
        if paths[name] is None:
            raise _missing(name, result_dir, report)

    data = ResultData(result_dir, report, read_itk_field(field_path))
    data.sources["field"] = str(field_path)
    for name in ("fixed", "moving", "fixed_mask", "moving_mask"):
        if paths[name] is not None:
            setattr(data, name, read_image(paths[name]))
            data.sources[name] = str(paths[name])
    warped_path = result_dir / "warped.nii.gz"
    if warped_path.is_file():
        data.warped = read_image(warped_path)
        data.sources["warped"] = str(warped_path)
    elif data.moving is not None:
        data.warped = data.field.warp(data.moving, default=float(np.min(data.moving.array)))
        data.sources["warped"] = "moving image warped by field.nii.gz"

    if data.fixed is not None:
        fixed_grid = data.fixed.grid
    elif "fixed_grid" in report:  # voxel landmarks are indices of the fixed image, not of the field's grid
        from graphreg.result.registration import grid_from_dict

        fixed_grid = grid_from_dict(report["fixed_grid"])
    else:
        fixed_grid = data.field.grid
    moving_grid = data.moving.grid if data.moving is not None else fixed_grid
    if paths["fixed_landmarks"] is not None:
        data.fixed_landmarks_mm = _landmarks_mm(paths["fixed_landmarks"], fixed_grid)
        data.sources["fixed_landmarks"] = str(paths["fixed_landmarks"])
    if paths["moving_landmarks"] is not None:
        data.moving_landmarks_mm = _landmarks_mm(paths["moving_landmarks"], moving_grid)
        data.sources["moving_landmarks"] = str(paths["moving_landmarks"])
    if data.fixed_landmarks_mm is not None and data.moving_landmarks_mm is not None:
        from graphreg.io import check_pairs

        check_pairs(data.fixed_landmarks_mm, data.moving_landmarks_mm)
    moved_path = result_dir / "landmarks_moved.csv"
    if moved_path.is_file():
        moved = read_landmarks(moved_path, fmt="world").points
        if data.fixed_landmarks_mm is None or len(moved) == len(data.fixed_landmarks_mm):
            data.moved_landmarks_mm = moved
            data.sources["moved_landmarks"] = str(moved_path)
    if data.moved_landmarks_mm is None and data.fixed_landmarks_mm is not None:
        data.moved_landmarks_mm = data.field.transform_points(data.fixed_landmarks_mm)
        data.sources["moved_landmarks"] = "fixed landmarks mapped by field.nii.gz"

    uncertainty_path = result_dir / "uncertainty.nii.gz"
    if uncertainty_path.is_file():
        data.uncertainty = read_image(uncertainty_path)
        data.sources["uncertainty"] = str(uncertainty_path)
    keypoint_path = result_dir / "keypoints.csv"
    if keypoint_path.is_file():
        points, disp, spread = read_keypoints(keypoint_path)
        if len(points):
            data.keypoints_mm, data.keypoint_displacements_mm = points, disp
            data.keypoint_uncertainty_mm = spread
            data.sources["keypoints"] = str(keypoint_path)
    return data


# ---------------------------------------------------------------------- scenes and figures
def result_scenes(data: ResultData, surface_step_mm: float = 3.0, max_points: int = 3000) -> dict:
    """The 3D scenes of a result: ``"keypoints"``, ``"landmarks"``, ``"uncertainty"`` (those
    that the data allows), each with the fixed lung surface (at most 20000 triangles) when the
    fixed mask is known. Keypoints and landmark pairs beyond ``max_points`` are thinned to an even
    random subset of that size (seeded; the scene title says so)."""
    from graphreg.apps.viz import pointclouds

    surface = None
    if data.fixed_mask is not None and np.any(np.asarray(data.fixed_mask.array) > 0):
        surface = pointclouds.lung_surface(data.fixed_mask, step_mm=surface_step_mm)
    scenes = {}
    if data.keypoints_mm is not None:
        keep = _subset(len(data.keypoints_mm), max_points)
        points, disp = data.keypoints_mm[keep], data.keypoint_displacements_mm[keep]
        scenes["keypoints"] = _thinned(pointclouds.keypoint_scene(points, disp, surface), len(keep),
                                       len(data.keypoints_mm))
        if data.keypoint_uncertainty_mm is not None:
            scenes["uncertainty"] = _thinned(
                pointclouds.uncertainty_scene(points, data.keypoint_uncertainty_mm[keep], surface), len(keep),
                len(data.keypoints_mm))
    if data.fixed_landmarks_mm is not None and data.moving_landmarks_mm is not None:
        keep = _subset(len(data.fixed_landmarks_mm), max_points)
        moved = None if data.moved_landmarks_mm is None else data.moved_landmarks_mm[keep]
        scenes["landmarks"] = _thinned(
            pointclouds.landmark_scene(data.fixed_landmarks_mm[keep], data.moving_landmarks_mm[keep], moved, surface),
            len(keep), len(data.fixed_landmarks_mm))
    return scenes


def _subset(count: int, cap: int) -> np.ndarray:
    """Sorted indices of an even random subset of at most ``cap`` of ``count`` items (seed 0)."""
    if count <= cap:
        return np.arange(count)
    return np.sort(np.random.default_rng(0).choice(count, cap, replace=False))


def _thinned(scene, shown: int, total: int):
    if shown < total:
        scene.title = f"{scene.title} (drawn: {shown} of {total})"
    return scene


def make_figures(data: ResultData, out_dir, slices: Optional[dict] = None, dpi: int = 100) -> dict[str, Path]:
    """Slice figures of ``data`` as PNGs (``dpi`` dots per inch) in ``out_dir``; returns ``{name: path}``.

    Names: ``images``, ``checkerboard``, ``difference`` (need fixed and moving), ``displacement``,
    ``jacobian`` (always), ``uncertainty`` (needs the uncertainty map), ``tre`` (need paired landmarks).
    """
    from graphreg.apps.viz import slices as sl

    out = Path(out_dir)
    grid = data.field.grid
    air = -1000.0
    fixed = None if data.fixed is None else sl.on_grid(data.fixed, grid, air)
    moving = None if data.moving is None else sl.on_grid(data.moving, grid, air)
    warped = None if data.warped is None else sl.on_grid(data.warped, grid, air)
    mask = None if data.fixed_mask is None else sl.on_grid(data.fixed_mask, grid, 0, "nearest")
    slices = {**sl.default_slices(sl.DisplayFrame.from_grid(grid), mask), **(slices or {})}  # same cuts everywhere
    figures = {}
    if fixed is not None and moving is not None:
        figures["images"] = sl.plot_images(fixed, moving, warped, mask, slices)
        figures["checkerboard"] = sl.plot_checkerboard(fixed, moving, warped, slices)
        if warped is not None:
            figures["difference"] = sl.plot_differences(fixed, moving, warped, slices)
    figures["displacement"] = sl.plot_displacement(data.field, fixed, mask, slices)
    figures["jacobian"] = sl.plot_jacobian(data.field, mask, slices)
    if data.uncertainty is not None:
        figures["uncertainty"] = sl.plot_uncertainty(sl.on_grid(data.uncertainty, grid), fixed, mask, slices)
    if data.tre_before_mm is not None:
        figures["tre"] = sl.plot_landmark_errors(data.tre_before_mm, data.tre_after_mm)
    return {name: sl.save_figure(figure, out / f"{name}.png", dpi) for name, figure in figures.items()}


def render_scenes(scenes: dict, out_dir, size=(960, 720), views=("anterior", "left"),
                  backend: str = "auto") -> tuple[dict[str, Path], dict[str, float]]:
    """Render every scene from every view as ``out_dir/scene_<name>_<view>.png``.

    Returns:
        ``({"<name>_<view>": PNG path}, {name: seconds to render all views of that scene})``.
    """
    import time

    from graphreg.apps.viz.pointclouds import render_views

    out = Path(out_dir)
    paths, seconds = {}, {}
    for name, scene in scenes.items():
        start = time.perf_counter()
        written = render_views(scene, {view: out / f"scene_{name}_{view}.png" for view in views}, size=size,
                               backend=backend)
        seconds[name] = time.perf_counter() - start
        paths.update({f"{name}_{view}": path for view, path in zip(views, written)})
    return paths, seconds


# ---------------------------------------------------------------------- numbers
def jacobian_in_mask(data: ResultData) -> Optional[dict]:
    """Jacobian statistics (as :func:`graphreg.ops.metrics.jacobian_stats`) inside the fixed mask.

    Computed slab by slab (bounded memory on full-resolution grids); None without a fixed mask.
    """
    from graphreg.datasets.breathing import jacobian_volume
    from graphreg.ops.metrics import LOG_JACOBIAN_FLOOR
    from graphreg.apps.viz.slices import on_grid

    if data.fixed_mask is None:
        return None
    inside = np.asarray(on_grid(data.fixed_mask, data.field.grid, 0, "nearest").array) > 0
    if not inside.any():
        return None
    jac = jacobian_volume(data.field)[inside].astype(np.float64)
    log_jac = np.log(np.clip(jac, LOG_JACOBIAN_FLOOR, None))
    return {"std_log_jacobian": float(log_jac.std()), "folding_percent": float((jac <= 0).mean() * 100.0),
            "jacobian_min": float(jac.min()), "jacobian_max": float(jac.max()), "voxels": int(inside.sum())}


def summary_tables(data: ResultData) -> dict[str, dict]:
    """The report's tables, ``{title: {row name: value}}`` (plain JSON-like values)."""
    from graphreg.ops.metrics import summarize_errors

    report = data.report
    tables: dict[str, dict] = {}
    overview = {"method": report.get("method"), "graphreg version": report.get("graphreg_version"),
                "wall time of the command (s)": report.get("seconds_wall"),
                "registration pipeline (s)": report.get("seconds_total"), "result folder": str(data.result_dir),
                "field grid": data.field.grid.describe()}
    tables["Overview"] = {k: v for k, v in overview.items() if v is not None}
    if data.tre_before_mm is not None:
        rows = {"before": summarize_errors(data.tre_before_mm)}
        if data.tre_after_mm is not None:
            rows["after"] = summarize_errors(data.tre_after_mm)
        tables["Landmark error (TRE, mm)"] = rows
    jacobian = {}
    if isinstance(report.get("jacobian"), dict):
        jacobian["whole grid (report.json)"] = report["jacobian"]
    masked = jacobian_in_mask(data)
    if masked is not None:
        jacobian["inside fixed lung mask"] = masked
    if jacobian:
        tables["Jacobian determinant"] = jacobian
    quality = report.get("quality")
    if isinstance(quality, dict):
        rows = {"status": quality.get("status"), "reasons": "; ".join(quality.get("reasons") or []) or "none"}
        for check in quality.get("checks") or []:
            rows[check["name"]] = f"{check['verdict']}: {_format(check['value'])} (limit {check['limit']})"
        tables["Quality checks"] = rows
    if isinstance(report.get("prealign"), dict):
        tables["Pre-alignment"] = report["prealign"]
    if isinstance(report.get("timings_s"), dict):
        tables["Timings (s)"] = stage_timings(report)
    if isinstance(report.get("keypoint_uncertainty_mm"), dict):
        tables["Keypoint spread (mm, uncalibrated)"] = report["keypoint_uncertainty_mm"]
    if isinstance(report.get("uncertainty_map"), dict):
        tables["Uncertainty map (mm)"] = _flatten(report["uncertainty_map"])
    if data.keypoints_mm is not None:
        magnitude = np.linalg.norm(data.keypoint_displacements_mm, axis=1)
        tables["Keypoints"] = {"count": len(magnitude), "mean |u| (mm)": float(magnitude.mean()),
                               "max |u| (mm)": float(magnitude.max())}
    if isinstance(report.get("config"), dict):
        tables["Parameters (config)"] = _flatten(report["config"])
    shown = {"method", "graphreg_version", "seconds_total", "seconds_wall", "jacobian", "timings_s",
             "keypoint_uncertainty_mm", "uncertainty_map", "config", "quality", "prealign"}
    other = {key: value for key, value in report.items() if key not in shown}
    if other:
        tables["Other entries of report.json"] = _flatten(other)
    tables["Sources"] = dict(data.sources)
    return tables


#: what each key of ``report.json["timings_s"]`` measured, in words
STAGE_LABELS = {
    "read": "reading the images",
    "preprocess": "preprocessing (resampling, lung masks, crop)",
    "keypoints": "keypoints (Förstner)",
    "mind": "MIND-SSC features",
    "search_1": "correlation search, coarse level",
    "search_2": "correlation search, fine level",
    "densify": "densification (dense field from the keypoints)",
    "warp": "warping the moving features",
    "mind_io": "MIND features for instance optimisation",
    "instance_opt": "instance optimisation (half resolution)",
    "instance_opt_refine": "instance optimisation (full resolution)",
    "optimise": "optimisation",
    "network": "network inference",
    "total": "registration pipeline, total",
    "checks": "quality checks",
    "write": "writing the outputs",
}


def stage_timings(report: dict) -> dict:
    """``report.json``'s ``timings_s`` with each stage named in words (:data:`STAGE_LABELS`; an
    unknown key is shown with spaces for underscores), in the order recorded, then the wall time
    of the whole command (``seconds_wall``) when known."""
    rows = {STAGE_LABELS.get(key, key.replace("_", " ")): value for key, value in report["timings_s"].items()}
    if report.get("seconds_wall") is not None:
        rows["whole command (reading, registering, writing)"] = report["seconds_wall"]
    return rows


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


# ---------------------------------------------------------------------- HTML
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.85em; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0.8em 0; } figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; border: 1px solid #eee; } .scenes img { max-width: 49%; }
.status-ok { background: #e6f4e6; padding: 6px; } .status-suspect { background: #fff3cd; padding: 6px; }
.status-failed { background: #f8d7da; padding: 6px; }
"""
_CAPTIONS = {
    "images": "Fixed, moving (before registration) and warped moving image; yellow: fixed lung mask.",
    "checkerboard": "Checkerboards of the fixed image with the moving image before and after registration.",
    "difference": "Intensity difference to the fixed image before and after registration (same scale).",
    "displacement": "Displacement magnitude over the fixed image; arrows: in-plane displacement at true length.",
    "jacobian": "Jacobian determinant of x + u(x): blue compression, red expansion, green folding (J <= 0).",
    "tre": "Landmark target registration error before and after registration.",
    "uncertainty": "Uncertainty map: the predicted error (mm) of the graph stage (keypoint displacements densified, "
                   "before instance optimisation), inside the fixed lungs; it does not predict the final field's "
                   "error. Its 90 % bound is report.json's uncertainty_map.p90_bound.",
}


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        if len(value) > 12:
            return f"[{len(value)} values]"
        return "[" + ", ".join(_format(v) for v in value) + "]"
    return str(value)


def _table(rows: dict) -> str:
    values = list(rows.values())
    if values and all(isinstance(v, dict) for v in values):  # one row per entry, one column per key
        columns = list(dict.fromkeys(k for v in values for k in v))
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join(
            f"<tr><th>{html.escape(str(name))}</th>"
            + "".join(f'<td class="num">{html.escape(_format(row.get(c, "")))}</td>' for c in columns)
            + "</tr>" for name, row in rows.items())
        return f"<table><tr><th></th>{head}</tr>{body}</table>"
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_format(v))}</td></tr>"
                   for k, v in rows.items())
    return f"<table>{body}</table>"


def _keypoint_view(data: ResultData, scenes: dict) -> Optional[str]:
    """The interactive view of the keypoints (:mod:`.webview`), with the lung surface of the
    keypoint scene when there is one; None without keypoints."""
    from graphreg.apps.viz.webview import keypoint_view

    if data.keypoints_mm is None:
        return None
    surface = next((item.geometry for scene in scenes.values() for item in scene.items
                    if item.name == "lung_surface"), None)
    return keypoint_view(data.keypoints_mm, data.keypoint_displacements_mm, data.keypoint_uncertainty_mm, surface)


def _image_tag(path: Path, page_dir: Path, embed: bool, alt: str) -> str:
    if embed:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        source = f"data:image/png;base64,{data}"
    else:
        source = Path(os.path.relpath(path, page_dir)).as_posix()
    return f'<img src="{html.escape(source)}" alt="{html.escape(alt)}">'


def write_report(result_dir, out_dir=None, *, data: Optional[ResultData] = None,
                 scenes: Optional[dict] = None, figures: Optional[dict] = None,
                 rendered: Optional[dict] = None, embed: bool = True, render_3d: bool = True,
                 scene_size=(960, 720), views=("anterior", "left"), backend: str = "auto",
                 slices: Optional[dict] = None, dpi: int = 100, **inputs) -> Path:
    """Write ``report.html`` for a result folder, with its figures.

    Args:
        result_dir: the registration result folder.
        out_dir: where ``report.html`` and the PNGs go (default ``result_dir/viz``).
        data: an already loaded :class:`ResultData` (else :func:`load_result` with ``inputs``).
        scenes: already built scenes (else :func:`result_scenes`).
        figures: already written slice figures ``{name: PNG path}`` with names as
            :func:`make_figures` returns them (else :func:`make_figures` writes them).
        rendered: already rendered scenes ``{"<scene>_<view>": PNG path}`` as
            :func:`render_scenes` returns them (else it renders them when ``render_3d``).
        embed: put the PNGs into the page as base64 (one self-contained file); otherwise the
            page links the PNGs next to it by relative paths.
        render_3d: render the 3D scenes (Open3D off screen, see :mod:`.pointclouds`).
        scene_size, views, backend: passed to :func:`render_scenes`.
        slices: ``{plane: display index}`` overrides for the slice figures.
        dpi: resolution of the slice figures.
        **inputs: ``fixed``, ``moving``, ``fixed_mask``, ``moving_mask``, ``fixed_landmarks``,
            ``moving_landmarks`` paths for :func:`load_result`.

    Returns:
        The path of ``report.html``.
    """
    result_dir = Path(result_dir)
    unknown = set(inputs) - set(INPUT_NAMES)
    if unknown:
        raise GraphregError(f"inputs: expected keyword arguments from {INPUT_NAMES}, got {sorted(unknown)}")
    if data is None:
        data = load_result(result_dir, **inputs)
    out = Path(out_dir) if out_dir is not None else result_dir / "viz"
    out.mkdir(parents=True, exist_ok=True)
    if figures is None:
        figures = make_figures(data, out / "figures", slices, dpi)
    unknown = set(figures) - set(_CAPTIONS)
    if unknown:
        raise GraphregError(f"figures: expected names from {sorted(_CAPTIONS)}, got {sorted(unknown)}")
    if scenes is None and render_3d:
        scenes = result_scenes(data)
    if rendered is None:
        rendered = render_scenes(scenes, out / "figures", scene_size, views, backend)[0] if render_3d else {}
    parts = [f"<h1>Registration report: {html.escape(str(data.report.get('method', 'result')))} "
             f"&mdash; {html.escape(result_dir.name)}</h1>"]
    tables = summary_tables(data)
    if "Quality checks" in tables:
        status = str(tables["Quality checks"]["status"])
        parts.append(f"<p class=\"status-{html.escape(status)}\"><b>Status: {html.escape(status)}</b> &mdash; "
                     f"{html.escape(str(tables['Quality checks']['reasons']))}</p>")
    for title in ("Overview", "Quality checks", "Pre-alignment", "Landmark error (TRE, mm)", "Jacobian determinant", "Timings (s)",
                  "Keypoints", "Keypoint spread (mm, uncalibrated)", "Uncertainty map (mm)"):
        if title in tables:
            parts.append(f"<h2>{html.escape(title)}</h2>{_table(tables[title])}")
    for name, path in figures.items():
        parts.append(f"<h2>{html.escape(name.capitalize())}</h2><figure>"
                     f"{_image_tag(path, out, embed, name)}"
                     f"<figcaption>{html.escape(_CAPTIONS[name])}</figcaption></figure>")
    if rendered:
        parts.append("<h2>3D scenes</h2><div class=\"scenes\">")
        for name, path in rendered.items():
            parts.append(_image_tag(path, out, embed, f"scene {name}"))
        parts.append("</div><p>Fixed lung surface (translucent), world mm (LPS); views "
                     f"{html.escape(', '.join(views))} with the head at the top.</p>")
    elif render_3d:
        parts.append("<h2>3D scenes</h2><p>No keypoints or landmark pairs to draw.</p>")
    view = _keypoint_view(data, scenes or {})
    if view is not None:
        parts.append("<h2>Interactive 3D view</h2><p>Fixed keypoints (colour: displacement magnitude or "
                     "uncertainty; lines: displacement fixed &rarr; moving) and the fixed lung surface, world mm. "
                     "Works offline; the data are in this page.</p>" + view)
    for title in ("Parameters (config)", "Other entries of report.json", "Sources"):
        if title in tables:
            parts.append(f"<h2>{html.escape(title)}</h2>{_table(tables[title])}")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>graphreg report {html.escape(result_dir.name)}</title><style>{_CSS}</style></head>"
            "<body>\n" + "\n".join(parts) + "\n</body></html>\n")
    from graphreg.io import atomic_write_text

    return atomic_write_text(out / "report.html", page)
