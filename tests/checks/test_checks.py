"""Quality checks (graphreg.checks): verdict rules, mask checks and fallbacks, the
mask-independent translation search, outcome checks and the status."""

from pathlib import Path

import numpy as np
import pytest
import torch

from graphreg.checks import Check, lower_limit, upper_limit, worst
from graphreg.checks.masks import CheckedMasks, checked_masks, mask_checks, volume_ratio_check
from graphreg.checks.outcome import outcome_checks, quality_report
from graphreg.checks.prealign import masked_ncc_map, prealign, translation_search
from graphreg.core.config import PreprocessConfig
from graphreg.errors import GraphregError
from graphreg.core.geometry import Grid
from graphreg.methods.keypoint.preprocess import working_pair
from graphreg.core.volume import Volume

DEMO = Path(__file__).resolve().parents[2] / "assets" / "demo"


@pytest.mark.parametrize("value, verdict", [(0.9, "ok"), (0.6, "suspect"), (0.4, "failed"), (float("nan"), "failed"),
                                            (None, "failed")])
def test_lower_limit_verdicts(value, verdict):
    check = lower_limit("x", value, 0.5, 0.75, "similarity")
    assert check.verdict == verdict and check.passed == (verdict == "ok")
    assert check.limit == ">= 0.75 (failed < 0.5)"
    assert (check.detail == "") == (verdict == "ok")


@pytest.mark.parametrize("value, verdict", [(0.5, "ok"), (2.0, "suspect"), (6.0, "failed")])
def test_upper_limit_verdicts(value, verdict):
    assert upper_limit("f", value, 5.0, 1.0, "folding").verdict == verdict


def test_worst_and_to_dict():
    assert worst([]) == "ok" and worst(["ok", "failed", "suspect"]) == "failed"
    assert Check("a", "ok", 0.123456, "<= 1").to_dict() == {"name": "a", "verdict": "ok", "value": 0.1235,
                                                           "limit": "<= 1", "detail": ""}


def _thorax(lungs=("left", "right"), shape=(40, 60, 80), spacing=4.0, border=False):
    """Body (40 HU) in air with box lungs (-850 HU); ``border`` moves the right lung onto the image's x face."""
    hu = np.full(shape, -1000, dtype=np.int16)
    hu[:, 5:55, 5:75] = 40
    mask = np.zeros(shape, dtype=np.uint8)
    boxes = {"left": (slice(5, 35), slice(15, 45), slice(12, 35)),
             "right": (slice(5, 35), slice(15, 45), slice(70, 80) if border else slice(45, 68))}
    for side in lungs:
        hu[boxes[side]] = -850
        mask[boxes[side]] = 1
    grid = Grid(shape, (spacing,) * 3)
    return Volume(hu, grid), Volume(mask, grid)


def test_mask_checks_table():
    image, mask = _thorax()
    assert [c.verdict for c in mask_checks(mask, image, "m")] == ["ok", "ok", "ok"]
    image, mask = _thorax(("right",))
    names = {c.name: c for c in mask_checks(mask, image, "moving_mask")}
    assert names["moving_mask.two_lungs"].verdict == "failed" and names["moving_mask.two_lungs"].value < 0.05
    image, mask = _thorax(border=True)
    assert {c.name: c.verdict for c in mask_checks(mask, image, "m")}["m.in_view"] == "failed"
    small = Volume((mask.array * 0), mask.grid)
    small.array[20, 30, 20] = 1
    assert mask_checks(small, image, "m")[0].verdict == "failed"


def test_volume_ratio_check():
    image, mask = _thorax()
    _, one = _thorax(("right",))
    assert volume_ratio_check(mask, mask).passed
    half = Volume(mask.array.copy(), mask.grid)
    half.array[:20] = 0
    assert volume_ratio_check(mask, half).value == pytest.approx(15 / 30)
    tiny = Volume(np.zeros_like(mask.array), mask.grid)
    tiny.array[5:10, 15:45, 45:68] = 1
    assert not volume_ratio_check(mask, tiny).passed


def test_masked_ncc_map_matches_direct_computation():
    rng = np.random.default_rng(0)
    moving = rng.standard_normal((14, 15, 16))
    valid = np.ones_like(moving, dtype=bool)
    valid[:, :, -3:] = False
    b = 2
    fixed = moving[b + 1:-b + 1, b - 1:-b - 1, b:-b].copy()  # the moving image shifted by (1, -1, 0)
    region = np.zeros(fixed.shape, dtype=bool)
    region[2:-2, 2:-2, 2:-2] = True
    ncc = masked_ncc_map(fixed, region, moving, valid)
    assert ncc.shape == (5, 5, 5)
    assert np.unravel_index(np.argmax(ncc), ncc.shape) == (b + 1, b - 1, b) and ncc.max() == pytest.approx(1.0)
    k = (0, 4, 1)  # any other shift: the NCC over the region's valid overlap
    window = moving[k[0]:k[0] + fixed.shape[0], k[1]:k[1] + fixed.shape[1], k[2]:k[2] + fixed.shape[2]]
    use = region & valid[k[0]:k[0] + fixed.shape[0], k[1]:k[1] + fixed.shape[1], k[2]:k[2] + fixed.shape[2]]
    assert ncc[k] == pytest.approx(np.corrcoef(fixed[use], window[use])[0, 1], abs=1e-9)


@pytest.fixture(scope="module")
def demo():
    from graphreg.datasets.pairs import read_pair

    return read_pair(DEMO)


def _shifted(volume, offset):
    g = volume.grid
    return Volume(volume.array, Grid(g.shape, g.spacing, tuple(np.asarray(g.origin) + offset), g.direction))


