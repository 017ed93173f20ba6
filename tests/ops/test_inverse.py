"""Tests of graphreg.ops.inverse: the inverse of a field on another grid, and the round-trip error."""

import numpy as np
import pytest
import torch

from graphreg.errors import GraphregError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.ops.inverse import invert_field, round_trip_error_mm, solve3x3

from conftest import grid_centred_on

ROTATION = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture
def fixed_grid() -> Grid:
    return Grid((10, 12, 14), spacing=(1.5, 1.2, 2.0), origin=(10.0, -20.0, 5.0), direction=tuple(ROTATION.ravel()))


@pytest.fixture
def moving_grid(fixed_grid) -> Grid:
    """Another spacing, direction and size, over about the same region."""
    return grid_centred_on(fixed_grid, (9, 15, 11), (1.7, 1.1, 1.9), (1, 0, 0, 0, 0, -1, 0, 1, 0))


def _voxel_points(grid: Grid) -> np.ndarray:
    return grid.voxel_to_world(np.argwhere(np.ones(grid.shape)).astype(np.float64))


def _affine(matrix: np.ndarray, shift_mm) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = matrix
    affine[:3, 3] = shift_mm
    return affine


def test_solve3x3_matches_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 3, 3)) + 3 * np.eye(3)
    r = rng.normal(size=(5, 3))
    x, det = solve3x3(torch.from_numpy(a).permute(1, 2, 0), torch.from_numpy(r).T)
    np.testing.assert_allclose(x.T.numpy(), np.linalg.solve(a, r[:, :, None])[:, :, 0], atol=1e-12)
    np.testing.assert_allclose(det.numpy(), np.linalg.det(a), atol=1e-12)


def test_inverse_of_a_translation_on_another_grid(fixed_grid, moving_grid):
    shift = np.array([3.0, -2.5, 4.0])
    field = DisplacementField.from_affine(_affine(np.eye(3), shift), fixed_grid, dtype=torch.float64)
    inverse, info = invert_field(field, moving_grid)
    assert inverse.grid == moving_grid
    np.testing.assert_allclose(inverse.to_mm_array(), np.broadcast_to(-shift, (*moving_grid.shape, 3)), atol=1e-6)
    assert info["max_residual_mm"] < 1e-3


def test_convention_inverse_of_an_affine_maps_back(fixed_grid, moving_grid):
    """T(x) = A x + b sampled on the fixed grid; at every moving voxel y: y + v(y) = A^-1 (y - b)."""
    matrix = np.array([[1.05, 0.08, 0.0], [-0.05, 0.95, 0.04], [0.02, 0.0, 1.1]])
    affine = _affine(matrix, [1.0, 2.0, -1.5])
    field = DisplacementField.from_affine(affine, fixed_grid, dtype=torch.float64)
    inverse, info = invert_field(field, moving_grid, tolerance_mm=1e-6)
    y = _voxel_points(moving_grid)
    expected = (y - affine[:3, 3]) @ np.linalg.inv(matrix).T
    pre_image = fixed_grid.world_to_voxel(expected)
    inside = np.all((pre_image >= 0) & (pre_image <= np.array(fixed_grid.shape) - 1), axis=1)
    assert 0.3 < inside.mean() < 1.0  # both regions are covered
    np.testing.assert_allclose(inverse.transform_points(y)[inside], expected[inside], atol=1e-5)
    assert info["max_residual_mm"] < 1e-6 and info["iterations"] >= 1


def test_round_trip_of_a_smooth_nonlinear_field(fixed_grid):
    generator = torch.Generator().manual_seed(1)
    coarse = 0.3 * torch.randn((1, 3, 3, 4, 4), generator=generator, dtype=torch.float64)
    disp = torch.nn.functional.interpolate(coarse, size=fixed_grid.shape, mode="trilinear", align_corners=True)
    field = DisplacementField(disp, fixed_grid)
    inverse, info = invert_field(field, fixed_grid, tolerance_mm=1e-4)
    y = _voxel_points(fixed_grid)
    back = field.transform_points(inverse.transform_points(y))  # T(T^-1(y)) at the inverse's nodes
    assert np.abs(back - y).max() < 1e-4 and info["max_residual_mm"] < 1e-4
    inner = fixed_grid.voxel_to_world(np.argwhere(np.ones((6, 8, 10))).astype(np.float64) + 2)
    error = round_trip_error_mm(field, inverse, inner)  # T^-1(T(x)) between the nodes: interpolation only
    naive = round_trip_error_mm(field, DisplacementField(-disp, fixed_grid), inner)  # v = -u
    assert error.shape == (len(inner),) and error.mean() < 0.05 and error.mean() < naive.mean() / 2


def test_exception(fixed_grid):
    field = DisplacementField.identity(fixed_grid)
    with pytest.raises(GraphregError, match="iterations: expected an int >= 1, got 0"):
        invert_field(field, fixed_grid, iterations=0)
    with pytest.raises(GraphregError, match="tolerance_mm: expected a positive number"):
        invert_field(field, fixed_grid, tolerance_mm=0.0)
