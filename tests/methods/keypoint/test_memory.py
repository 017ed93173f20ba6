"""Memory estimate, the memory budget of register (API and command line), chunked Jacobian statistics."""

import sys

import numpy as np
import pytest
import torch

import graphreg.result.registration as registration
from graphreg.api import register
from graphreg.apps.cli import main
from graphreg.core.config import load_config
from graphreg.apps.demo import DEMO_PAIR
from graphreg.errors import GraphregError, ResourceError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.methods.keypoint.memory import estimate_memory, validate_memory_budget, working_grid_shape
from graphreg.ops.metrics import jacobian_stats

CT = Grid((141, 512, 512), (0.9765625, 0.9765625, 2.0))  # the native DIR-Lab-like CT
FAST = {"preprocess": {"spacing_mm": 4.0}, "instance_opt": {"iterations": 3}}
KEYS = ("preprocess.spacing_mm", "keypoints.num_points")


def _demo_paths():
    return [str(DEMO_PAIR / name) for name in ("fixed.nii.gz", "moving.nii.gz", "fixed_mask.nii.gz",
                                               "moving_mask.nii.gz")]


def test_working_grid_shape_of_the_lung_box():
    grid = Grid((40, 50, 60), (1.0, 1.0, 2.0))
    mask = np.zeros(grid.shape, bool)
    mask[10:30, 5:45, 20:40] = True  # z 40 mm, y 40 mm, x 20 mm
    assert working_grid_shape(grid, 2.0, 0.0) == grid.with_spacing((2.0, 2.0, 2.0)).shape
    shape = working_grid_shape(grid, 2.0, 0.0, mask)
    assert all(abs(a - b) <= 1 for a, b in zip(shape, (20, 20, 10))), shape
    assert working_grid_shape(grid, 2.0, 4.0, mask) == tuple(n + 4 for n in shape)  # 2 voxels each side


def test_estimate_grows_with_keypoints_and_finer_spacing():
    def peak(**overrides):
        return estimate_memory(CT, CT, load_config(overrides), include_outputs=False)

    base = peak()
    more = peak(keypoints={"num_points": 8000})
    assert more.stages["search level 1"] > base.stages["search level 1"]
    assert more.stages["preprocess"] == base.stages["preprocess"]  # keypoints only matter in the search
    fine, coarse = peak(preprocess={"spacing_mm": 1.0}), peak(preprocess={"spacing_mm": 4.0})
    assert fine.peak_bytes > base.peak_bytes > coarse.peak_bytes
    # the working-grid part scales with the voxel count (a factor 8 per halving of the spacing)
    voxels = lambda e: np.prod(e.working_shape)
    grown = (fine.stages["keypoints"] - base.stages["keypoints"]) / (voxels(fine) - voxels(base))
    assert grown == pytest.approx(250, rel=0.05)  # bytes per working voxel of the keypoint stage
    wider = peak(levels=[{"radius": 16, "step": 2.0}, {"radius": 4, "step": 1.0}])
    assert wider.stages["search level 1"] > base.stages["search level 1"]


def test_full_resolution_refinement_is_estimated_as_its_own_stage():
    def stages(refine):
        return estimate_memory(CT, CT, load_config({"instance_opt": {"refine": refine}}),
                               include_outputs=False).stages

    stage = "instance optimisation (full resolution)"
    assert stage not in stages({"iterations": 0})
    assert stages({"sample_fraction": 1.0})[stage] > stages({"sample_fraction": 0.25})[stage]
    assert stages({"sample_fraction": 0.25})[stage] == stages({"sample_fraction": 0.05})[stage]  # floor
    assert stages({})[stage] > stages({})["instance optimisation"]  # finer than the coarse stage


def test_own_instance_optimisation_features_are_estimated_only_when_their_dilation_differs():
    def stages(dilation):
        return estimate_memory(CT, CT, load_config({"instance_opt": {"mind_dilation": dilation}}),
                               include_outputs=False).stages

    stage = "mind (instance optimisation)"
    assert stage not in stages(2)  # the search's own features (mind.dilation 2) are reused
    assert stages(1)[stage] > stages(1)["mind"]  # the search features are still alive meanwhile


def test_estimate_of_the_native_ct_is_under_six_gb():
    estimate = estimate_memory(CT, CT, working_shape=(128, 130, 165))  # measured working grid of pair_01
    assert 3e9 < estimate.peak_bytes < 6e9
    assert estimate.peak_stage == "save result"
    assert "GB" in estimate.describe()


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), "2", True])
def test_budget_values_are_validated(value):
    with pytest.raises(GraphregError, match="memory_budget_gb"):
        validate_memory_budget(value)


