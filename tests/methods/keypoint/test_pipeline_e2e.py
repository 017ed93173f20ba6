"""End to end: the keypoint pipeline on the bundled demo pair, the demo command, bad input."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

import graphreg
from graphreg.api import register
from graphreg.apps.bench.methods import truth_at_keypoints
from graphreg.core.config import load_config
from graphreg.datasets.pairs import read_pair
from graphreg.apps.demo import DEMO_PAIR, run_demo
from graphreg.io.resources import preset_path
from graphreg.errors import GraphregError
from graphreg.core.geometry import Grid
from graphreg.io.fields import read_itk_field
from graphreg.io.landmarks import read_landmarks
from graphreg.methods.keypoint.register import register_keypoint
from graphreg.ops.metrics import landmark_errors
from graphreg.core.volume import Volume


@pytest.fixture(scope="module")
def demo_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "result"
    return out, run_demo(out)


def test_demo_improves_tre_by_80_percent(demo_result):
    out, report = demo_result
    assert report["method"] == "corrfield"
    assert report["settings"] == "corrfield (default)"  # what `graphreg register` runs, not a demo preset
    assert report["tre_after_mm"] < 0.2 * report["tre_before_mm"], report
    assert report["jacobian"]["folding_percent"] < 0.1
    for key in ("tre_before_mm", "tre_after_mm", "seconds_total", "graphreg_version", "config", "timings_s"):
        assert key in report
    assert json.loads((out / "report.json").read_text()) == report


def test_demo_outputs_agree_with_each_other(demo_result):
    out, _ = demo_result
    pair = read_pair(DEMO_PAIR)
    field = read_itk_field(out / "field.nii.gz")  # the working lattice (2 mm) grown to cover the fixed grid
    assert field.grid.spacing == (2.0, 2.0, 2.0) and field.grid.extended_to_cover(pair.fixed.grid) == field.grid
    moved = read_landmarks(out / "landmarks_moved.csv").points
    # the written field maps the landmarks where the registration put them (float32 on disk)
    assert np.abs(field.transform_points(pair.fixed_landmarks_mm) - moved).max() < 1e-4
    # SimpleITK reads the field as a transform
    transform = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(out / "field.nii.gz")),
                                                          sitk.sitkVectorFloat64))
    point = pair.fixed_landmarks_mm[0]
    np.testing.assert_allclose(transform.TransformPoint(point.tolist()), field.transform_points(point[None])[0],
                               atol=1e-3)
    warped = graphreg.read_image(out / "warped.nii.gz")
    assert warped.grid.same_as(pair.fixed.grid)
    keypoints = np.loadtxt(out / "keypoints.csv", delimiter=",", skiprows=1)
    assert keypoints.shape[1] == 7 and len(keypoints) > 50


def test_oracle_uses_the_true_displacements_at_the_keypoints():
    """The benchmark's oracle: the keypoints' displacements are the ground truth (through the working
    grid and the pre-alignment), and densifying them beats the classical regulariser's."""
    pair = read_pair(DEMO_PAIR)
    truth = pair.load_gt_field()
    config = load_config(preset_path("lowres_3mm")).to_dict()
    config["instance_opt"]["enabled"] = False
    oracle = register_keypoint(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, "oracle", config,
                               given=truth_at_keypoints(truth))
    assert oracle.method == "oracle"
    points = oracle.keypoints_mm
    assert len(points) >= 16 and np.any(np.asarray(oracle.extras["prealign_translation_mm"]) != 0)
    expected = truth.transform_points(points) - points
    np.testing.assert_allclose(oracle.keypoint_displacements_mm, expected, atol=1e-3)
    classical = register(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, config=config)
    fixed_lm, moving_lm = np.asarray(pair.fixed_landmarks_mm), np.asarray(pair.moving_landmarks_mm)
    tre = {name: landmark_errors(reg.transform_points(fixed_lm), moving_lm).mean()
           for name, reg in (("oracle", oracle), ("classical", classical))}
    assert tre["oracle"] < tre["classical"]


