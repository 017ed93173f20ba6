"""The working pair: pre-alignment by whole working voxels only (no fractional resampling), and
anti-aliasing of images finer than the working grid."""

import numpy as np
import pytest

from graphreg.core.config import PreprocessConfig
from graphreg.errors import GeometryError
from graphreg.core.geometry import Grid
from graphreg.methods.keypoint.preprocess import whole_voxel_translation, working_pair
from graphreg.core.volume import Volume


def test_whole_voxel_translation_rounds_in_the_grid_frame():
    rotation = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z
    grid = Grid((10, 12, 14), (2.0, 2.0, 3.0), (5.0, -3.0, 1.0), rotation)
    translation = np.array([2.9, -1.1, 4.4])  # x, y, z mm
    rounded = whole_voxel_translation(grid, translation)
    voxels = grid.mm_vectors_to_voxel(rounded)
    np.testing.assert_allclose(voxels, np.round(voxels), atol=1e-9)
    np.testing.assert_allclose(voxels, np.round(grid.mm_vectors_to_voxel(translation)), atol=1e-9)
    assert np.all(np.abs(rounded - translation) <= np.asarray(grid.spacing) / 2 + 1e-9)


def test_prealignment_moves_the_moving_image_by_whole_voxels_without_interpolation():
    """Lung centres 4.5 mm apart along x (2.3 working voxels): the moving image is shifted by
    exactly 2 voxels, so its working intensities are its own voxels, not blends of them."""
    grid = Grid((20, 20, 24), (2.0, 2.0, 2.0))
    rng = np.random.default_rng(0)
    image = rng.uniform(-1000, 400, grid.shape).astype(np.float32)
    fixed_lungs = np.zeros(grid.shape, np.uint8)
    fixed_lungs[6:14, 6:14, 6:12] = 1
    moving_lungs = np.zeros(grid.shape, np.uint8)
    moving_lungs[6:14, 6:14, 8:14] = 1  # centre 2 voxels further along x ...
    moving_lungs[6:14, 6:10, 14] = 1  # ... and a bit more: 2.3 voxels in all
    config = PreprocessConfig(spacing_mm=2.0, crop_margin_mm=4.0, hu_min=-1000.0, hu_max=400.0)
    pair = working_pair(Volume(image, grid), Volume(image, grid), Volume(fixed_lungs, grid),
                        Volume(moving_lungs, grid), config)
    assert pair.translation_mm[0] == 4.0 and pair.translation_mm[1] == 0.0 and pair.translation_mm[2] == 0.0
    start = np.round(grid.world_to_voxel(np.asarray(pair.moving_grid.origin))).astype(int)  # z, y, x
    d, h, w = pair.moving.shape[2:]
    expected = (image[start[0]:start[0] + d, start[1]:start[1] + h, start[2]:start[2] + w] + 1000.0) / 1400.0
    np.testing.assert_allclose(pair.moving[0, 0].numpy(), expected, atol=1e-6)


def _second_moments(image: np.ndarray, spacing_zyx) -> np.ndarray:
    """Variance (mm²) of a non-negative image's mass along z, y and x."""
    total = image.sum()
    moments = []
    for axis, step in enumerate(spacing_zyx):
        position = np.arange(image.shape[axis]) * step
        profile = image.sum(axis=tuple(a for a in range(3) if a != axis)) / total
        mean = (profile * position).sum()
        moments.append((profile * (position - mean) ** 2).sum())
    return np.asarray(moments)


def test_antialiasing_kernel_has_the_box_variance_difference_along_coarsened_axes_only():
    """A unit impulse on a (x 0.5, y 1, z 2) mm grid, filtered for 2 mm voxels: the kernel's
    variance is (2² - s²) / 12 mm² along x and y and 0 along z, whose spacing does not grow."""
    grid = Grid((21, 41, 61), (0.5, 1.0, 2.0))
    impulse = np.zeros(grid.shape, np.float32)
    impulse[10, 20, 30] = 1.0
    smoothed = Volume(impulse, grid).antialiased((2.0, 2.0, 2.0))
    assert smoothed.grid is grid and smoothed.array.dtype == np.float32
    expected_zyx = [0.0, (4.0 - 1.0) / 12, (4.0 - 0.25) / 12]
    np.testing.assert_allclose(_second_moments(smoothed.array, (2.0, 1.0, 0.5)), expected_zyx, atol=1e-3)
    assert smoothed.array.sum() == pytest.approx(1.0, abs=1e-3)


def test_antialiasing_a_region_gives_the_same_resampled_values_from_a_crop():
    rotation = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    grid = Grid((30, 50, 60), (0.7, 0.8, 1.5), (3.0, -2.0, 1.0), rotation)
    volume = Volume(np.random.default_rng(2).normal(0.0, 1.0, grid.shape).astype(np.float32), grid)
    region = grid.with_spacing((2.0, 2.0, 2.0)).cropped((3, 4, 2), (10, 12, 9))
    cropped = volume.antialiased((2.0, 2.0, 2.0), region)
    assert np.prod(cropped.grid.shape) < 0.5 * np.prod(grid.shape)
    whole = volume.antialiased((2.0, 2.0, 2.0))
    np.testing.assert_allclose(cropped.resampled(region).array, whole.resampled(region).array, atol=1e-6)


def test_antialiasing_leaves_images_that_are_not_downsampled_alone():
    volume = Volume(np.zeros((4, 5, 6), np.int16), Grid((4, 5, 6), (2.0, 2.0, 2.0)))
    assert volume.antialiased((2.0, 2.0, 2.0)) is volume and volume.antialiased((1.0, 2.0, 0.5)) is volume
    with pytest.raises(GeometryError, match="three positive"):
        volume.antialiased((2.0, 0.0, 2.0))


def test_working_pair_antialiases_fine_images():
    """White noise at 0.5 mm sampled onto the 2 mm working grid: linear interpolation alone keeps
    nearly all of its variance (aliasing); the low-pass filter removes most of it."""
    grid = Grid((40, 40, 48), (0.5, 0.5, 0.5))
    rng = np.random.default_rng(1)
    image = rng.normal(-500.0, 100.0, grid.shape).astype(np.float32)
    lungs = np.zeros(grid.shape, np.uint8)
    lungs[12:28, 12:28, 14:34] = 1
    spreads = {}
    for antialias in (False, True):
        config = PreprocessConfig(spacing_mm=2.0, crop_margin_mm=2.0, prealign=False, antialias=antialias)
        pair = working_pair(Volume(image, grid), Volume(image, grid), Volume(lungs, grid), Volume(lungs, grid),
                            config)
        spreads[antialias] = float(pair.fixed.std()) * 2500.0  # back to HU
    assert spreads[False] > 60.0 and spreads[True] < 0.5 * spreads[False]
