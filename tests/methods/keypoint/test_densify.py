"""Tests of graphreg.methods.keypoint.densify (thin-plate spline and cubic B-spline densification)."""

import numpy as np
import pytest
import scipy.interpolate
import torch

from graphreg.core.config import RegistrationConfig, load_config
from graphreg.errors import GraphregError, ShapeError
from graphreg.methods.keypoint.densify import (
    bspline_axis_matrix,
    bspline_control_shape,
    bspline_dense_field,
    confidence_smoothing,
    densify,
    densify_options,
    densify_values,
    evaluate_bspline,
    fit_bspline,
    thin_plate_spline,
    tps_dense_field,
)
from graphreg.core.spatial import identity_grid

SHAPE = (20, 18, 22)
MATRIX = torch.tensor([[0.05, 0.02, -0.03], [0.0, -0.04, 0.01], [0.02, 0.01, 0.03]],
                      dtype=torch.float64)
OFFSET = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


def affine(points):
    return points @ MATRIX.T + OFFSET


def smooth(points):
    z, y, x = points.unbind(-1)
    return torch.stack([2 * torch.sin(z / 6), 1.5 * torch.cos(y / 7),
                        torch.sin(x / 8) * torch.cos(z / 9)], -1)


def keypoints(n=80, seed=0):
    torch.manual_seed(seed)
    return torch.rand(n, 3, dtype=torch.float64) * (torch.tensor(SHAPE, dtype=torch.float64) - 1)


def grid_points(shape=SHAPE):
    return identity_grid(shape, dtype=torch.float64)[0].permute(1, 2, 3, 0).reshape(-1, 3)


def as_points(field):
    return field[0].permute(1, 2, 3, 0).reshape(-1, 3)


def test_tps_interpolates_control_points():
    points = keypoints()
    values = torch.randn(80, 3, dtype=torch.float64)
    spline = thin_plate_spline(points, values, smoothing=0.0)
    assert (spline(points) - values).abs().max() < 1e-4
    assert spline(points.float()).dtype == torch.float32