def test_register_accepts_arrays_with_geometry():
    pair = read_pair(DEMO_PAIR)
    fixed = (pair.fixed.array, pair.fixed.grid)
    moving = sitk.GetImageFromArray(pair.moving.array)
    pair.moving.grid.apply_to_sitk(moving)
    merged = load_config(preset_path("lowres_3mm")).to_dict()
    merged["instance_opt"]["enabled"] = False
    result = register(fixed, moving, pair.fixed_mask, pair.moving_mask, config=merged, device="cpu")
    errors = landmark_errors(result.transform_points(pair.fixed_landmarks_mm), pair.moving_landmarks_mm)
    before = landmark_errors(pair.fixed_landmarks_mm, pair.moving_landmarks_mm)
    assert errors.mean() < 0.35 * before.mean()
    assert set(result.timings) >= {"preprocess", "keypoints", "mind", "search_1", "densify", "total"}


def _volume(shape=(20, 24, 28), spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0), seed=0):
    rng = np.random.default_rng(seed)
    return Volume(rng.normal(-500, 200, shape).astype(np.float32), Grid(shape, spacing, origin))


def test_exception_bad_inputs():
    good = _volume()
    mask = Volume(np.zeros(good.grid.shape, np.uint8), good.grid)
    with pytest.raises(GraphregError, match="empty mask"):
        register(good, good, mask, mask)
    flat = Volume(np.zeros(good.grid.shape, np.float32), good.grid)
    with pytest.raises(GraphregError, match="constant"):
        register(flat, good)
    nan = good.array.copy()
    nan[3, 3, 3] = np.nan
    with pytest.raises(GraphregError, match="NaN"):
        register((nan, good.grid), good)
    with pytest.raises(GraphregError, match="3D"):
        register((np.zeros((4, 5)), good.grid), good)
    with pytest.raises(GraphregError, match="method"):
        register(good, good, method="nope")
    with pytest.raises(GraphregError, match="unknown key"):
        register(good, good, config={"levels": [{"radius": 2, "bogus": 1}]})


def test_exception_images_do_not_overlap():
    fixed = _volume()
    lungs = np.zeros(fixed.grid.shape, np.uint8)
    lungs[5:15, 6:18, 6:22] = 1
    far = _volume(origin=(500.0, 0.0, 0.0), seed=1)
    mask_far = Volume(lungs, far.grid)
    with pytest.raises(GraphregError, match="overlap"):
        register(fixed, far, Volume(lungs, fixed.grid), mask_far, config={"preprocess": {"prealign": False}})


def test_mask_on_other_grid_is_resampled_with_warning():
    pair = read_pair(DEMO_PAIR)
    coarse_grid = pair.fixed_mask.grid.with_spacing((6.0, 6.0, 6.0))
    coarse_mask = pair.fixed_mask.resampled(coarse_grid, "nearest")
    from graphreg.methods.keypoint.preprocess import mask_on_grid

    with pytest.warns(UserWarning, match="resampling"):
        resampled = mask_on_grid(coarse_mask, pair.fixed.grid, "fixed_mask")
    assert resampled.grid.same_as(pair.fixed.grid)
    overlap = (resampled.array > 0) & (pair.fixed_mask.array > 0)
    assert overlap.sum() > 0.8 * (pair.fixed_mask.array > 0).sum()


def test_top_level_api_is_the_one_the_readme_shows():
    assert graphreg.register is register
    assert issubclass(graphreg.ResourceError, graphreg.GraphregError)


@pytest.mark.slow
def test_exhale_to_inhale_on_the_demo_does_not_fold():
    """The direction that folded at the lung base (docs/directions.md): swapped demo pair, 3 mm preset."""
    pair = read_pair(DEMO_PAIR)
    result = register(pair.moving, pair.fixed, pair.moving_mask, pair.fixed_mask, config=preset_path("lowres_3mm"),
                      threads=1)
    assert result.jacobian_stats()["folding_percent"] == 0.0
    assert result.working_jacobian_stats()["folding_percent"] == 0.0
    repair = result.extras["fold_repair"]
    assert repair["voxels_below_after"] == 0 and repair["voxels_changed"] >= repair["voxels_below_before"]
    moved = result.field.transform_points(pair.moving_landmarks_mm)
    assert landmark_errors(moved, pair.fixed_landmarks_mm).mean() < 2.5  # 10.6 mm before
