"""graphreg.core.spatial: the banded per-axis interpolation."""

import numpy as np
import pytest
import torch

import graphreg.core.spatial as spatial
from graphreg.core.spatial import axis_weights, interpolate_axis
from graphreg.errors import ShapeError


@pytest.mark.parametrize("dim", [0, 1, 2, 3])
@pytest.mark.parametrize("step", [0.37, -0.8, 1.6])
def test_interpolate_axis_in_bands_equals_the_whole_matrix_product(monkeypatch, dim, step):
    monkeypatch.setattr(spatial, "_BAND_COLUMNS", 4)  # many bands on a small volume
    volume = torch.randn((3, 9, 10, 11), generator=torch.Generator().manual_seed(dim), dtype=torch.float64)
    n = volume.shape[dim]
    coords = (n - 1) / 2 + step * (np.arange(23) - 11.0)  # some beyond the ends (clamped)
    weights = axis_weights(n, coords, torch.float64)
    expected = torch.tensordot(volume.movedim(dim, -1), weights, dims=1).movedim(-1, dim)
    torch.testing.assert_close(interpolate_axis(volume, dim, weights), expected, rtol=0, atol=1e-12)
    wide = torch.full(expected.shape[:dim] + (2 * expected.shape[dim],) + expected.shape[dim + 1:], 7.0,
                      dtype=torch.float64)
    strided = wide.narrow(dim, 1, expected.shape[dim])  # not contiguous: written in place
    assert interpolate_axis(volume, dim, weights, out=strided) is strided
    torch.testing.assert_close(strided, expected, rtol=0, atol=1e-12)
    assert (wide.narrow(dim, 0, 1) == 7.0).all()


def test_interpolate_axis_refuses_wrong_shapes():
    volume = torch.zeros((4, 5))
    with pytest.raises(ShapeError, match="weights: expected"):
        interpolate_axis(volume, 0, torch.zeros((5, 3)))
    with pytest.raises(ShapeError, match="out: expected"):
        interpolate_axis(volume, 0, axis_weights(4, torch.arange(3.0)), out=torch.zeros((4, 5)))
