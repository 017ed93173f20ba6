"""Pre-alignment of the working pair: whole working voxels only (no fractional resampling)."""

import numpy as np

from graphreg.config import PreprocessConfig
from graphreg.geometry import Grid
from graphreg.pipeline.preprocess import whole_voxel_translation, working_pair
from graphreg.volume import Volume


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
