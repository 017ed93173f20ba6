"""The keypoint driver's residual search (the quality check's view of missed motion)."""

import torch
import torch.nn.functional as F

from graphreg.core.config import SearchLevel
from graphreg.methods.keypoint.driver import blend_regularisers, residual_search
from graphreg.result.uncertainty import SCALES
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


def test_blend_takes_the_regulariser_of_lower_predicted_error():
    """Keypoint 0: the classical spread is tiny (classical wins), 1: huge (network wins), 2: both
    predict the same error (choose: the network; mean: halfway)."""
    ratio = SCALES["graphregnet"].scale_median / SCALES["corrfield"].scale_median
    net = (torch.zeros(3, 3), torch.ones(3))
    classical = (torch.ones(3, 3), torch.tensor([0.01, 100.0, ratio]))
    chosen, error = blend_regularisers(net, classical, "choose")
    torch.testing.assert_close(chosen[:, 0], torch.tensor([1.0, 0.0, 0.0]))
    predicted = error * SCALES["graphregnet"].scale_median  # the network's calibration of the spread
    torch.testing.assert_close(predicted, torch.tensor([SCALES["corrfield"].scale_median * 0.01,
                                                        SCALES["graphregnet"].scale_median,
                                                        SCALES["graphregnet"].scale_median]))
    mean, _ = blend_regularisers(net, classical, "mean")
    assert mean[0, 0] > 0.99 and mean[1, 0] < 0.01
    torch.testing.assert_close(mean[2], torch.full((3,), 0.5))
