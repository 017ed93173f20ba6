"""The keypoint driver's residual search (the quality check's view of missed motion)."""

import torch
import torch.nn.functional as F

from graphreg.core.config import SearchLevel
from graphreg.methods.keypoint.driver import residual_search
from graphreg.ops.mind import mind_ssc


def _texture(shape=(40, 40, 40), seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand((1, 1) + shape, generator=generator)
    return F.avg_pool3d(noise, 3, 1, 1)  # smooth enough for MIND, rich enough to match


def test_residual_search_is_small_around_the_right_field_and_finds_missed_motion():
    fixed = _texture()
    moving = torch.roll(fixed, shifts=6, dims=2)  # moving(z) = fixed(z - 6): the pull field is +6 voxels in z
    fixed_features, moving_features = mind_ssc(fixed, 1, 2), mind_ssc(moving, 1, 2)
    axis = torch.arange(12, 29, 4, dtype=torch.float32)
    keypoints = torch.cartesian_prod(axis, axis, axis)  # (125, 3), away from the wrapped border
    right = torch.zeros((1, 3, 40, 40, 40))
    right[:, 0] = 6.0
    level = SearchLevel(radius=4, step=2.0)
    around_right = residual_search(fixed_features, moving_features, keypoints, right, level, 8, "sum-product")
    around_zero = residual_search(fixed_features, moving_features, keypoints, torch.zeros_like(right), level, 8,
                                  "sum-product")
    assert around_right.shape == (125, 3)
    assert (around_right.norm(dim=1) > 2).float().mean() < 0.05
    assert (around_zero.norm(dim=1) > 2).float().mean() > 0.9
    assert around_zero[:, 0].median() > 3 and around_zero[:, 1:].abs().median() < 1  # towards the missed +6 in z
