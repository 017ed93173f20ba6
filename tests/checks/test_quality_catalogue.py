"""Catalogue of realistic ways a registration goes wrong, made from the bundled demo pair (the real
POPI CT at 3 mm with a known breathing motion): each case either registers correctly or ends
``suspect``/``failed``; none ends ``ok`` with a wrong field.

Run as a script (``python tests/checks/test_quality_catalogue.py``) to print the table of every case.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from graphreg.api import register  # noqa: E402
from graphreg.datasets.pairs import read_pair  # noqa: E402
from graphreg.core.field import DisplacementField  # noqa: E402
from graphreg.core.geometry import Grid  # noqa: E402
from graphreg.ops.metrics import landmark_errors  # noqa: E402
from graphreg.core.volume import Volume  # noqa: E402

DEMO = Path(__file__).resolve().parents[2] / "assets" / "demo"
#: a fast configuration for the 3 mm demo (the shipped lowres_3mm preset with fewer Adam steps)
FAST = {"preprocess": {"spacing_mm": 3.0}, "keypoints": {"nms_size": 3},
        "levels": [{"radius": 6, "step": 2.0}, {"radius": 3, "step": 1.0}],
        "instance_opt": {"iterations": 10, "refine": {"iterations": 0}}}
#: a result within this mean landmark error (mm) "registers correctly" (before: 10.6 mm)
CORRECT_MM = 2.5


@dataclass
class Case:
    """One catalogue entry: inputs, landmarks for the TRE (None: unknown) and the expectation."""

    fixed: Volume
    moving: Volume
    fixed_points: Optional[np.ndarray]
    moving_points: Optional[np.ndarray]
    expect: str  # "correct" (and any status), "not ok" (suspect or failed), "failed"
    moving_mask_fn: Optional[Callable[[Volume], Volume]] = None  # stands in for the automatic moving mask


def _shifted(volume: Volume, offset_mm) -> Volume:
    grid = volume.grid
    return Volume(volume.array, Grid(grid.shape, grid.spacing, tuple(np.asarray(grid.origin) + offset_mm),
                                     grid.direction))


def _one_lung(mask: Volume) -> Volume:
    """The automatic moving mask gone wrong: only the lung on the high-x side kept."""
    array = mask.array.copy()
    array[..., : array.shape[2] // 2] = 0
    return Volume(array, mask.grid)


def _amplified_motion(pair, factor: float):
    """Moving image = fixed warped by ``factor`` x the demo's breathing motion, and its landmarks."""
    from graphreg.datasets.breathing import invert_field

    truth = pair.dense_gt_field()
    pull = DisplacementField(truth.displacement * factor, truth.grid)  # moving'(y) = fixed(y + pull(y))
    moving = pull.warp(pair.fixed, "linear", -1000.0)
    inverse = invert_field(pull)  # fixed -> moving' (fixed point p lies at p + inverse(p))
    return Volume(moving.array.astype(np.int16), pair.fixed.grid), inverse.transform_points(pair.fixed_landmarks_mm)


def catalogue() -> dict[str, Case]:
    """The cases, by name."""
    pair = read_pair(DEMO)
    fixed, moving = pair.fixed, pair.moving
    fp, mp = pair.fixed_landmarks_mm, pair.moving_landmarks_mm
    cases = {"demo (automatic masks)": Case(fixed, moving, fp, mp, "correct")}
    cases["moving mask keeps one lung"] = Case(fixed, moving, fp, mp, "correct", moving_mask_fn=_one_lung)
    banded = moving.array.copy()
    banded[:3] = -1024  # the lung base cut by a -1024 HU band at the end of the field of view
    cases["lung base in a -1024 HU band"] = Case(fixed, Volume(banded, moving.grid), fp, mp, "correct")
    offset = np.array([60.0, -40.0, 50.0])
    cases["positioning offset 88 mm"] = Case(fixed, _shifted(moving, offset), fp, mp + offset, "correct")
    offset = np.array([0.0, 0.0, 150.0])
    cases["origin offset 150 mm"] = Case(fixed, _shifted(moving, offset), fp, mp + offset, "correct")
    cases["fixed and moving swapped"] = Case(moving, fixed, mp, fp, "correct")
    lungs = np.asarray(pair.moving_mask.array > 0)
    from scipy import ndimage

    filled = moving.array.copy()
    rng = np.random.default_rng(0)
    region = ndimage.binary_dilation(lungs, iterations=2)
    filled[region] = (40 + 20 * rng.standard_normal(int(region.sum()))).astype(filled.dtype)
    cases["moving with no lungs in view"] = Case(fixed, Volume(filled, moving.grid), None, None, "failed")
    far, far_points = _amplified_motion(pair, 3.0)
    cases["motion 3x the breathing (past the search)"] = Case(fixed, far, fp, far_points, "correct or not ok")
    return cases


