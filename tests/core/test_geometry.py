"""Tests of graphreg.core.geometry.Grid: every coordinate conversion against ITK or an analytic answer."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from graphreg.errors import GeometryError, ShapeError
from graphreg.core.geometry import ALIGN_CORNERS, Grid

ROTATION = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
    [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


@pytest.fixture
def grid() -> Grid:
    """Anisotropic, rotated, shifted grid (the hard case for every conversion)."""
    return Grid((5, 6, 7), spacing=(0.7, 1.3, 2.5), origin=(-12.0, 30.5, 4.25),
                direction=tuple(ROTATION.ravel()))


def _sitk_image(grid: Grid) -> sitk.Image:
    image = sitk.Image(list(grid.size_xyz), sitk.sitkFloat32)
    grid.apply_to_sitk(image)
    return image


def test_convention_voxel_to_world_matches_sitk(grid):
    image = _sitk_image(grid)
    rng = np.random.default_rng(0)
    voxels = rng.uniform(-1, 6, size=(20, 3))  # (z, y, x), also outside the grid
    expected = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(v[::-1])) for v in voxels])
    np.testing.assert_allclose(grid.voxel_to_world(voxels), expected, atol=1e-10)


def test_voxel_world_voxel_round_trip_exact(grid):
    rng = np.random.default_rng(1)
    voxels = rng.uniform(-2, 8, size=(50, 3))
    np.testing.assert_allclose(grid.world_to_voxel(grid.voxel_to_world(voxels)), voxels, atol=1e-12)
    tensor = torch.from_numpy(voxels)
    back = grid.world_to_voxel(grid.voxel_to_world(tensor))
    assert back.dtype == torch.float64
    torch.testing.assert_close(back, tensor, atol=1e-12, rtol=0)


def test_voxel_vectors_to_mm_is_the_difference_of_points(grid):
    rng = np.random.default_rng(2)
    start = rng.uniform(0, 4, size=(10, 3))
    vectors = rng.normal(size=(10, 3))
    expected = grid.voxel_to_world(start + vectors) - grid.voxel_to_world(start)
    mm = grid.voxel_vectors_to_mm(vectors)
    np.testing.assert_allclose(mm, expected, atol=1e-12)
    np.testing.assert_allclose(grid.mm_vectors_to_voxel(mm), vectors, atol=1e-12)
    # one voxel along z is one slice: the third direction column times the z spacing
    np.testing.assert_allclose(grid.voxel_vectors_to_mm(np.array([1.0, 0.0, 0.0])),
                               ROTATION[:, 2] * 2.5, atol=1e-12)


def test_from_sitk_apply_to_sitk_round_trip(grid):
    back = Grid.from_sitk(_sitk_image(grid))
    assert back == grid
    assert back.same_as(grid)


def test_with_spacing_keeps_extent_and_origin():
    grid = Grid((10, 20, 30), spacing=(1.0, 1.0, 2.5), origin=(3.0, -4.0, 5.0))
    coarse = grid.with_spacing((2.0, 2.0, 2.5))
    assert coarse.shape == (10, 10, 15)
    assert coarse.origin == grid.origin
    np.testing.assert_allclose(coarse.extent_mm, grid.extent_mm)
    with pytest.raises(GeometryError, match="spacing"):
        grid.with_spacing((1.0, 0.0, 1.0))


def test_cropped_places_voxels_where_they_were(grid):
    start, stop = (1, 2, 3), (4, 6, 7)
    crop = grid.cropped(start, stop)
    assert crop.shape == (3, 4, 4)
    voxels = np.array([[0.0, 0.0, 0.0], [2.0, 3.0, 3.0], [1.5, 0.25, 2.0]])
    np.testing.assert_allclose(crop.voxel_to_world(voxels), grid.voxel_to_world(voxels + start), atol=1e-12)
    with pytest.raises(GeometryError, match="axis y"):
        grid.cropped((0, 4, 0), (1, 4, 1))


def test_normalized_round_trip_and_corners(grid):
    corners = np.array([[0.0, 0.0, 0.0], [4.0, 5.0, 6.0]])
    np.testing.assert_allclose(grid.voxel_to_normalized(corners), [[-1, -1, -1], [1, 1, 1]])
    # component order flips to (x, y, z): the x index 6 of 7 voxels -> +1, z index 0 -> -1
    np.testing.assert_allclose(grid.voxel_to_normalized(np.array([0.0, 2.5, 6.0])), [1.0, 0.0, -1.0])
    rng = np.random.default_rng(3)
    voxels = torch.from_numpy(rng.uniform(0, 4, size=(8, 3)))
    torch.testing.assert_close(grid.normalized_to_voxel(grid.voxel_to_normalized(voxels)), voxels)


def test_field_voxel_to_normalized_samples_the_known_voxel():
    """A constant shift of (1, -2, 3) voxels read through grid_sample picks exactly that voxel."""
    shape = (5, 6, 7)
    grid = Grid(shape)
    volume = torch.arange(np.prod(shape), dtype=torch.float64).reshape(1, 1, *shape)
    shift = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64).view(1, 3, 1, 1, 1).expand(1, 3, *shape)
    axes = [torch.arange(n, dtype=torch.float64) for n in shape]
    voxels = torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]  # (1, 3, D, H, W)
    sample_grid = grid.field_voxel_to_normalized(voxels + shift) - 1.0  # absolute positions
    warped = F.grid_sample(volume, sample_grid, mode="bilinear", align_corners=ALIGN_CORNERS)
    # z in [0, 3], y in [2, 5], x in [0, 3] stay inside: out[z, y, x] = in[z + 1, y - 2, x + 3]
    torch.testing.assert_close(warped[0, 0, :4, 2:, :4], volume[0, 0, 1:, :4, 3:])
    # the relative form: normalised displacement added to an identity grid
    identity = grid.field_voxel_to_normalized(voxels) - 1.0
    relative = identity + grid.field_voxel_to_normalized(shift)
    torch.testing.assert_close(relative, sample_grid)


def test_exception():
    with pytest.raises(GeometryError, match="shape"):
        Grid((4, 0, 4))
    with pytest.raises(GeometryError, match="direction"):
        Grid((4, 4, 4), direction=(1, 0, 0, 0, 0, 0, 0, 0, 1))
    with pytest.raises(ShapeError, match=r"points_zyx: expected shape \(\.\.\., 3\)"):
        Grid((4, 4, 4)).voxel_to_world(np.zeros((5, 2)))
    with pytest.raises(ShapeError, match="field"):
        Grid((4, 4, 4)).field_voxel_to_normalized(torch.zeros(1, 2, 4, 4, 4))
