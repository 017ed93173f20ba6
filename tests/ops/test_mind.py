"""Tests of graphreg.ops.mind (MIND-SSC) and the shared filters it uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from graphreg.errors import GraphregError, ShapeError
from graphreg.ops.filters import (
    box_filter,
    derivative_5tap,
    filter_axis,
    gaussian_filter,
    gradient_5tap,
    shift,
)
from graphreg.ops.mind import NEIGHBOURS, PAIRS, mind_ssc


def _smooth_volume(shape=(24, 20, 22), seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand((1, 1) + shape, generator=generator, dtype=torch.float64)
    return gaussian_filter(noise, 1.5)


# ----------------------------------------------------------------------------- filters
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_filter_axis_matches_scipy_nearest(axis):
    volume = torch.rand(2, 3, 7, 8, 9, dtype=torch.float64)
    weights = [0.1, -0.7, 0.25, 0.0, 2.0]
    out = filter_axis(volume, weights, axis)
    expected = ndimage.correlate1d(volume.numpy(), weights, axis=axis + 2, mode="nearest")
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)


def test_filter_axis_kernel_longer_than_volume():
    volume = torch.arange(2.0, dtype=torch.float64).reshape(1, 1, 1, 1, 2)
    out = filter_axis(volume, [1.0] * 7, axis=2)
    expected = ndimage.correlate1d(volume.numpy(), [1.0] * 7, axis=4, mode="nearest")
    np.testing.assert_allclose(out.numpy(), expected)


def test_gaussian_and_box_match_scipy():
    volume = torch.rand(1, 2, 9, 10, 11, dtype=torch.float64)
    smoothed = gaussian_filter(volume, 1.2, truncate=3.0)
    expected = ndimage.gaussian_filter(volume.numpy(), (0, 0, 1.2, 1.2, 1.2), mode="nearest",
                                       truncate=3.0)
    np.testing.assert_allclose(smoothed.numpy(), expected, atol=1e-12)
    boxed = box_filter(volume, 1)
    expected = ndimage.uniform_filter(volume.numpy(), (1, 1, 3, 3, 3), mode="nearest")
    np.testing.assert_allclose(boxed.numpy(), expected, atol=1e-12)


def test_derivative_5tap_exact_for_cubic():
    z = torch.arange(12, dtype=torch.float64).view(1, 1, 12, 1, 1).expand(1, 1, 12, 3, 4)
    volume = z**3 - 2 * z
    derivative = derivative_5tap(volume, axis=0)[0, 0, 2:-2]
    np.testing.assert_allclose(derivative.numpy(), (3 * z**2 - 2)[0, 0, 2:-2].numpy(), atol=1e-9)
    gradient = gradient_5tap(volume)
    assert gradient.shape == (1, 3, 12, 3, 4)
    assert gradient[:, 1:].abs().max() < 1e-9


def test_shift_replicates_border():
    volume = torch.arange(5.0).view(1, 1, 1, 1, 5)
    assert shift(volume, (0, 0, 2)).flatten().tolist() == [2, 3, 4, 4, 4]
    assert shift(volume, (0, 0, -1)).flatten().tolist() == [0, 0, 1, 2, 3]
    assert shift(volume, (0, 0, 9)).flatten().tolist() == [4] * 5


def test_filters_exception():
    with pytest.raises(ShapeError, match="volume"):
        box_filter(torch.zeros(4, 4, 4), 1)
    with pytest.raises(GraphregError, match="weights"):
        filter_axis(torch.zeros(1, 1, 4, 4, 4), [0.5, 0.5], 0)
    with pytest.raises(GraphregError, match="sigma"):
        gaussian_filter(torch.zeros(1, 1, 4, 4, 4), -1.0)
    with pytest.raises(GraphregError, match="offset"):
        shift(torch.zeros(1, 1, 4, 4, 4), (0.5, 0, 0))


def test_filters_gradcheck():
    volume = torch.rand(1, 1, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: gaussian_filter(v, 0.7), (volume,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda v: derivative_5tap(v, 2), (volume,), fast_mode=True)


# ----------------------------------------------------------------------------- MIND
def test_pairs_are_the_12_edge_pairs():
    assert len(PAIRS) == 12
    for i, j in PAIRS:
        a, b = np.array(NEIGHBOURS[i]), np.array(NEIGHBOURS[j])
        assert np.sum((a - b) ** 2) == 2


def test_smoke():
    image = torch.rand(2, 1, 10, 11, 12)
    mind = mind_ssc(image)
    assert mind.shape == (2, 12, 10, 11, 12)
    assert mind.dtype == torch.float32
    assert torch.all(mind > 0) and torch.all(mind <= 1)
    # the channel with the smallest patch distance is exactly exp(0) = 1 everywhere
    assert torch.allclose(mind.amax(dim=1), torch.ones(()))
    assert mind_ssc(image, out_dtype=torch.float16).dtype == torch.float16


def test_convention_matches_definition():
    """One voxel by hand: radius 0, dilation 1, interior voxel."""
    generator = torch.Generator().manual_seed(5)
    image = torch.rand(1, 1, 5, 5, 5, dtype=torch.float64, generator=generator)
    mind = mind_ssc(image, radius=0, dilation=1)
    values = image[0, 0].numpy()
    neighbour = [values[tuple(np.array([2, 2, 2]) + offset)] for offset in NEIGHBOURS]
    distance = np.array([(neighbour[i] - neighbour[j]) ** 2 for i, j in PAIRS])
    distance -= distance.min()
    # (the variance clamp at [0.001, 1000] x the image-wide mean does not bind for this image)
    expected = np.exp(-distance / distance.mean())
    np.testing.assert_allclose(mind[0, :, 2, 2, 2].numpy(), expected, rtol=1e-10)


def test_invariant_to_linear_intensity_change():
    image = _smooth_volume().float() * 800 - 1000
    reference = mind_ssc(image, radius=1, dilation=2)
    for a, b in [(3.7, 120.0), (0.05, -4.0)]:
        changed = mind_ssc(a * image + b, radius=1, dilation=2)
        torch.testing.assert_close(changed, reference, atol=2e-4, rtol=1e-3)


def test_constant_image_is_all_ones():
    mind = mind_ssc(torch.full((1, 1, 6, 6, 6), 3.0))
    assert torch.all(mind == 1)


def test_sensitive_to_structure():
    image = _smooth_volume()
    other = _smooth_volume(seed=1)
    assert (mind_ssc(image) - mind_ssc(other)).abs().mean() > 0.05


def test_exception():
    with pytest.raises(ShapeError, match="image"):
        mind_ssc(torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ShapeError, match="image"):
        mind_ssc(torch.zeros(4, 4, 4))
    with pytest.raises(GraphregError, match="dilation"):
        mind_ssc(torch.zeros(1, 1, 4, 4, 4), dilation=0)
    with pytest.raises(GraphregError, match="radius"):
        mind_ssc(torch.zeros(1, 1, 4, 4, 4), radius=1.5)


def test_gradcheck():
    image = torch.rand(1, 1, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: mind_ssc(v, radius=1, dilation=1), (image,),
                                    fast_mode=True)