def test_translation_search_recovers_an_offset(demo):
    offset = np.array([40.0, -24.0, 32.0])
    found, ncc = translation_search(demo.fixed, demo.fixed_mask, _shifted(demo.moving, offset), np.zeros(3), 80.0, 8.0)
    base, _ = translation_search(demo.fixed, demo.fixed_mask, demo.moving, np.zeros(3), 80.0, 8.0)
    assert np.allclose(found - base, offset) and ncc > 0.8


def test_prealign_overrules_a_one_lung_mask(demo):
    one = Volume(demo.moving_mask.array.copy(), demo.moving_mask.grid)
    one.array[..., : one.array.shape[2] // 2] = 0
    lines = []
    good = prealign(demo.fixed, demo.moving, CheckedMasks(demo.fixed_mask, demo.moving_mask), PreprocessConfig(),
                    lines.append)
    bad = prealign(demo.fixed, demo.moving, CheckedMasks(demo.fixed_mask, one), PreprocessConfig(), lines.append)
    assert good.report["chosen"] == "centre_of_mass" and all(c.passed for c in good.checks)
    assert bad.report["chosen"] == "search" and not bad.checks[0].passed
    assert np.linalg.norm(bad.translation_mm - good.translation_mm) < 10.0
    assert any("differ by" in line for line in lines)


def test_failed_automatic_masks_fall_back(demo, monkeypatch):
    import graphreg.ops.lungmask as lungmask

    def no_lungs(volume, *args, **kwargs):
        raise GraphregError("volume: no air region larger than 50 ml inside the body")

    monkeypatch.setattr(lungmask, "lung_mask", no_lungs)
    lines = []
    masks = checked_masks(demo.fixed, demo.moving, None, demo.moving_mask, lines.append)
    assert masks.fixed is None and masks.fallbacks[0]["mask"] == "fixed_mask"
    prealignment = prealign(demo.fixed, demo.moving, masks, PreprocessConfig(), lines.append)
    # the fixed mask is the moving one carried over by the search: close to the true fixed mask
    fixed_true = demo.fixed_mask.array > 0
    overlap = 2 * (fixed_true & (masks.fixed.array > 0)).sum() / (fixed_true.sum() + (masks.fixed.array > 0).sum())
    assert overlap > 0.8 and "carried over" in masks.fallbacks[0]["fallback"]
    assert any(line.startswith("warning: fixed_mask") for line in lines)
    masks = checked_masks(demo.fixed, demo.moving, demo.fixed_mask, None, lines.append)
    assert masks.moving is None
    prealignment = prealign(demo.fixed, demo.moving, masks, PreprocessConfig(), lines.append)
    assert prealignment.report["chosen"] == "search"
    pair = working_pair(demo.fixed, demo.moving, masks.fixed, None, PreprocessConfig(spacing_mm=4.0),
                        translation_mm=prealignment.translation_mm)
    assert torch.equal(pair.moving_mask, pair.fixed_mask)


def test_outcome_checks_identity_and_folding(demo):
    pair = working_pair(demo.fixed, demo.moving, demo.fixed_mask, demo.moving_mask, PreprocessConfig(spacing_mm=4.0))
    zero = torch.zeros((1, 3) + tuple(pair.fixed.shape[2:]))
    checks, measured = outcome_checks(pair, zero, torch.full((10,), 1.0), 32.0, True)
    verdicts = {c.name: c.verdict for c in checks}
    assert measured["folding_percent"] == 0 and measured["std_log_jacobian"] == pytest.approx(0, abs=1e-6)
    assert verdicts["outcome.ncc_gain"] == "ok" and measured["ncc_after"] == pytest.approx(measured["ncc_before"])
    assert 0.8 < measured["dice"] < 1 and measured["keypoint_spread"] == pytest.approx(1 / 32)
    folded = zero.clone()
    folded[0, 2] = -2.0 * torch.arange(folded.shape[-1], dtype=folded.dtype)  # x -> -x: J = -1
    checks, measured = outcome_checks(pair, folded, None, 32.0, False)
    verdicts = {c.name: c.verdict for c in checks}
    assert verdicts["outcome.folding_percent"] == "failed" and "outcome.lung_dice" not in verdicts
    report = quality_report(checks, [{"mask": "moving_mask", "reason": "r", "fallback": "f"}], measured)
    assert report["status"] == "failed" and report["reasons"][0] == "moving_mask replaced: r"
    ok = quality_report([Check("a", "ok", 1.0, "")], [{"mask": "moving_mask", "reason": "r"}], {})
    assert ok["status"] == "suspect"


def test_search_residual_check_counts_keypoints_that_would_still_move(demo):
    pair = working_pair(demo.fixed, demo.moving, demo.fixed_mask, demo.moving_mask, PreprocessConfig(spacing_mm=4.0))
    zero = torch.zeros((1, 3) + tuple(pair.fixed.shape[2:]))
    still = torch.zeros(100)
    still[:5] = 3.0  # 5 % moved by more than RESIDUAL_MOVE_VOXELS (2)
    checks, measured = outcome_checks(pair, zero, None, 32.0, False, still)
    verdicts = {c.name: c.verdict for c in checks}
    assert measured["search_residual"] == pytest.approx(0.05) and verdicts["outcome.search_residual"] == "ok"
    still[:30] = 3.0
    checks, measured = outcome_checks(pair, zero, None, 32.0, False, still)
    verdicts = {c.name: c.verdict for c in checks}
    assert measured["search_residual"] == pytest.approx(0.30) and verdicts["outcome.search_residual"] == "suspect"
    checks, measured = outcome_checks(pair, zero, None, 32.0, False, None)
    assert "outcome.search_residual" not in {c.name for c in checks} and measured["search_residual"] is None
