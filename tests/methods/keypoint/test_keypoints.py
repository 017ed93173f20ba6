"""Tests of graphreg.methods.keypoint.keypoints (Förstner operator, farthest-point sampling)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from graphreg.errors import GraphregError, ShapeError
from graphreg.ops.filters import gaussian_filter, gradient_5tap
from graphreg.methods.keypoint.keypoints import (
    _fps_torch,
    _max_filter,
    farthest_point_sampling,
    foerstner_distinctiveness,
    foerstner_keypoints,
)

LOW, HIGH = (8, 9, 6), (24, 21, 22)  # cuboid voxels [LOW, HIGH) along (z, y, x)


def _cuboid(shape=(32, 32, 40), scale=300.0, offset=20.0) -> torch.Tensor:
    image = torch.zeros((1, 1) + shape)
    image[0, 0, LOW[0]:HIGH[0], LOW[1]:HIGH[1], LOW[2]:HIGH[2]] = 1.0
    return image * scale + offset


def _corners() -> torch.Tensor:
    # the cuboid's faces lie half-way between voxels: LOW - 0.5 and HIGH - 0.5
    faces = [(lo - 0.5, hi - 0.5) for lo, hi in zip(LOW, HIGH)]
    return torch.tensor(list(itertools.product(*faces)))


def _random(size: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, size, size, size, generator=generator, dtype=dtype)


def test_finds_the_eight_corners_of_a_cuboid():
    points = foerstner_keypoints(_cuboid(), None, num_points=None)
    assert points.shape == (8, 3)
    assert points.dtype == torch.float32
    # Chebyshev distance: the smoothed response peaks 1.5 voxels inside along each axis
    distance = torch.cdist(_corners(), points, p=float("inf"))
    assert distance.min(dim=1).values.max() <= 1.5  # every corner found
    assert distance.min(dim=0).values.max() <= 1.5  # and nothing else


def test_none_in_flat_region():
    image = _cuboid()
    mask = torch.zeros_like(image, dtype=torch.bool)
    # x >= 32 is beyond the reach of derivative (2) and Gaussian (5 voxels) from the face at 21.5:
    # the structure tensor is exactly zero there
    mask[..., :, :, 32:] = True
    assert foerstner_distinctiveness(image)[mask].abs().max() == 0
    assert foerstner_keypoints(image, mask).shape == (0, 3)
    assert foerstner_keypoints(torch.full((1, 1, 12, 12, 12), 5.0), None).shape == (0, 3)


def test_mask_and_erosion():
    image = _cuboid()
    mask = torch.zeros_like(image, dtype=torch.bool)
    mask[..., :16, :, :] = True  # lower half in z: contains the 4 corners detected at z = 9
    points = foerstner_keypoints(image, mask, num_points=None)
    assert points.shape == (4, 3)
    assert torch.all(points[:, 0] == 9)
    # erosion by r voxels keeps z < 16 - r
    assert torch.equal(foerstner_keypoints(image, mask, num_points=None, erode_mask=6), points)
    assert foerstner_keypoints(image, mask, num_points=None, erode_mask=7).shape == (0, 3)


def test_invariant_to_intensity_scale():
    image = gaussian_filter(_random(24, seed=3), 1.0)
    reference = foerstner_keypoints(image, None, num_points=50)
    scaled = foerstner_keypoints(image * 1000 - 300, None, num_points=50)
    assert torch.equal(reference, scaled)


def test_distinctiveness_matches_inverse_trace():
    image = _random(7, seed=1, dtype=torch.float64)
    distinct = foerstner_distinctiveness(image, sigma=1.0)
    grad = gradient_5tap(image)[0]  # (3, D, H, W)
    tensor = gaussian_filter((grad[:, None] * grad[None, :]).reshape(1, 9, 7, 7, 7), 1.0)
    tensor = tensor[0].reshape(3, 3, 7, 7, 7).permute(2, 3, 4, 0, 1)
    expected = 1.0 / torch.linalg.inv(tensor).diagonal(dim1=-2, dim2=-1).sum(-1)
    torch.testing.assert_close(distinct[0, 0], expected, rtol=1e-8, atol=1e-12)


def test_thinned_to_num_points_deterministic():
    image = gaussian_filter(_random(32, seed=0), 1.0)
    everything = foerstner_keypoints(image, None, nms_size=3, num_points=None)
    assert everything.shape[0] > 40
    points = foerstner_keypoints(image, None, nms_size=3, num_points=40)
    assert points.shape == (40, 3)
    assert torch.equal(points, foerstner_keypoints(image, None, nms_size=3, num_points=40))
    assert torch.equal(points[0], everything[0])  # starts at the strongest point
    # selected points are a subset of the local maxima
    assert (torch.cdist(points, everything).min(dim=1).values == 0).all()
    # the strongest comes first
    strength = foerstner_distinctiveness(image)[0, 0]
    values = strength[tuple(everything.long().T)]
    assert torch.all(values[:-1] >= values[1:])


def test_farthest_point_sampling_is_well_spread():
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(2000, 3, generator=generator) * 40
    chosen = farthest_point_sampling(points, 64, start=5)
    assert chosen.shape == (64,) and chosen.dtype == torch.long
    assert chosen[0] == 5 and len(set(chosen.tolist())) == 64
    selected = points[chosen]
    gaps = torch.cdist(selected, selected) + torch.eye(64) * 1e9
    spread = gaps.min(dim=1).values.min()
    random_pick = points[:64]
    random_gaps = torch.cdist(random_pick, random_pick) + torch.eye(64) * 1e9
    assert spread > 2 * random_gaps.min(dim=1).values.min()
    # covering radius: every point is close to a selected one (64 points in a 40^3 cube)
    assert torch.cdist(points, selected).min(dim=1).values.max() < 12


def test_farthest_point_sampling_torch_loop_matches():
    """The device loop (used on GPU) and the numpy loop (CPU) choose the same points."""
    points = torch.randint(0, 20, (500, 3), generator=torch.Generator().manual_seed(2)).double()
    assert torch.equal(_fps_torch(points, 50, 7), farthest_point_sampling(points, 50, start=7))


def test_farthest_point_sampling_exact_on_a_line():
    points = torch.tensor([[0.0, 0, 0], [0, 0, 1], [0, 0, 10], [0, 0, 4], [0, 0, 6]])
    # after 0 and 10, the points at 4 and 6 are both 4 away: the lower index wins
    assert farthest_point_sampling(points, 3).tolist() == [0, 2, 3]
    assert farthest_point_sampling(points, 5, start=1).tolist() == [1, 2, 4, 3, 0]


def test_exception():
    image = torch.zeros(1, 1, 8, 8, 8)
    with pytest.raises(ShapeError, match="image"):
        foerstner_keypoints(torch.zeros(8, 8, 8))
    with pytest.raises(ShapeError, match="image"):
        foerstner_keypoints(torch.zeros(2, 1, 8, 8, 8))
    with pytest.raises(ShapeError, match="mask"):
        foerstner_keypoints(image, torch.ones(1, 1, 8, 8, 7, dtype=torch.bool))
    with pytest.raises(GraphregError, match="nms_size"):
        foerstner_keypoints(image, None, nms_size=4)
    with pytest.raises(GraphregError, match="sigma"):
        foerstner_keypoints(image, None, sigma=0)
    with pytest.raises(ShapeError, match="points"):
        farthest_point_sampling(torch.zeros(5, 2), 2)
    with pytest.raises(GraphregError, match="k"):
        farthest_point_sampling(torch.zeros(5, 3), 6)
    with pytest.raises(GraphregError, match="start"):
        farthest_point_sampling(torch.zeros(5, 3), 2, start=5)


def test_gradcheck():
    image = torch.rand(1, 1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(1, 1, 4, 4, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda v: (foerstner_distinctiveness(v, sigma=0.8) * weights).sum(), (image,),
        fast_mode=True)


@pytest.mark.parametrize("shape", [(9, 7, 11), (2, 1, 6), (5, 3, 1)])
@pytest.mark.parametrize("size", [1, 3, 5, 7])
def test_max_filter_equals_max_pool3d(shape, size):
    """Axes shorter than the window included (the window is clipped at the border)."""
    torch.manual_seed(size)
    volume = torch.randn(2, 3, *shape)
    expected = F.max_pool3d(volume, size, stride=1, padding=size // 2)
    assert torch.equal(_max_filter(volume, size), expected)
