"""Tests of graphreg.methods.keypoint.instance_opt (Adam instance optimisation)."""

import pytest
import torch
import torch.nn.functional as F

from graphreg.errors import GraphregError, ShapeError
from graphreg.core.config import InstanceOptConfig, RefineConfig
from graphreg.ops.metrics import jacobian_determinant
from graphreg.methods.keypoint.instance_opt import (FOLD_FLOOR, _diffusion_weight, fold_loss, instance_optimise,
                                            optimise_with_config, smooth_field)
from graphreg.core.spatial import identity_grid, resize_field, warp

SHAPE = (20, 20, 20)


def blobs(seed=0, channels=2):
    """Smooth random feature maps (1, C, D, H, W)."""
    torch.manual_seed(seed)
    noise = torch.rand(1, channels, *SHAPE)
    for _ in range(4):
        noise = F.avg_pool3d(F.pad(noise, (1,) * 6, mode="replicate"), 3, stride=1)
    return (noise - noise.mean()) / noise.std()


def shifted_pair(shift):
    """Fixed features and a moving copy with ``moving(x + shift) = fixed(x)``."""
    fixed = blobs()
    minus = torch.tensor(shift).view(1, 3, 1, 1, 1).expand(1, 3, *SHAPE) * -1.0
    moving = warp(fixed, minus.contiguous())
    return fixed, moving


def test_smooth_field_keeps_constants_and_affine_interior():
    constant = torch.full((1, 3, 6, 6, 6), 2.5)
    torch.testing.assert_close(smooth_field(constant, 3), constant)
    ramp = identity_grid((9, 9, 9))
    inner = (..., slice(2, -2), slice(2, -2), slice(2, -2))
    torch.testing.assert_close(smooth_field(ramp, 2)[inner], ramp[inner])


@pytest.mark.parametrize("similarity_factor, sample_fraction", [(1, 1.0), (2, 1.0), (1, 0.25)])
def test_instance_optimise_recovers_shift(similarity_factor, sample_fraction):
    shift = (1.5, -1.0, 0.75)
    fixed, moving = shifted_pair(shift)
    seen = []
    result = instance_optimise(fixed, moving, torch.zeros(1, 3, *SHAPE), iterations=25, lr=0.5,
                               lambda_diffusion=0.1 / 3, similarity_factor=similarity_factor,
                               sample_fraction=sample_fraction, progress=lambda i, loss: seen.append(i))
    assert seen == list(range(25)) and len(result.losses) == 25
    assert result.losses[-1] < 0.25 * result.losses[0]
    field = result.displacement
    assert field.shape == (1, 3, *SHAPE) and not field.requires_grad
    centre = field[0, :, 5:-5, 5:-5, 5:-5].reshape(3, -1).mean(1)
    before = torch.tensor(shift).norm()
    assert (centre - torch.tensor(shift)).norm() < 0.25 * before


@pytest.mark.parametrize("grid_factor", [2, 3])
def test_a_coarser_parameter_grid_gives_the_loss_of_the_upsampled_field(grid_factor):
    """The field sampled at the similarity voxels equals resize_field's trilinear upsampling."""
    fixed, moving = shifted_pair((1.0, -0.5, 0.25))
    init = 2.0 * blobs(seed=3, channels=3)
    result = instance_optimise(fixed, moving, init, iterations=1, lambda_diffusion=0.0,
                               grid_factor=grid_factor, smoothing_passes=2)
    low = tuple(round(n / grid_factor) for n in SHAPE)
    upsampled = resize_field(smooth_field(resize_field(init, low), 2), SHAPE)
    expected = ((fixed - warp(moving, upsampled)) ** 2).mean()
    assert result.losses[0] == pytest.approx(float(expected), rel=1e-5)


def test_random_sampling_is_seeded_and_visits_different_voxels():
    fixed, moving = shifted_pair((1.0, 0.5, 0.0))
    runs = [instance_optimise(fixed, moving, torch.zeros(1, 3, *SHAPE), iterations=3, lr=0.5,
                              sample_fraction=0.3, seed=seed) for seed in (4, 4, 5)]
    assert torch.equal(runs[0].displacement, runs[1].displacement)
    assert not torch.equal(runs[0].displacement, runs[2].displacement)
    full = instance_optimise(fixed, moving, torch.zeros(1, 3, *SHAPE), iterations=3, lr=0.5)
    assert not torch.equal(runs[0].displacement, full.displacement)
    tiny = instance_optimise(fixed, moving, torch.zeros(1, 3, *SHAPE), iterations=3, lr=0.5,
                             sample_fraction=1e-9)  # no voxel drawn: the step uses all of them
    assert all(torch.isfinite(torch.tensor(tiny.losses)))


