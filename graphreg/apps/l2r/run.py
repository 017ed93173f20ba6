"""Register every pair of a Learn2Reg split and write the submission: ``graphreg l2r run``.

Output folder ``DIR``::

    DIR/submission/disp_<id>.nii.gz   one per pair, in the task's format (below); zip this folder
    DIR/summary.csv                   one row per pair (:data:`SUMMARY_COLUMNS`), rewritten after each
    DIR/run.json                      method and configuration of the run (a resumed run must match)
    DIR/results/<id>/                 the full result folder of each pair (``keep_results=True``)
    DIR/<id>.error.txt                traceback of a failed pair (removed when it later succeeds)

Convention (submission file, as the official evaluation reads it):
    ``disp_<id>.nii.gz``: float32 NIfTI array ``(X, Y, Z, 3)`` = the fixed image's nibabel array
    shape, displacement in voxels along ``(i, j, k)``, fixed -> moving: fixed voxel ``p`` maps to
    moving voxel ``p + disp(p)``. When the moving image's grid differs from the fixed one, the
    displacement is expressed in moving voxel indices (what the official TRE assumes); on
    Learn2Reg's data both grids are the same and this is graphreg's field in fixed voxels.
    NIfTI has no half-precision type (the float16 of the 2020/2021 challenges was ``.npz``).

    Resumable: a pair whose submission file exists with the right shape is skipped (its metrics
    are recomputed from the file). The file is written atomically and last, after the result
    folder, so an interrupted pair is run again. A failing pair is recorded and the others go on.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from graphreg.errors import GraphregError
from graphreg.apps.l2r.dataset import L2RDataset, L2RPair, read_dataset
from graphreg.apps.l2r.evaluate import METRICS, check_submission_file, evaluate_pair

#: columns of ``summary.csv``
SUMMARY_COLUMNS = ("id", "status", "seconds", *METRICS, "tre_graphreg_mm", "submission", "result", "error")


@dataclass
class L2RRunResult:
    """What :func:`run_l2r` did: ``rows`` (one per pair, :data:`SUMMARY_COLUMNS`), the folders."""

    rows: list
    summary_path: Path
    submission_dir: Path

    @property
    def counts(self) -> dict:
        return {status: sum(row["status"] == status for row in self.rows) for status in ("ok", "skipped", "failed")}

    @property
    def n_failed(self) -> int:
        return self.counts["failed"]


def submission_field(field, moving_grid):
    """``field`` (fixed -> moving, fixed voxels) with its displacement in moving voxel indices.

    Returns ``field`` itself when ``moving_grid`` is the fixed grid; else the field whose
    ``to_l2r_array`` holds ``m(p) - p`` with ``m(p)`` the moving voxel of ``p + u(p)``.
    """
    import torch

    from graphreg.core.field import DisplacementField

    if field.grid.same_as(moving_grid):
        return field
    # fixed voxel (z, y, x) -> moving voxel is affine: offset + v @ steps (through world coordinates)
    basis = np.vstack([np.zeros((1, 3)), np.eye(3)])
    mapped = moving_grid.world_to_voxel(field.grid.voxel_to_world(basis))
    offset, steps = mapped[0], mapped[1:] - mapped[0]
    u = field.displacement.detach()[0].cpu().to(torch.float64).numpy()  # (3, D, H, W)
    voxels = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in field.grid.shape), indexing="ij"))
    moved = np.tensordot(steps.T, voxels + u, axes=1) + offset[:, None, None, None]
    return DisplacementField(torch.from_numpy(moved - voxels)[None].to(field.dtype), field.grid)


def _tre_graphreg(result, pair: L2RPair, fixed_grid, moving_grid) -> Optional[float]:
    """Mean TRE (mm, world) of the keypoints mapped by ``result.transform_points``."""
    from graphreg.io.landmarks import read_landmarks
    from graphreg.ops.metrics import landmark_errors

    if pair.fixed_keypoints is None or pair.moving_keypoints is None:
        return None
    fixed = read_landmarks(pair.fixed_keypoints, fmt="l2r").to_world(fixed_grid).points
    moving = read_landmarks(pair.moving_keypoints, fmt="l2r").to_world(moving_grid).points
    if fixed.shape != moving.shape:
        return None
    return float(landmark_errors(result.transform_points(fixed), moving).mean())


def _one_line(error: BaseException) -> str:
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _row(pair: L2RPair, status: str, submission: Path, metrics: Optional[dict] = None, **more) -> dict:
    row = {column: None for column in SUMMARY_COLUMNS}
    row.update(metrics or {})
    row.update(id=pair.id, status=status, submission=str(submission) if status != "failed" else "", **more)
    return row


def register_l2r_pair(pair: L2RPair, out_dir: Path, method: str, config: dict, model=None, device=None,
                      labels: Sequence[int] = (), keep_results: bool = False) -> dict:
    """Register one pair, write its submission file (and result folder), return its summary row.

    Never raises for a failure of the pair: the traceback goes to ``out_dir/<id>.error.txt``.
    """
    from graphreg.api import register
    from graphreg.io.atomic import atomic_write_text
    from graphreg.io.fields import write_l2r_displacement
    from graphreg.io.images import read_image

    disp_path = out_dir / "submission" / pair.disp_name
    start = time.perf_counter()
    try:
        fixed, moving = read_image(pair.fixed), read_image(pair.moving)
        result = register(fixed, moving, pair.fixed_mask, pair.moving_mask, method=method, config=config,
                          device=device, model=model)
        tre_graphreg = _tre_graphreg(result, pair, fixed.grid, moving.grid)
        if keep_results:
            inputs = {"fixed": str(pair.fixed), "moving": str(pair.moving)}
            result.save(out_dir / "results" / pair.id, overwrite=True, inputs=inputs, l2r_pair=pair.id,
                        tre_graphreg_mm=tre_graphreg)
        write_l2r_displacement(submission_field(result.field, moving.grid), disp_path, precision="float32")
        metrics = evaluate_pair(pair, disp_path, labels)
    except Exception as error:  # noqa: BLE001 - one pair's failure must not stop the others
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        atomic_write_text(out_dir / f"{pair.id}.error.txt", f"pair {pair.id} ({pair.fixed_rel} <- {pair.moving_rel})\n{text}")
        return _row(pair, "failed", disp_path, seconds=time.perf_counter() - start, error=_one_line(error))
    (out_dir / f"{pair.id}.error.txt").unlink(missing_ok=True)
    return _row(pair, "ok", disp_path, metrics, seconds=time.perf_counter() - start, tre_graphreg_mm=tre_graphreg,
                result=str(out_dir / "results" / pair.id) if keep_results else "")


def write_summary(rows: Sequence[dict], path: Path) -> Path:
    """``rows`` as CSV with :data:`SUMMARY_COLUMNS` (floats to 6 significant digits), atomically."""
    from graphreg.io.tables import write_csv_table

    return write_csv_table(rows, SUMMARY_COLUMNS, path, digits=6)


def _check_run_record(out_dir: Path, record: dict) -> None:
    """Refuse to add pairs to a folder made with another method or configuration."""
    path = out_dir / "run.json"
    if not path.is_file():
        return
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        earlier = None
    if earlier == record:
        return
    earlier = earlier if isinstance(earlier, dict) else {}
    differ = [key for key in record if earlier.get(key) != record[key]]
    raise GraphregError(f"out: {out_dir} holds a run with other settings (differing: {', '.join(differ)}; its "
                        f"run.json has method {earlier.get('method')!r}, this run {record['method']!r}); "
                        f"use another --out")


def run_l2r(dataset_json: Union[str, os.PathLike, L2RDataset], out_dir: Union[str, os.PathLike],
            split: str = "validation", method: str = "corrfield", config: Any = None,
            model: Union[str, os.PathLike, None] = None, device: Optional[str] = None,
            pairs: Optional[Sequence[str]] = None, keep_results: bool = False,
            progress: Optional[Callable[[str], None]] = None) -> L2RRunResult:
    """Register the pairs of a Learn2Reg split into ``out_dir`` (see the module docstring).

    Args:
        dataset_json: the task's dataset.json (or a dataset already read for ``split``).
        split: ``"validation"``, ``"test"`` or ``"training"`` (see :data:`graphreg.apps.l2r.SPLITS`).
        method, config, model, device: as for :func:`graphreg.register`.
        pairs: ids (``"0001_0001"``) of the pairs to run; None: all of the split.
        keep_results: also save each pair's full result folder in ``out_dir/results/<id>``.
        progress: receives one line per finished pair.

    Raises:
        InputFileError / GeometryError: a bad dataset, an unknown pair id; ConfigError: a bad
            configuration; GraphregError: ``out_dir`` is a file or holds another method's run.
            All are raised before anything is written.
    """
    from graphreg.core.config import load_config
    from graphreg.io.atomic import atomic_write_text
    from graphreg.methods.registry import method_info

    method_info(method)
    dataset = dataset_json if isinstance(dataset_json, L2RDataset) else read_dataset(dataset_json, split)
    selected = dataset.select(pairs)
    settings = load_config(config).to_dict()
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise GraphregError(f"out: {out_dir} exists and is not a folder")
    record = {"dataset": str(dataset.path.resolve()), "split": dataset.split, "method": method,
              "model": None if model is None else str(Path(model).resolve()), "config": settings}
    _check_run_record(out_dir, record)
    submission_dir = out_dir / "submission"
    submission_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "run.json", json.dumps(record, indent=2))
    summary_path = out_dir / "summary.csv"

    rows: dict[str, dict] = {}
    todo: list[L2RPair] = []
    for pair in selected:
        disp_path = submission_dir / pair.disp_name
        try:
            check_submission_file(pair, disp_path)
        except GraphregError:
            todo.append(pair)
            continue
        rows[pair.id] = _row(pair, "skipped", disp_path, evaluate_pair(pair, disp_path, dataset.labels))
    write_summary([rows[p.id] for p in selected if p.id in rows], summary_path)
    if progress and len(todo) < len(selected):
        progress(f"{len(selected) - len(todo)} of {len(selected)} pairs already done; running {len(todo)}")
    for pair in todo:
        row = register_l2r_pair(pair, out_dir, method, settings, model=model, device=device,
                                labels=dataset.labels, keep_results=keep_results)
        rows[pair.id] = row
        write_summary([rows[p.id] for p in selected if p.id in rows], summary_path)
        if progress:
            tre = f", TRE_kp {row['TRE_kp']:.2f} mm" if row.get("TRE_kp") is not None else ""
            progress(f"[{len(rows)}/{len(selected)}] {pair.id}: {row['status']} {row['seconds']:.1f} s{tre}"
                     + (f" ({row['error']})" if row["error"] else ""))
    return L2RRunResult([rows[p.id] for p in selected], summary_path, submission_dir)


__all__ = ["L2RRunResult", "SUMMARY_COLUMNS", "register_l2r_pair", "run_l2r", "submission_field", "write_summary"]
