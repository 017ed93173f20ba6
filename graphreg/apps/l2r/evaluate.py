"""The official Learn2Reg metrics of a submission folder, per pair and aggregated.

Re-implements ``evaluation/evaluation.py`` of github.com/MDL-UzL/L2R (eval_version 2.0) on a task
folder read by :func:`graphreg.apps.l2r.dataset.read_dataset`:

=======================  ====================================================================
metric (official name)   definition
=======================  ====================================================================
``TRE_kp`` / ``TRE_lm``  mean over the pair's keypoints / landmarks of
                         ``|| (p + disp(p) - q) * spacing_moving ||`` mm, ``disp`` sampled at
                         the fixed points ``p`` by cubic spline (``map_coordinates`` order 3,
                         zero outside), ``q`` the moving points, spacing from the moving
                         image's NIfTI header (:func:`graphreg.ops.metrics.learn2reg_evaluate`)
``LogJacDetStd``         SDlogJ on the interior (2 voxels cropped per face), official ``+3``
                         quirk kept (:func:`graphreg.ops.metrics.learn2reg_jacobian`)
``LogJacDetStd_masked``  the same inside the fixed mask (the official ``masked_evaluation``,
                         used for NLST), when the fixed image has a mask
``DSC``                  mean over labels of Dice(fixed labels, moving labels warped by
                         nearest neighbour through ``disp``); a label absent from the fixed or
                         the moving map counts as NaN and is left out of the mean
=======================  ====================================================================

Also per pair: ``TRE_kp_initial`` / ``TRE_lm_initial`` (zero displacement) and
``folding_percent`` (interior voxels with ``J <= 0``; the official ``num_foldings`` is counted
after the ``+3`` and is always 0). Aggregates per metric: ``mean``, ``std`` (``ddof=0``) and
``30`` (30th percentile) over the pairs, as the official script writes them.

Every submission file is checked (present, readable, shape ``(X, Y, Z, 3)`` of the fixed image)
before any metric is computed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from graphreg.errors import GeometryError, InputFileError
from graphreg.apps.l2r.dataset import L2RDataset, L2RPair, read_dataset

#: per-pair keys in the order tables show them
METRICS = ("TRE_kp_initial", "TRE_kp", "TRE_lm_initial", "TRE_lm", "LogJacDetStd", "LogJacDetStd_masked",
           "DSC", "folding_percent")


def _nifti(path: Path):
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as error:  # nibabel raises many types for a bad file
        raise InputFileError(f"{path}: unreadable NIfTI file ({error})") from error


def check_submission_file(pair: L2RPair, path: Union[str, os.PathLike]) -> None:
    """Raise unless ``path`` is a readable displacement of ``pair``'s fixed image shape + ``(3,)``.

    Only the header is read.

    Raises:
        InputFileError: missing or unreadable file.
        GeometryError: wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"submission: {path.name} (pair {pair.id}) not found in {path.parent}")
    expected = tuple(_nifti(pair.fixed).shape) + (3,)
    shape = tuple(_nifti(path).shape)
    if shape != expected:
        raise GeometryError(f"submission: {path.name}: expected shape (X, Y, Z, 3) = {expected} "
                            f"(the fixed image {Path(pair.fixed_rel).name}), got {shape}")


def _points(path: Path) -> np.ndarray:
    """A Learn2Reg CSV as ``(N, 3)`` 0-based voxel ``(i, j, k)``."""
    from graphreg.io.landmarks import read_landmarks

    return read_landmarks(path, fmt="l2r").points[:, ::-1]


def _tre(name: str, fixed: Optional[Path], moving: Optional[Path], disp: np.ndarray, spacing) -> dict:
    from graphreg.ops.metrics import learn2reg_evaluate

    if fixed is None or moving is None:
        return {}
    p, q = _points(fixed), _points(moving)
    if p.shape != q.shape:
        raise InputFileError(f"{fixed.name} and {moving.name}: expected paired rows, got {len(p)} and {len(q)} points")
    tre = learn2reg_evaluate(disp, p, q, spacing)["tre_mm"]
    initial = np.linalg.norm((p - q) * np.asarray(spacing, dtype=np.float64), axis=1)
    return {f"{name}_initial": float(initial.mean()), name: float(tre.mean())}