def test_optimise_with_config_runs_the_coarse_then_the_full_resolution_stage():
    shift = (1.5, -1.0, 0.75)
    fixed, moving = shifted_pair(shift)
    init = torch.zeros(1, 3, *SHAPE)
    coarse_only = InstanceOptConfig(iterations=20, lr=0.5, refine=RefineConfig(iterations=0))
    field, timings = optimise_with_config(fixed, moving, init, None, coarse_only)
    assert set(timings) == {"instance_opt"}
    both = InstanceOptConfig(iterations=20, lr=0.5, refine=RefineConfig(iterations=10, lr=0.1))
    refined, timings = optimise_with_config(fixed, moving, init, None, both)
    assert set(timings) == {"instance_opt", "instance_opt_refine"}
    error = [(f[0, :, 5:-5, 5:-5, 5:-5].reshape(3, -1).mean(1) - torch.tensor(shift)).norm()
             for f in (field, refined)]
    assert error[1] < error[0] < 0.25 * torch.tensor(shift).norm()
    untouched, timings = optimise_with_config(fixed, moving, init, None,
                                              InstanceOptConfig(enabled=False))
    assert untouched is init and timings == {}


def test_instance_optimise_mask_limits_the_loss():
    fixed, moving = shifted_pair((1.0, 0.0, 0.0))
    mask = torch.zeros(1, 1, *SHAPE)
    mask[..., 6:14, 6:14, 6:14] = 1
    result = instance_optimise(fixed, moving, torch.zeros(1, 3, *SHAPE), mask=mask,
                               iterations=15, lr=0.5, lambda_diffusion=0.1 / 3, mask_dilation=2)
    assert result.losses[-1] < result.losses[0]
    with pytest.raises(GraphregError, match="mask"):
        instance_optimise(fixed, moving, torch.zeros(1, 3, *SHAPE), mask=torch.zeros_like(mask))


def test_zero_iterations_returns_smoothed_init():
    fixed, moving = shifted_pair((0.0, 0.0, 0.0))
    init = torch.zeros(1, 3, *SHAPE)
    init[:, 1] = 2.0
    result = instance_optimise(fixed, moving, init, iterations=0)
    torch.testing.assert_close(result.displacement, init)
    assert result.losses == []


def test_exceptions():
    fixed = torch.zeros(1, 2, 8, 8, 8)
    with pytest.raises(ShapeError, match="moving_features"):
        instance_optimise(fixed, torch.zeros(1, 3, 8, 8, 8), torch.zeros(1, 3, 8, 8, 8))
    with pytest.raises(ShapeError, match="init_displacement"):
        instance_optimise(fixed, fixed, torch.zeros(1, 3, 8, 8, 7))
    with pytest.raises(ShapeError, match="mask"):
        instance_optimise(fixed, fixed, torch.zeros(1, 3, 8, 8, 8), mask=torch.ones(8, 8, 8))
    with pytest.raises(GraphregError, match="grid_factor"):
        instance_optimise(fixed, fixed, torch.zeros(1, 3, 8, 8, 8), grid_factor=0)
    with pytest.raises(GraphregError, match="similarity_factor"):
        instance_optimise(fixed, fixed, torch.zeros(1, 3, 8, 8, 8), similarity_factor=0)
    for fraction in (0.0, 1.5, float("nan")):
        with pytest.raises(GraphregError, match="sample_fraction"):
            instance_optimise(fixed, fixed, torch.zeros(1, 3, 8, 8, 8), sample_fraction=fraction)
    for penalty in (-1.0, float("nan")):
        with pytest.raises(GraphregError, match="fold_penalty"):
            instance_optimise(fixed, fixed, torch.zeros(1, 3, 8, 8, 8), fold_penalty=penalty)
    for outside in (-0.1, 1.5, float("nan")):
        with pytest.raises(GraphregError, match="outside_diffusion"):
            instance_optimise(fixed, fixed, torch.zeros(1, 3, 8, 8, 8), mask=torch.ones(1, 1, 8, 8, 8),
                              outside_diffusion=outside)


def test_diffusion_weight_marks_parameter_voxels_that_hold_mask_voxels():
    mask = torch.zeros(1, 1, 8, 8, 8)
    mask[..., 0, 0, 0] = 1  # one voxel: only the first parameter voxel of the half-resolution grid
    weight = _diffusion_weight(mask, (4, 4, 4), 0.25, mask)
    expected = torch.full((1, 1, 4, 4, 4), 0.25)
    expected[..., 0, 0, 0] = 1.0
    torch.testing.assert_close(weight, expected)
    assert _diffusion_weight(mask, (4, 4, 4), 1.0, mask) is None  # uniform: the plain penalty
    assert _diffusion_weight(None, (4, 4, 4), 0.25, mask) is None