def test_small_budget_is_refused_before_the_heavy_work(monkeypatch):
    import graphreg.checks.pair as checked_pair  # where the working pair is built for every method

    def forbidden(*args, **kwargs):
        raise AssertionError("working_pair ran although the budget was exceeded")

    monkeypatch.setattr(checked_pair, "working_pair", forbidden)
    with pytest.raises(ResourceError) as info:
        register(*_demo_paths(), config=FAST, device="cpu", memory_budget_gb=0.05)
    message = str(info.value)
    assert "0.05 GB" in message and "estimated" in message
    for key in KEYS:
        assert key in message
    with pytest.raises(GraphregError, match="memory_budget_gb"):
        register(*_demo_paths(), method="demons", memory_budget_gb=4.0)


def test_cli_small_budget_exits_2(tmp_path, monkeypatch, capsys):
    fixed, moving, fixed_mask, moving_mask = _demo_paths()
    monkeypatch.setattr(sys, "argv", ["graphreg", "register", fixed, moving, "--fixed-mask", fixed_mask,
                                      "--moving-mask", moving_mask, "--device", "cpu",
                                      "--out", str(tmp_path / "out"), "--memory-budget", "0.05"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.splitlines()[-1].startswith("error: memory_budget_gb") and "Traceback" not in err
    for key in KEYS:
        assert key in err
    assert not (tmp_path / "out").exists()


def test_generous_budget_runs():
    result = register(*_demo_paths(), config=FAST, device="cpu", memory_budget_gb=64.0)
    assert torch.isfinite(result.working_field.displacement).all()


@pytest.mark.parametrize("masked", [False, True])
def test_chunked_jacobian_stats_equal_whole_grid(monkeypatch, masked):
    generator = torch.Generator().manual_seed(0)
    grid = Grid((13, 11, 9), (1.5, 0.8, 2.0), (3.0, -2.0, 1.0))
    field = DisplacementField(torch.randn((1, 3) + grid.shape, generator=generator) * 0.4, grid)
    mask = np.random.default_rng(1).random(grid.shape) > 0.5 if masked else None
    monkeypatch.setattr(registration, "_CHUNK_VOXELS", 11 * 9 * 2)  # slabs of 2 slices, and a last one of 1
    chunked = registration.jacobian_stats_chunked(field, mask)
    whole = jacobian_stats(field, mask)
    assert whole["folding_percent"] > 0  # the random field folds: the statistics are not trivial
    for key, value in whole.items():
        assert chunked[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    with pytest.raises(GraphregError, match="mask"):
        registration.jacobian_stats_chunked(field, np.zeros(grid.shape, bool))


def test_region_body_adds_the_second_run_on_the_body_grid():
    lung_box = (100, 150, 170)
    lungs = estimate_memory(CT, CT, None, lung_box)
    body = estimate_memory(CT, CT, {"region": {"mode": "body"}}, lung_box)
    whole = CT.with_spacing((2.0, 2.0, 2.0)).shape
    assert set(lungs.stages) < set(body.stages)
    assert {name for name in body.stages if name.startswith("body: ")} == {f"body: {name}" for name in lungs.stages
                                                                           if name != "save result"}
    kept = 22 * np.prod(lung_box)  # the lung run's pair (10 B/voxel) and field (12) stay alive
    own = estimate_memory(CT, CT, None, whole)
    assert body.stages["body: keypoints"] == own.stages["keypoints"] + kept
    assert body.peak_bytes > lungs.peak_bytes
    smaller = estimate_memory(CT, CT, {"region": {"mode": "body"}}, lung_box, body_shape=lung_box)
    assert smaller.stages["body: keypoints"] == lungs.stages["keypoints"] + kept


def test_budget_that_fits_the_lungs_refuses_region_body():
    from graphreg.methods.keypoint.memory import check_memory_budget

    lung_box = (100, 150, 170)
    lungs = estimate_memory(CT, CT, None, lung_box)
    body = estimate_memory(CT, CT, {"region": {"mode": "body"}}, lung_box)
    budget = (lungs.peak_bytes + body.peak_bytes) / 2e9
    check_memory_budget(lungs, budget)
    with pytest.raises(ResourceError, match="body: .*region 'lungs'"):
        check_memory_budget(body, budget)