def run_case(case: Case, monkeypatch=None):
    """Register one case; returns (status, TRE mean mm or None, the result)."""
    if case.moving_mask_fn is not None:
        import graphreg.ops.lungmask as lungmask

        original = lungmask.lung_mask

        def patched(volume, *args, **kwargs):
            mask = original(volume, *args, **kwargs)
            return case.moving_mask_fn(mask) if volume is case.moving else mask

        if monkeypatch is not None:
            monkeypatch.setattr(lungmask, "lung_mask", patched)
        else:
            lungmask.lung_mask = patched
    try:
        result = register(case.fixed, case.moving, config=FAST, progress=lambda line: None)
    finally:
        if case.moving_mask_fn is not None and monkeypatch is None:
            lungmask.lung_mask = original
    tre = None
    if case.fixed_points is not None:
        tre = float(landmark_errors(result.transform_points(case.fixed_points), case.moving_points).mean())
    return result.status, tre, result


def _holds(case: Case, status: str, tre: Optional[float]) -> bool:
    correct = tre is not None and tre <= CORRECT_MM
    if status == "ok" and not correct:
        return False  # the one outcome that must never happen
    return {"correct": correct, "failed": status == "failed",
            "correct or not ok": correct or status != "ok"}[case.expect]


#: the cases' names, in :func:`catalogue`'s order
CASE_NAMES = ("demo (automatic masks)", "moving mask keeps one lung", "lung base in a -1024 HU band",
              "positioning offset 88 mm", "origin offset 150 mm", "fixed and moving swapped",
              "moving with no lungs in view", "motion 3x the breathing (past the search)")


@pytest.fixture(scope="module")
def cases():
    built = catalogue()
    assert tuple(built) == CASE_NAMES
    return built


@pytest.mark.slow
@pytest.mark.parametrize("name", CASE_NAMES)
def test_catalogue_case(name, cases, monkeypatch):
    case = cases[name]
    status, tre, result = run_case(case, monkeypatch)
    assert _holds(case, status, tre), (name, status, tre, result.extras["quality"]["reasons"])


def main() -> None:
    print("| case | mask checks | pre-alignment | outcome checks not ok | TRE mm | status |")
    print("|---|---|---|---|---|---|")
    for name, case in catalogue().items():
        status, tre, result = run_case(case)
        quality = result.extras["quality"]
        masks = [c for c in quality["checks"] if c["name"].split(".")[0] in ("fixed_mask", "moving_mask", "masks")]
        failed_masks = [f"{c['name']}={c['value']}" for c in masks if c["verdict"] != "ok"]
        outcome = [f"{c['name'].split('.')[1]}={c['value']} {c['verdict']}" for c in quality["checks"]
                   if c["name"].startswith("outcome") and c["verdict"] != "ok"]
        pre = result.extras["prealign"]
        print(f"| {name} | {'; '.join(failed_masks) or 'all ok'} | {pre.get('chosen')} | {'; '.join(outcome) or '-'} | "
              f"{'-' if tre is None else f'{tre:.2f}'} | {status} |", flush=True)


if __name__ == "__main__":
    main()
