"""Tests of graphreg.methods.keypoint.correlation (patch-SSD cost volume and argmin read-out)."""

from __future__ import annotations

import pytest
import torch

from graphreg.errors import GraphregError, ShapeError
from graphreg.methods.keypoint.correlation import (
    candidate_displacements,
    correlation_cost,
    hard_argmin_displacement,
)
from graphreg.ops.filters import gaussian_filter, shift
from graphreg.ops.mind import mind_ssc
from graphreg.core.spatial import sample_points


def _smooth(shape, channels=1, seed=0, dtype=torch.float32) -> torch.Tensor:
    noise = torch.rand((1, channels) + shape, generator=torch.Generator().manual_seed(seed),
                       dtype=dtype)
    return gaussian_filter(noise, 1.0)


def _brute_force(fixed, moving, keypoints, radius, step, patch_radius):
    """The definition, one candidate at a time, by trilinear sampling."""
    candidates = candidate_displacements(radius, step, dtype=fixed.dtype)
    half = int(patch_radius // step)
    patch = candidate_displacements(half, step, dtype=fixed.dtype)
    cost = torch.empty(keypoints.shape[0], candidates.shape[0], dtype=fixed.dtype)
    for n, point in enumerate(keypoints.to(fixed.dtype)):
        reference = sample_points(fixed, point + patch)
        for index, candidate in enumerate(candidates):
            sample = sample_points(moving, point + candidate + patch)
            cost[n, index] = (sample - reference).square().mean()
    return cost


def test_candidate_displacements_convention():
    candidates = candidate_displacements(1, 2.0)
    assert candidates.shape == (27, 3)
    assert candidates[0].tolist() == [-2, -2, -2]
    assert candidates[1].tolist() == [-2, -2, 0]  # x varies fastest
    assert candidates[3].tolist() == [-2, 0, -2]
    assert candidates[13].tolist() == [0, 0, 0]
    expected = torch.stack(torch.meshgrid(*[torch.arange(-1, 2) * 2.0] * 3, indexing="ij"), -1)
    assert torch.equal(candidates, expected.reshape(-1, 3))
    assert candidate_displacements(3, 1).shape == (343, 3)


@pytest.mark.parametrize("step,patch_radius", [(2, 2), (1, 1), (2, 1), (1, 2)])
def test_matches_definition(step, patch_radius):
    fixed = torch.rand(1, 3, 14, 15, 16, dtype=torch.float64)
    moving = torch.rand(1, 3, 14, 15, 16, dtype=torch.float64)
    keypoints = torch.tensor([[6.0, 7, 8], [1, 13, 2], [12, 3, 14]])  # includes border cases
    cost = correlation_cost(fixed, moving, keypoints, 2, step, patch_radius, chunk_size=2)
    assert cost.shape == (3, 5, 5, 5) and cost.dtype == torch.float64
    expected = _brute_force(fixed, moving, keypoints, 2, step, patch_radius)
    torch.testing.assert_close(cost.reshape(3, -1), expected, atol=1e-12, rtol=1e-10)
    single = correlation_cost(fixed.float(), moving.float(), keypoints, 2, step, patch_radius)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.reshape(3, -1).double(), expected, atol=1e-5, rtol=1e-5)


def test_subvoxel_keypoints_interpolate():
    fixed = _smooth((14, 15, 16), channels=2, dtype=torch.float64)
    moving = _smooth((14, 15, 16), channels=2, seed=1, dtype=torch.float64)
    keypoints = torch.tensor([[6.3, 7.5, 8.1], [5.0, 5.0, 5.25]])
    cost = correlation_cost(fixed, moving, keypoints, 1, 1.5, 1.5)
    expected = _brute_force(fixed, moving, keypoints, 1, 1.5, 1.5)
    torch.testing.assert_close(cost.reshape(2, -1), expected, atol=1e-12, rtol=1e-10)


def test_chunking_does_not_change_the_result():
    fixed, moving = _smooth((16, 16, 16), 4), _smooth((16, 16, 16), 4, seed=1)
    keypoints = torch.randint(0, 16, (11, 3), generator=torch.Generator().manual_seed(0)).float()
    whole = correlation_cost(fixed, moving, keypoints, 3, 1)
    for chunk in (1, 4, 11, 100):
        chunked = correlation_cost(fixed, moving, keypoints, 3, 1, chunk_size=chunk)
        torch.testing.assert_close(chunked, whole)


