"""Tests of graphreg.core.field.DisplacementField and of the differentiable pieces it is built on."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from graphreg.errors import GeometryError, GraphregError, ShapeError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.core.spatial import sample_points, warp
from graphreg.core.volume import Volume

from conftest import grid_centred_on

ROTATION = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture
def grid() -> Grid:
    """Fixed grid: anisotropic spacing, rotated, shifted."""
    return Grid((8, 9, 10), spacing=(0.8, 1.2, 2.5), origin=(10.0, -20.0, 5.0),
                direction=tuple(ROTATION.ravel()))


@pytest.fixture
def random_field(grid) -> DisplacementField:
    generator = torch.Generator().manual_seed(0)
    disp = torch.randn((1, 3, *grid.shape), generator=generator, dtype=torch.float64)
    return DisplacementField(disp, grid)


def _inside_points(grid: Grid, n: int, seed: int) -> np.ndarray:
    """World points whose voxel positions lie strictly inside ``grid``."""
    rng = np.random.default_rng(seed)
    voxels = rng.uniform(0.2, 1.0, size=(n, 3)) * (np.array(grid.shape) - 1.4)
    return grid.voxel_to_world(voxels)


def _moving_grid_around(grid: Grid) -> Grid:
    """A larger moving grid (other spacing, origin and direction) centred on ``grid``."""
    return grid_centred_on(grid, (12, 14, 16), (1.3, 0.9, 1.7), (1, 0, 0, 0, 0, -1, 0, 1, 0))


# ---------------------------------------------------------------------- construction
def test_smoke(grid):
    field = DisplacementField.identity(grid)
    assert field.shape == grid.shape and field.dtype == torch.float32
    assert field.to(dtype=torch.float64).dtype == torch.float64
    assert "DisplacementField(shape=(8, 9, 10)" in repr(field)


def test_exception(grid):
    message = r"spatial shape \(8, 9, 11\) does not match grid shape \(8, 9, 10\)"
    with pytest.raises(GeometryError, match=message):
        DisplacementField(torch.zeros(1, 3, 8, 9, 11), grid)
    with pytest.raises(ShapeError, match=r"expected shape \(1, 3, D, H, W\), got \(2, 3, 8, 9, 10\)"):
        DisplacementField(torch.zeros(2, 3, *grid.shape), grid)
    with pytest.raises(ShapeError, match="floating"):
        DisplacementField(torch.zeros(1, 3, *grid.shape, dtype=torch.int64), grid)
    bad = torch.zeros(1, 3, *grid.shape)
    bad[0, 1, 2, 3, 4] = float("nan")
    with pytest.raises(GraphregError, match="displacement: expected finite values, found 1"):
        DisplacementField(bad, grid)
    with pytest.raises(GeometryError, match="array: spatial shape"):
        DisplacementField.from_mm_array(np.zeros((8, 9, 9, 3)), grid)
    with pytest.raises(ShapeError, match=r"points_mm: expected shape \(N, 3\)"):
        DisplacementField.identity(grid).transform_points(np.zeros((4, 2)))
    with pytest.raises(GraphregError, match="interpolation"):
        DisplacementField.identity(grid).warp(Volume(np.zeros(grid.shape), grid), interpolation="cubic")


# ---------------------------------------------------------------------- unit conversion
def test_convention_mm_array(grid):
    """One voxel along z is one slice: 2.5 mm along the third direction column (ITK)."""
    disp = torch.zeros((1, 3, *grid.shape), dtype=torch.float64)
    disp[:, 0] = 1.0
    mm = DisplacementField(disp, grid).to_mm_array()
    assert mm.shape == (*grid.shape, 3) and mm.dtype == np.float64
    np.testing.assert_allclose(mm[3, 4, 5], ROTATION[:, 2] * 2.5, atol=1e-12)


def test_mm_array_and_sitk_round_trip(random_field):
    back = DisplacementField.from_mm_array(random_field.to_mm_array(), random_field.grid, dtype=torch.float64)
    torch.testing.assert_close(back.displacement, random_field.displacement, atol=1e-12, rtol=0)
    image = random_field.to_sitk()
    assert image.GetPixelID() == sitk.sitkVectorFloat64
    assert Grid.from_sitk(image) == random_field.grid
    back = DisplacementField.from_sitk(image, dtype=torch.float64)
    torch.testing.assert_close(back.displacement, random_field.displacement, atol=1e-12, rtol=0)


def test_l2r_array_layout(random_field):
    array = random_field.to_l2r_array()
    assert array.shape == (10, 9, 8, 3)
    # entry (i, j, k, c) = x/y/z component at voxel x = i, y = j, z = k
    disp = random_field.displacement[0].numpy()
    assert array[7, 2, 5, 0] == disp[2, 5, 2, 7]
    assert array[7, 2, 5, 2] == disp[0, 5, 2, 7]
    back = DisplacementField.from_l2r_array(array, random_field.grid, dtype=torch.float64)
    torch.testing.assert_close(back.displacement, random_field.displacement, atol=0, rtol=0)


# ---------------------------------------------------------------------- points
def test_transform_points_matches_sitk_transform(random_field):
    points = _inside_points(random_field.grid, 40, seed=1)
    transform = random_field.to_transform()
    expected = np.array([transform.TransformPoint(tuple(p)) for p in points])
    np.testing.assert_allclose(random_field.transform_points(points), expected, atol=1e-10)


def test_translation_maps_landmarks_to_analytic_places(grid):
    shift = np.array([3.5, -1.25, 7.0])
    affine = np.eye(4)
    affine[:3, 3] = shift
    field = DisplacementField.from_affine(affine, grid, dtype=torch.float64)
    points = _inside_points(grid, 25, seed=2)
    np.testing.assert_allclose(field.transform_points(points), points + shift, atol=1e-10)
    # outside the grid the border displacement is used: still the same translation
    far = grid.voxel_to_world(np.array([[-5.0, 3.0, 40.0]]))
    np.testing.assert_allclose(field.transform_points(far), far + shift, atol=1e-10)


def test_rotation_maps_landmarks_to_analytic_places(grid):
    angle = np.deg2rad(10.0)
    rot = np.array([[np.cos(angle), 0.0, np.sin(angle)], [0.0, 1.0, 0.0],
                    [-np.sin(angle), 0.0, np.cos(angle)]])
    centre = grid.voxel_to_world(np.array([3.5, 4.0, 4.5]))
    affine = np.eye(4)
    affine[:3, :3] = rot
    affine[:3, 3] = centre - rot @ centre
    field = DisplacementField.from_affine(affine, grid, dtype=torch.float64)
    points = _inside_points(grid, 25, seed=3)
    expected = (points - centre) @ rot.T + centre
    # trilinear interpolation reproduces an affine field exactly
    np.testing.assert_allclose(field.transform_points(points), expected, atol=1e-9)
    tensor_out = field.transform_points(torch.from_numpy(points))
    assert isinstance(tensor_out, torch.Tensor)
    np.testing.assert_allclose(tensor_out.numpy(), expected, atol=1e-9)


def test_transform_voxels_conventions(random_field):
    grid = random_field.grid
    points_mm = _inside_points(grid, 10, seed=4)
    voxels = grid.world_to_voxel(points_mm)
    in_fixed = random_field.transform_voxels(voxels)
    expected = random_field.transform_points(points_mm)
    np.testing.assert_allclose(grid.voxel_to_world(in_fixed), expected, atol=1e-10)
    moving_grid = _moving_grid_around(grid)
    in_moving = random_field.transform_voxels(voxels, moving_grid=moving_grid)
    np.testing.assert_allclose(moving_grid.voxel_to_world(in_moving), expected, atol=1e-10)


# ---------------------------------------------------------------------- images
@pytest.mark.parametrize("interpolation, sitk_interpolator",
                         [("linear", sitk.sitkLinear), ("nearest", sitk.sitkNearestNeighbor),
                          ("bspline", sitk.sitkBSpline)])
def test_warp_matches_sitk_resample_on_another_grid(random_field, interpolation, sitk_interpolator):
    moving_grid = _moving_grid_around(random_field.grid)
    rng = np.random.default_rng(5)
    moving = Volume(rng.uniform(0, 100, size=moving_grid.shape).astype(np.float32), moving_grid)
    warped = random_field.warp(moving, interpolation=interpolation, default=-7.0)
    expected = sitk.Resample(moving.to_sitk(), random_field.to_sitk(), random_field.to_transform(),
                             sitk_interpolator, -7.0, sitk.sitkFloat64)
    expected = sitk.GetArrayFromImage(expected)
    assert warped.grid == random_field.grid
    outside = np.mean(expected == -7.0)
    assert 0.05 < outside < 0.5  # the test covers both the inside and the default value
    np.testing.assert_allclose(warped.array, expected, atol=1e-10)


@pytest.mark.parametrize("interpolation, sitk_interpolator",
                         [("linear", sitk.sitkLinear), ("nearest", sitk.sitkNearestNeighbor)])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 2e-3)])
def test_warp_on_a_parallel_grid_matches_sitk_resample(random_field, interpolation, sitk_interpolator, flip,
                                                       dtype, atol):
    # axes parallel to the field's (another spacing and origin; y reversed when flip): the
    # axis-by-axis path of DisplacementField.warp
    direction = ROTATION @ np.diag([1.0, -1.0 if flip else 1.0, 1.0])
    moving_grid = grid_centred_on(random_field.grid, (8, 12, 10), (1.1, 0.8, 2.1), tuple(direction.ravel()))
    assert random_field.grid.normalized_axis_map(moving_grid) is not None
    rng = np.random.default_rng(7)
    moving = Volume(rng.uniform(0, 100, size=moving_grid.shape).astype(np.float32), moving_grid)
    warped = random_field.to(dtype=dtype).warp(moving, interpolation=interpolation, default=-7.0)
    expected = sitk.GetArrayFromImage(sitk.Resample(moving.to_sitk(), random_field.to_sitk(), random_field.to_transform(),
                                                    sitk_interpolator, -7.0, sitk.sitkFloat64))
    assert 0.05 < np.mean(expected == -7.0) < 0.5  # both the inside and the default value
    np.testing.assert_allclose(warped.array, expected, atol=atol)


def test_normalized_axis_map_only_for_parallel_axes(grid):
    assert grid.normalized_axis_map(_moving_grid_around(grid)) is None
    bases, gains = grid.normalized_axis_map(grid)
    assert [len(base) for base in bases] == list(grid.shape)
    np.testing.assert_allclose(bases[2][[0, -1]], [-1.0, 1.0])  # align_corners: the first and last voxel
    np.testing.assert_allclose(gains, 2.0 / (np.array(grid.shape) - 1))


def test_warp_labels_keep_dtype(random_field):
    moving_grid = _moving_grid_around(random_field.grid)
    labels = Volume((np.arange(np.prod(moving_grid.shape)) % 5).astype(np.uint8).reshape(moving_grid.shape),
                    moving_grid)
    warped = random_field.to(dtype=torch.float32).warp(labels, interpolation="nearest")
    assert warped.array.dtype == np.uint8
    assert set(np.unique(warped.array)) <= set(range(5))


def test_identity_warp_returns_the_image(grid):
    rng = np.random.default_rng(6)
    image = Volume(rng.normal(size=grid.shape), grid)
    warped = DisplacementField.identity(grid, dtype=torch.float64).warp(image)
    np.testing.assert_allclose(warped.array, image.array, atol=1e-12)


# ---------------------------------------------------------------------- Jacobian
def test_jacobian_of_affine_field_is_its_determinant(grid):
    linear = np.array([[1.1, 0.2, 0.0], [-0.1, 0.9, 0.15], [0.05, 0.0, 1.2]])
    affine = np.eye(4)
    affine[:3, :3] = linear
    field = DisplacementField.from_affine(affine, grid, dtype=torch.float64)
    jac = field.jacobian_determinant()
    assert jac.shape == grid.shape
    torch.testing.assert_close(jac, torch.full_like(jac, np.linalg.det(linear)), atol=1e-10, rtol=0)


# ---------------------------------------------------------------------- gradcheck of spatial
def test_gradcheck_warp():
    generator = torch.Generator().manual_seed(7)
    image = torch.rand((1, 2, 4, 5, 4), generator=generator, dtype=torch.float64, requires_grad=True)
    disp = (0.6 * torch.rand((1, 3, 4, 5, 4), generator=generator, dtype=torch.float64) - 0.3)
    disp.requires_grad_(True)
    assert torch.autograd.gradcheck(warp, (image, disp), eps=1e-6, atol=1e-5)


def test_gradcheck_sample_points():
    generator = torch.Generator().manual_seed(8)
    image = torch.rand((2, 1, 3, 3, 4), generator=generator, dtype=torch.float64, requires_grad=True)
    points = torch.rand((4, 3), generator=generator, dtype=torch.float64) * 1.6 + 0.2
    points.requires_grad_(True)
    assert torch.autograd.gradcheck(sample_points, (image, points), eps=1e-6, atol=1e-5)


def test_gradcheck_transform_points(grid):
    grid = Grid((3, 4, 3), grid.spacing, grid.origin, grid.direction)
    generator = torch.Generator().manual_seed(9)
    disp = torch.randn((1, 3, *grid.shape), generator=generator, dtype=torch.float64, requires_grad=True)
    points = torch.from_numpy(_inside_points(grid, 3, seed=10))

    def mapped(d):
        return DisplacementField(d, grid).transform_points(points)

    assert torch.autograd.gradcheck(mapped, (disp,), eps=1e-6, atol=1e-5)
