"""Tests of graphreg.pipeline.instance_opt (Adam instance optimisation)."""

import pytest
import torch
import torch.nn.functional as F

from graphreg.errors import GraphregError, ShapeError
from graphreg.pipeline.instance_opt import instance_optimise, smooth_field
from graphreg.spatial import identity_grid, warp

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


@pytest.mark.parametrize("similarity_factor", [1, 2])
def test_instance_optimise_recovers_shift(similarity_factor):
    shift = (1.5, -1.0, 0.75)
    fixed, moving = shifted_pair(shift)
    seen = []
    result = instance_optimise(fixed, moving, torch.zeros(1, 3, *SHAPE), iterations=25, lr=0.5,
                               lambda_diffusion=0.1 / 3, similarity_factor=similarity_factor,
                               progress=lambda i, loss: seen.append(i))
    assert seen == list(range(25)) and len(result.losses) == 25
    assert result.losses[-1] < 0.25 * result.losses[0]
    field = result.displacement
    assert field.shape == (1, 3, *SHAPE) and not field.requires_grad
    centre = field[0, :, 5:-5, 5:-5, 5:-5].reshape(3, -1).mean(1)
    before = torch.tensor(shift).norm()
    assert (centre - torch.tensor(shift)).norm() < 0.25 * before


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