def test_recovers_known_integer_shift():
    """moving(x + t) = fixed(x): the best candidate of every interior keypoint is t."""
    image = _smooth((40, 40, 40), seed=4) * 100
    true_shift = (4, -2, 6)
    moving_image = shift(image, tuple(-s for s in true_shift))  # moving(x) = fixed(x - t)
    fixed, moving = mind_ssc(image), mind_ssc(moving_image)
    generator = torch.Generator().manual_seed(1)
    # interior: patches, MIND neighbourhoods and shifted positions stay inside the volume
    keypoints = torch.randint(12, 28, (60, 3), generator=generator).float()
    radius, step = 4, 2
    cost = correlation_cost(fixed, moving, keypoints, radius, step, patch_radius=2)
    candidates = candidate_displacements(radius, step)
    found = hard_argmin_displacement(cost, candidates)
    correct = (found == torch.tensor(true_shift, dtype=found.dtype)).all(dim=1)
    assert correct.all()
    # at the true shift the patches are identical, so the minimum is exactly 0
    index = int(((candidates == torch.tensor(true_shift, dtype=candidates.dtype)).all(1)).nonzero())
    assert torch.all(cost.reshape(60, -1)[:, index] < 1e-5)


def test_hard_argmin():
    candidates = candidate_displacements(1, 1.0)
    cost = torch.full((2, 27), 10.0)
    cost[0, 5] = 0.0
    cost[1, 20] = 0.0
    hard = hard_argmin_displacement(cost.reshape(2, 3, 3, 3), candidates)
    assert torch.equal(hard, candidates[[5, 20]])
    cost = torch.full((1, 27), 5.0)
    cost[0, [12, 14]] = 0.0
    # ties in the hard argmin go to the first candidate
    assert torch.equal(hard_argmin_displacement(cost, candidates), candidates[[12]])


def test_exception():
    features = torch.zeros(1, 2, 8, 8, 8)
    points = torch.zeros(3, 3)
    with pytest.raises(ShapeError, match="fixed_features"):
        correlation_cost(torch.zeros(2, 8, 8, 8), features, points, 1, 1)
    with pytest.raises(ShapeError, match="moving_features"):
        correlation_cost(features, torch.zeros(1, 3, 8, 8, 8), points, 1, 1)
    with pytest.raises(ShapeError, match="keypoints"):
        correlation_cost(features, features, torch.zeros(3, 2), 1, 1)
    with pytest.raises(GraphregError, match="radius"):
        correlation_cost(features, features, points, -1, 1)
    with pytest.raises(GraphregError, match="step"):
        candidate_displacements(2, 0.0)
    with pytest.raises(GraphregError, match="patch_radius"):
        correlation_cost(features, features, points, 1, 1, patch_radius=-1)
    with pytest.raises(GraphregError, match="chunk_size"):
        correlation_cost(features, features, points, 1, 1, chunk_size=0)
    candidates = candidate_displacements(1, 1)
    with pytest.raises(ShapeError, match="cost"):
        hard_argmin_displacement(torch.zeros(3, 26), candidates)


def test_empty_keypoints():
    features = torch.rand(1, 2, 6, 6, 6)
    assert correlation_cost(features, features, torch.zeros(0, 3), 1, 1).shape == (0, 3, 3, 3)


def test_gradcheck():
    fixed = torch.rand(1, 2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    moving = torch.rand(1, 2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(2, 3, 3, 3, dtype=torch.float64)
    for keypoints in (torch.tensor([[2.0, 2, 1], [1, 3, 2]]), torch.tensor([[1.5, 2.2, 1.0]])):
        def loss(f, m):
            cost = correlation_cost(f, m, keypoints, 1, 1, patch_radius=1)
            return (cost * weights[:keypoints.shape[0]]).sum()

        assert torch.autograd.gradcheck(loss, (fixed, moving), fast_mode=True)


def test_moving_shift_equals_searching_the_shifted_moving_features():
    generator = torch.Generator().manual_seed(3)
    fixed = torch.rand((1, 4, 24, 24, 24), generator=generator)
    moving = torch.rand((1, 4, 24, 24, 24), generator=generator)
    keypoints = torch.tensor([[10.0, 11.0, 12.0], [12.0, 12.0, 10.0]])
    shift = torch.tensor([[2.0, 0.0, -1.0], [-1.0, 1.0, 0.0]])
    shifted = correlation_cost(fixed, moving, keypoints, 2, 1.0, 1, moving_shift=shift)
    for index in range(2):  # moving'(x) = moving(x + shift): the same search without a shift
        rolled = torch.roll(moving, shifts=[-int(s) for s in shift[index]], dims=(2, 3, 4))
        plain = correlation_cost(fixed, rolled, keypoints[index:index + 1], 2, 1.0, 1)
        torch.testing.assert_close(shifted[index:index + 1], plain)
    half = keypoints + 0.5  # the interpolating path shifts the same way
    interpolated = correlation_cost(fixed, moving, half, 2, 1.0, 1, moving_shift=shift)
    rolled = torch.roll(moving, shifts=[-int(s) for s in shift[0]], dims=(2, 3, 4))
    torch.testing.assert_close(interpolated[:1], correlation_cost(fixed, rolled, half[:1], 2, 1.0, 1))
    with pytest.raises(ShapeError, match="moving_shift"):
        correlation_cost(fixed, moving, keypoints, 2, 1.0, 1, moving_shift=shift + 0.5)