def test_a_free_outside_keeps_a_steep_falloff_just_outside_the_mask():
    """Motion inside the mask, none outside, features without contrast (only the penalty acts):
    the uniform penalty pulls the interior towards the outside; with weight 0 outside the step
    costs nothing and stays."""
    features = torch.zeros(1, 2, *SHAPE)
    mask = torch.zeros(1, 1, *SHAPE)
    mask[..., 5:15, 5:15, 5:15] = 1
    init = torch.zeros(1, 3, *SHAPE)
    init[:, 0] = 1.5 * mask[0, 0]
    fields = [instance_optimise(features, features, init, mask=mask, iterations=5, lr=0.1,
                                grid_factor=1, smoothing_passes=0, outside_diffusion=outside)
              for outside in (1.0, 0.0)]
    assert float(fields[0].displacement[0, 0, 5:15, 5:15, 5:15].mean()) < 1.4
    assert fields[1].losses == [0.0] * 5
    torch.testing.assert_close(fields[1].displacement, init)


def test_instance_features_reuse_the_search_features_only_at_the_same_dilation():
    from graphreg.errors import ConfigError
    from graphreg.methods.keypoint.instance_opt import instance_features
    from graphreg.ops.mind import mind_ssc

    fixed, moving = blobs(1, 1), blobs(2, 1)
    search = (mind_ssc(fixed, 1, 2), mind_ssc(moving, 1, 2))
    same = instance_features(fixed, moving, 1, InstanceOptConfig(mind_dilation=2), 2, search)
    assert same[0] is search[0] and same[1] is search[1]
    finer = instance_features(fixed, moving, 1, InstanceOptConfig(mind_dilation=1), 2, search)
    torch.testing.assert_close(finer[0], mind_ssc(fixed, 1, 1))
    torch.testing.assert_close(finer[1], mind_ssc(moving, 1, 1))
    assert not torch.allclose(finer[0], search[0])
    with pytest.raises(ConfigError, match="instance_opt.mind_dilation"):
        instance_features(fixed, moving, 1, InstanceOptConfig(mind_dilation=0))


def test_fold_loss_is_zero_above_the_floor_and_grows_below():
    ramp = identity_grid((8, 8, 8))
    assert float(fold_loss(torch.zeros(1, 3, 8, 8, 8))) == 0.0
    assert float(fold_loss(-0.5 * ramp)) == 0.0  # J = 0.125 > FOLD_FLOOR
    flipped = -2.0 * ramp  # J = -1 everywhere
    assert float(fold_loss(flipped)) == pytest.approx((FOLD_FLOOR + 1.0) ** 2, rel=1e-5)
    assert float(fold_loss(-1.5 * ramp)) < float(fold_loss(flipped))


def test_fold_penalty_keeps_a_converging_motion_fold_free():
    """Content converging on a plane (``u_z = +2`` before it, ``-2`` after): matching it exactly
    folds the pull field, as the exhale -> inhale direction did at the lung base; the fold penalty
    keeps every Jacobian determinant positive."""
    torch.manual_seed(0)
    moving = blobs(seed=1, channels=4)
    z = identity_grid(SHAPE)[0, 0]
    truth = torch.zeros(1, 3, *SHAPE)
    truth[0, 0] = torch.where(z < 10, 2.0, -2.0)
    fixed = warp(moving, truth)
    options = dict(iterations=40, lr=0.5, lambda_diffusion=0.01, grid_factor=1, smoothing_passes=1)
    free = instance_optimise(fixed, moving, torch.zeros(1, 3, *SHAPE), **options).displacement
    kept = instance_optimise(fixed, moving, torch.zeros(1, 3, *SHAPE), fold_penalty=30.0, **options).displacement
    assert float((jacobian_determinant(free) <= 0).float().mean()) > 0.01
    assert float(jacobian_determinant(kept).min()) > 0.0


def test_fold_loss_on_the_box_of_low_voxels_equals_the_whole_grid():
    torch.manual_seed(0)
    field = 0.05 * torch.randn(1, 3, 12, 10, 11)
    field[..., 3:6, 0:3, 5:8] = 3.0 * torch.randn(1, 3, 3, 3, 3)  # folds touching the border
    mine = field.clone().requires_grad_()
    whole = field.clone().requires_grad_()
    loss = fold_loss(mine)
    reference = torch.relu(FOLD_FLOOR - jacobian_determinant(whole)).square().mean()
    loss.backward()
    reference.backward()
    assert float(reference.detach()) > 0
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(mine.grad, whole.grad)