def test_tps_large_smoothing_tends_to_affine_least_squares():
    points = keypoints()
    values = smooth(points)
    spline = thin_plate_spline(points, values, smoothing=1e9)
    design = torch.cat([torch.ones(80, 1, dtype=torch.float64), points], 1)
    fit = torch.linalg.lstsq(design, values).solution
    query = grid_points()[::37]
    torch.testing.assert_close(spline(query), query @ fit[1:] + fit[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("smoothing", [0.0, 0.9, 5.0, 50.0])
def test_tps_smoothing_is_scipys_linear_rbf(smoothing):
    """Smoothing of the right sign: with ``K + smoothing I`` (the wrong one) the system turns
    singular once the smoothing reaches an eigenvalue of ``-K`` (about 1 voxel here) and blows up."""
    points = keypoints(200, seed=3) * 3
    values = smooth(points) + torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    query = grid_points()[::23] * 3
    reference = scipy.interpolate.RBFInterpolator(points.numpy(), values.numpy(), kernel="linear",
                                                  smoothing=smoothing, degree=1)(query.numpy())
    torch.testing.assert_close(thin_plate_spline(points, values, smoothing)(query),
                               torch.from_numpy(reference), atol=1e-6, rtol=0)


@pytest.mark.parametrize("smoothing", [0.0, 5.0])
def test_tps_dense_field_reproduces_affine(smoothing):
    points = keypoints()
    field = tps_dense_field(points, affine(points), SHAPE, grid_step=3, smoothing=smoothing)
    assert field.shape == (1, 3, *SHAPE) and field.dtype == torch.float64
    torch.testing.assert_close(as_points(field), affine(grid_points()), atol=1e-8, rtol=0)


def test_tps_dense_field_smooth_field():
    points = keypoints(200)
    field = tps_dense_field(points, smooth(points), SHAPE, grid_step=2)
    grid = grid_points()
    inner = ((grid >= 3) & (grid <= torch.tensor(SHAPE) - 4)).all(1)  # no extrapolation
    reference = smooth(grid[inner])
    error = (as_points(field)[inner] - reference).norm(dim=1).mean() / reference.norm(dim=1).mean()
    assert error < 0.03


def test_bspline_basis_matches_scipy():
    spacing, n = 3.0, 17
    count = bspline_control_shape((n, n, n), spacing)[0]
    positions = torch.linspace(0, n - 1, 41, dtype=torch.float64)
    matrix = bspline_axis_matrix(positions, count, spacing)
    coefficients = np.random.default_rng(0).normal(size=count)
    knots = (np.arange(count + 4) - 3.0) * spacing  # control c is centred at (c - 1) * spacing
    expected = scipy.interpolate.BSpline(knots, coefficients, 3)(positions.numpy())
    np.testing.assert_allclose(matrix.numpy() @ coefficients, expected, atol=1e-12)
    torch.testing.assert_close(matrix.sum(1), torch.ones(41, dtype=torch.float64))


def test_bspline_reproduces_affine_and_smooth_fields():
    points = keypoints(300)
    field = bspline_dense_field(points, affine(points), SHAPE, control_spacing=5, smoothing=1.0)
    torch.testing.assert_close(as_points(field), affine(grid_points()), atol=1e-5, rtol=0)
    field = bspline_dense_field(points, smooth(points), SHAPE, control_spacing=4, smoothing=0.01)
    reference = smooth(grid_points())
    error = (as_points(field) - reference).norm(dim=1).mean() / reference.norm(dim=1).mean()
    assert error < 0.03


def test_bspline_smoothing_lowers_bending():
    points = keypoints(60)
    values = torch.randn(60, 3, dtype=torch.float64)
    rough = fit_bspline(points, values, SHAPE, control_spacing=4, smoothing=1e-4)
    calm = fit_bspline(points, values, SHAPE, control_spacing=4, smoothing=10.0)
    second = lambda c: torch.diff(c, n=2, dim=2).pow(2).sum()  # noqa: E731
    assert second(calm) < 0.1 * second(rough)


def test_gradcheck_bspline_evaluation():
    shape, spacing = (4, 3, 4), 2.0
    control = bspline_control_shape(shape, spacing)
    coefficients = torch.randn(1, 1, *control, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: evaluate_bspline(c, shape, spacing), (coefficients,))


def test_densify_dispatch_and_exceptions():
    points = keypoints()
    values = affine(points)
    for method in ("tps", "bspline"):
        assert densify(points, values, SHAPE, method=method).shape == (1, 3, *SHAPE)
    with pytest.raises(GraphregError, match="method"):
        densify(points, values, SHAPE, method="rbf")
    with pytest.raises(ShapeError, match="displacements"):
        tps_dense_field(points, values[:-1], SHAPE)
    with pytest.raises(GraphregError, match="shape"):
        tps_dense_field(points, values, (4, 4))
    with pytest.raises(GraphregError, match="singular"):
        thin_plate_spline(torch.zeros(5, 3), torch.zeros(5, 3))
    with pytest.raises(ShapeError, match="coefficients"):
        evaluate_bspline(torch.zeros(1, 3, 4, 4, 4), SHAPE, 4.0)
    with pytest.raises(GraphregError, match="control_spacing"):
        bspline_control_shape(SHAPE, 0.0)


def test_configured_tps_smoothing_gives_the_same_spline_in_mm_at_any_working_spacing():
    """``densify.smoothing`` is in mm: the spline through the same points (mm) is the same field in
    mm whether the working grid has 1.5 or 2.5 mm voxels; 2 mm keeps the former per-voxel 0.1."""
    generator = torch.Generator().manual_seed(4)
    points_mm = torch.rand(60, 3, generator=generator, dtype=torch.float64) * 60
    values_mm = torch.randn(60, 3, generator=generator, dtype=torch.float64) * 3
    query_mm = torch.rand(30, 3, generator=generator, dtype=torch.float64) * 60
    fields = []
    for spacing in (1.5, 2.5):
        config = RegistrationConfig()
        config.preprocess.spacing_mm, config.densify.smoothing = spacing, 10.0
        smoothing = densify_options(config)["smoothing"]
        spline = thin_plate_spline(points_mm / spacing, values_mm / spacing, smoothing=smoothing)
        fields.append(spline(query_mm / spacing) * spacing)
    torch.testing.assert_close(fields[0], fields[1], rtol=1e-4, atol=1e-4)  # cdist's rounding
    assert densify_options(RegistrationConfig())["smoothing"] == 0.1
    # the same smoothing in voxels is another spline in mm
    plain = [thin_plate_spline(points_mm / h, values_mm / h, smoothing=10.0 / 2)(query_mm / h) * h for h in (1.5, 2.5)]
    assert (plain[0] - plain[1]).abs().max() > 0.01


@pytest.mark.parametrize("method, options", [("tps", {"grid_step": 3, "smoothing": 0.1}),
                                             ("bspline", {"control_spacing": 4, "smoothing": 0.2})])
def test_densify_values_interpolates_channels_like_the_displacements(method, options):
    """Each channel is interpolated as a displacement component is (same spline, same options)."""
    points = keypoints()
    values = smooth(points)
    channels = densify_values(points, values, SHAPE, method=method, **options)
    torch.testing.assert_close(channels, densify(points, values, SHAPE, method=method, **options),
                               atol=1e-9, rtol=0)
    scalar = densify_values(points, values[:, :1].float(), SHAPE, method=method, **options)
    assert scalar.shape == (1, 1, *SHAPE) and scalar.dtype == torch.float32
    torch.testing.assert_close(scalar[0, 0].double(), channels[0, 0], atol=1e-5, rtol=0)
    constant = densify_values(points, torch.full((len(points), 1), 2.5, dtype=torch.float64), SHAPE,
                              method=method, **options)
    torch.testing.assert_close(constant, torch.full_like(constant, 2.5), atol=1e-5, rtol=0)  # CG tolerance
    with pytest.raises(GraphregError, match="method"):
        densify_values(points, values, SHAPE, method="rbf")


def test_uniform_per_point_smoothing_is_the_scalar_smoothing():
    points = keypoints()
    values = smooth(points)
    query = grid_points()[::29]
    scalar = thin_plate_spline(points, values, smoothing=3.0)(query)
    per_point = thin_plate_spline(points, values, smoothing=torch.full((80,), 3.0))(query)
    torch.testing.assert_close(per_point, scalar, atol=1e-10, rtol=0)
    weights = confidence_smoothing(3.0, torch.full((80,), 0.7))  # equal spreads: equal weights
    torch.testing.assert_close(thin_plate_spline(points, values, smoothing=weights)(query), scalar,
                               atol=1e-10, rtol=0)


def test_a_point_with_huge_smoothing_barely_pulls_the_field():
    """An outlier added to an affine field: interpolated it moves the field at its position by its
    whole offset; with a huge smoothing of its own it moves it by almost nothing, while the other
    points keep interpolating."""
    points = keypoints()
    values = affine(points)
    values[0] += torch.tensor([10.0, -8.0, 6.0], dtype=torch.float64)
    truth = affine(points)
    plain = thin_plate_spline(points, values)(points)
    assert (plain[0] - truth[0]).norm() > 10
    smoothing = torch.zeros(80, dtype=torch.float64)
    smoothing[0] = 1e8
    robust = thin_plate_spline(points, values, smoothing=smoothing)(points)
    assert (robust[0] - truth[0]).norm() < 0.01
    assert (robust[1:] - truth[1:]).abs().max() < 0.01


def test_confidence_smoothing_grows_with_the_squared_spread_ratio():
    spread = torch.tensor([1.0, 2.0, 4.0])
    torch.testing.assert_close(confidence_smoothing(0.5, spread), torch.tensor([0.125, 0.5, 2.0], dtype=torch.float64))
    torch.testing.assert_close(confidence_smoothing(0.5, torch.zeros(3)), torch.full((3,), 0.5, dtype=torch.float64))
    with pytest.raises(ShapeError, match="spread"):
        confidence_smoothing(0.5, torch.zeros(3, 1))
    with pytest.raises(GraphregError, match="smoothing"):
        thin_plate_spline(keypoints(), smooth(keypoints()), smoothing=-torch.ones(80))
    with pytest.raises(ShapeError, match="smoothing"):
        thin_plate_spline(keypoints(), smooth(keypoints()), smoothing=torch.ones(79))


def test_configured_confidence_weighting():
    config = RegistrationConfig()
    config.densify.confidence_weighting = True
    spread = torch.tensor([1.0, 1.0, 3.0])
    torch.testing.assert_close(densify_options(config, spread)["smoothing"],
                               torch.tensor([0.1, 0.1, 0.9], dtype=torch.float64))
    with pytest.raises(GraphregError, match="config key 'densify.confidence_weighting': expected method 'tps'"):
        load_config({"densify": {"method": "bspline", "confidence_weighting": True}})