def _dice(pair: L2RPair, disp: np.ndarray, labels: Sequence[int]) -> dict:
    from scipy.ndimage import map_coordinates

    from graphreg.ops.metrics import dice

    if pair.fixed_labels is None or pair.moving_labels is None:
        return {}
    fixed = np.asarray(_nifti(pair.fixed_labels).get_fdata())
    moving = np.asarray(_nifti(pair.moving_labels).get_fdata())
    if fixed.shape != disp.shape[:3] or moving.shape != disp.shape[:3]:
        raise GeometryError(f"labels of pair {pair.id}: expected shape {disp.shape[:3]}, got {fixed.shape} "
                            f"and {moving.shape}")
    identity = np.stack(np.meshgrid(*(np.arange(n) for n in fixed.shape), indexing="ij"))
    warped = map_coordinates(moving, identity + disp.transpose(3, 0, 1, 2), order=0)
    labels = list(labels) or [int(v) for v in np.union1d(np.unique(fixed), np.unique(moving)) if v != 0]
    scores = [dice(fixed, warped, [label])[label] if (fixed == label).any() and (moving == label).any()
              else float("nan") for label in labels]
    return {"DSC": float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")}


def evaluate_pair(pair: L2RPair, disp_path: Union[str, os.PathLike], labels: Sequence[int] = ()) -> dict:
    """The official metrics of one pair's submission file (see the module docstring).

    Returns:
        the metrics of :data:`METRICS` that the pair's files allow (TRE needs keypoints /
        landmarks of both images, DSC label maps, the masked SDlogJ a fixed mask).
    """
    from graphreg.ops.metrics import learn2reg_jacobian

    check_submission_file(pair, disp_path)
    disp = np.asarray(_nifti(Path(disp_path)).get_fdata(), dtype=np.float64)
    spacing = tuple(float(s) for s in _nifti(pair.moving).header.get_zooms()[:3])
    result: dict = {}
    result.update(_tre("TRE_kp", pair.fixed_keypoints, pair.moving_keypoints, disp, spacing))
    result.update(_tre("TRE_lm", pair.fixed_landmarks, pair.moving_landmarks, disp, spacing))
    jacobian = learn2reg_jacobian(disp)
    result["LogJacDetStd"] = jacobian["sdlogj"]
    result["folding_percent"] = jacobian["folding_percent"]
    if pair.fixed_mask is not None:
        mask = np.asarray(_nifti(pair.fixed_mask).get_fdata())
        result["LogJacDetStd_masked"] = learn2reg_jacobian(disp, mask)["sdlogj"]
    result.update(_dice(pair, disp, labels))
    return {key: result[key] for key in METRICS if key in result}


def aggregate(cases: dict) -> dict:
    """``{metric: {"mean", "std", "30"}}`` over the pairs that have the metric."""
    out = {}
    for metric in METRICS:
        values = np.array([case[metric] for case in cases.values() if metric in case], dtype=np.float64)
        if values.size:
            out[metric] = {"mean": float(values.mean()), "std": float(values.std()),
                           "30": float(np.quantile(values, 0.3)), "n": int(values.size)}
    return out


def evaluate_submission(dataset_json: Union[str, os.PathLike, L2RDataset], submission_dir: Union[str, os.PathLike],
                        split: str = "validation", pairs: Optional[Sequence[str]] = None) -> dict:
    """Evaluate every pair of ``split`` (or the ``pairs`` ids) from ``submission_dir/disp_*.nii.gz``.

    Returns:
        ``{"name", "split", "n_pairs", "cases": {id: metrics}, "aggregates": {metric: {mean, std,
        30, n}}}``.

    Raises:
        InputFileError / GeometryError: a bad dataset (see :func:`read_dataset`), a missing
            submission folder or file, a file of the wrong shape; all checked before any metric.
    """
    dataset = dataset_json if isinstance(dataset_json, L2RDataset) else read_dataset(dataset_json, split)
    submission_dir = Path(submission_dir)
    if not submission_dir.is_dir():
        raise InputFileError(f"submission: {submission_dir} is not a folder of disp_*.nii.gz files")
    selected = dataset.select(pairs)
    for pair in selected:
        check_submission_file(pair, submission_dir / pair.disp_name)
    cases = {pair.id: evaluate_pair(pair, submission_dir / pair.disp_name, dataset.labels) for pair in selected}
    return {"name": dataset.name, "split": dataset.split, "n_pairs": len(cases), "cases": cases,
            "aggregates": aggregate(cases)}


def result_table(result: dict) -> str:
    """Plain-text table of :func:`evaluate_submission`'s result: one row per pair, then the mean."""
    metrics = [m for m in METRICS if m in result["aggregates"]]
    width = max([len(pair_id) for pair_id in result["cases"]] + [4])
    lines = [f"{result['name']} {result['split']}: {result['n_pairs']} pairs",
             " ".join([f"{'pair':<{width}}"] + [f"{m:>19}" for m in metrics])]
    for pair_id, case in result["cases"].items():
        lines.append(" ".join([f"{pair_id:<{width}}"] + [f"{case[m]:>19.4f}" if m in case else f"{'-':>19}"
                                                          for m in metrics]))
    lines.append(" ".join([f"{'mean':<{width}}"] + [f"{result['aggregates'][m]['mean']:>19.4f}" for m in metrics]))
    return "\n".join(lines)


__all__ = ["METRICS", "aggregate", "check_submission_file", "evaluate_pair", "evaluate_submission", "result_table"]
