"""Short robustness sweep (tools/robustness_sweep.py): each perturbation kind once on the demo pair."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from graphreg.datasets.pairs import read_pair
from graphreg.apps.demo import DEMO_PAIR

_SPEC = importlib.util.spec_from_file_location(
    "robustness_sweep", Path(__file__).resolve().parents[1] / "tools" / "robustness_sweep.py")
sweep = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault("robustness_sweep", sweep)  # dataclasses look their module up there
_SPEC.loader.exec_module(sweep)

#: a coarse, quick version of the default method (same stages, fewer voxels and Adam steps)
FAST = {"preprocess": {"spacing_mm": 4.0}, "keypoints": {"nms_size": 3}, "instance_opt": {"iterations": 5}}


@pytest.fixture(scope="module")
def pair():
    return read_pair(DEMO_PAIR)


def test_translation_moves_image_and_landmarks_together(pair):
    moved = sweep.translate_moving(pair, 40.0)
    shift = np.asarray(moved.moving.grid.origin) - np.asarray(pair.moving.grid.origin)
    assert np.linalg.norm(shift) == pytest.approx(40.0)
    np.testing.assert_allclose(moved.moving_landmarks_mm - pair.moving_landmarks_mm,
                               np.tile(shift, (len(pair.moving_landmarks_mm), 1)), atol=1e-9)
    # a landmark keeps its voxel position in the moved image
    np.testing.assert_allclose(moved.moving.grid.world_to_voxel(moved.moving_landmarks_mm),
                               pair.moving.grid.world_to_voxel(pair.moving_landmarks_mm), atol=1e-9)


def test_fov_crop_removes_the_lung_base(pair):
    cropped = sweep.crop_lung_base(pair, 0.25)
    lungs = lambda volume: volume.grid.voxel_to_world(np.argwhere(volume.array > 0).astype(float))[:, 2]
    before, after = lungs(pair.moving_mask), lungs(cropped.moving_mask)
    extent = before.max() - before.min()
    assert after.min() - before.min() == pytest.approx(0.25 * extent, abs=2 * pair.moving.grid.spacing[2])
    assert after.max() == pytest.approx(before.max())  # the apex stays


@pytest.mark.parametrize("perturbation", sweep.perturbations(quick=True), ids=lambda p: p.kind)
def test_default_method_survives(pair, perturbation):
    row = sweep.run_case(pair, perturbation, config=FAST, device="cpu")
    assert row["ok"], row.get("traceback") or row["failure"]
    assert row["folding_percent"] < sweep.MAX_FOLDING_PERCENT
    assert np.isfinite(row["tre_mean_mm"]) and row["tre_mean_mm"] < 0.8 * row["tre_before_mean_mm"], row
