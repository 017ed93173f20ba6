"""Tests of graphreg.core.volume: resampling onto another grid."""

import numpy as np

from graphreg.core.geometry import Grid
from graphreg.core.volume import Volume


def test_resampled_outside_takes_default_or_the_nearest_voxel():
    source = Volume(np.arange(27, dtype=np.float32).reshape(3, 3, 3), Grid((3, 3, 3), (2.0, 2.0, 2.0)))
    wider = Grid((5, 5, 5), (2.0, 2.0, 2.0), origin=(-2.0, -2.0, -2.0))  # one voxel more on every side
    padded = source.resampled(wider, "linear", default=-1.0).array
    extended = source.resampled(wider, "linear", extrapolate=True).array
    np.testing.assert_array_equal(padded[1:4, 1:4, 1:4], source.array)
    np.testing.assert_array_equal(extended[1:4, 1:4, 1:4], source.array)
    assert padded[0, 0, 0] == -1.0 and extended[0, 0, 0] == source.array[0, 0, 0]
    assert extended[4, 2, 0] == source.array[2, 1, 0]
