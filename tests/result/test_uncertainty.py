"""Keypoint spread -> graph-stage error in mm (graphreg.result.uncertainty) and its report.json entry."""

import numpy as np
import pytest
import torch

from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.result.registration import Registration
from graphreg.core.volume import Volume
from graphreg.result.uncertainty import (MAP_PREDICTS, PREDICTS, SCALES, graph_error_map, graph_error_mm,
                                         graph_error_report)


def test_scales_are_per_regulariser_and_ordered():
    assert set(SCALES) == {"corrfield", "graphregnet"}
    for scale in SCALES.values():
        assert 0 < scale.scale_median < scale.scale_p90


def test_graph_error_is_the_spread_scaled():
    spread = np.array([1.0, 2.0, 4.0])
    predicted = graph_error_mm("graphregnet", spread)
    scale = SCALES["graphregnet"]
    np.testing.assert_allclose(predicted["predicted_mm"], scale.scale_median * spread)
    np.testing.assert_allclose(predicted["p90_bound_mm"], scale.scale_p90 * spread)
    assert graph_error_mm("demons", spread) is None


def test_graph_error_exception():
    with pytest.raises(ValueError, match="spread_mm: expected shape"):
        graph_error_mm("corrfield", np.ones((3, 1)))


def _registration(method: str, spread) -> Registration:
    grid = Grid((4, 5, 6), (2.0, 2.0, 2.0))
    n = len(spread)
    return Registration(DisplacementField(torch.zeros(1, 3, *grid.shape), grid), grid, None, method, {"seed": 0},
                        {"total": 1.0}, keypoints_mm=np.zeros((n, 3)), keypoint_displacements_mm=np.zeros((n, 3)),
                        keypoint_uncertainty_mm=np.asarray(spread, dtype=np.float64))


def test_report_names_what_is_calibrated():
    report = _registration("corrfield", [1.0, 3.0]).report()
    entry = report["keypoint_graph_error_mm"]
    scale = SCALES["corrfield"]
    assert entry["predicts"] == PREDICTS
    assert entry["scale_median"] == scale.scale_median and entry["scale_p90"] == scale.scale_p90
    assert entry["predicted"]["mean"] == pytest.approx(2.0 * scale.scale_median)
    assert entry["p90_bound"]["max"] == pytest.approx(3.0 * scale.scale_p90)
    assert graph_error_report("corrfield", np.array([1.0, 3.0])) == entry


def test_report_without_calibration():
    assert "keypoint_graph_error_mm" not in _registration("oracle", [1.0]).report()


# ---------------------------------------------------------------------- the dense map
MAP_GRID = Grid((14, 16, 18), (2.0, 2.0, 2.0), origin=(-10.0, 5.0, 2.0))


def _lattice_keypoints() -> np.ndarray:
    """``(60, 3)`` world mm: a jittered 3 x 4 x 5 lattice inside :data:`MAP_GRID`."""
    axes = [np.linspace(2, n - 3, count) for n, count in zip(MAP_GRID.shape, (3, 4, 5))]
    voxels = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    voxels += np.random.default_rng(0).uniform(-0.5, 0.5, voxels.shape)
    return MAP_GRID.voxel_to_world(voxels)


def _map_registration(method: str, spread, config=None) -> Registration:
    points = _lattice_keypoints()
    return Registration(DisplacementField(torch.zeros(1, 3, *MAP_GRID.shape), MAP_GRID), MAP_GRID, None, method,
                        config or {"seed": 0}, {"total": 1.0}, keypoints_mm=points,
                        keypoint_displacements_mm=np.zeros_like(points), keypoint_uncertainty_mm=np.asarray(spread),
                        fixed_lungs=Volume(np.ones(MAP_GRID.shape, np.uint8), MAP_GRID))


@pytest.mark.parametrize("config", [None, {"densify": {"method": "bspline"}}])
def test_constant_spread_gives_a_constant_map(config):
    result = _map_registration("graphregnet", np.full(60, 2.0), config)
    error_map = result.uncertainty_map()
    assert error_map.grid.same_as(MAP_GRID) and error_map.array.dtype == np.float32
    np.testing.assert_allclose(error_map.array, 2.0 * SCALES["graphregnet"].scale_median, atol=1e-4)
    assert result.uncertainty_map() is error_map  # computed once


def test_a_large_spread_raises_the_map_near_its_keypoint_only():
    spread = np.ones(60)
    spread[0] = 20.0  # the lattice's first corner
    error_map = _map_registration("corrfield", spread).uncertainty_map().array
    baseline = SCALES["corrfield"].scale_median
    voxels = np.argwhere(np.ones(MAP_GRID.shape, bool))
    keypoints = MAP_GRID.world_to_voxel(_lattice_keypoints())
    distance = np.linalg.norm(MAP_GRID.voxel_to_world(voxels.astype(float)) - _lattice_keypoints()[0], axis=1)
    within = np.all((voxels >= keypoints.min(0)) & (voxels <= keypoints.max(0)), axis=1)  # the keypoints' box
    values = error_map.reshape(-1)
    assert values[distance < 4.0].mean() > 5 * baseline
    far = values[within & (distance > 20.0)]
    assert far.mean() == pytest.approx(baseline, rel=0.05)
    assert np.percentile(far, 5) > 0.8 * baseline and np.percentile(far, 95) < 1.2 * baseline
    assert values.min() >= 0.0  # beyond the keypoints the spline falls off; clipped at 0


def test_map_report_names_what_it_predicts():
    result = _map_registration("corrfield", np.full(60, 1.0))
    entry = result.uncertainty_report()
    scale = SCALES["corrfield"]
    assert entry["predicts"] == MAP_PREDICTS and "not the error of the final field" in MAP_PREDICTS
    assert entry["region"] == "fixed lungs" and entry["voxels"] == int(np.prod(MAP_GRID.shape))
    assert entry["predicted"]["p90"] == pytest.approx(scale.scale_median, abs=1e-4)
    assert entry["p90_bound"]["mean"] == pytest.approx(scale.scale_p90, abs=1e-4)


def test_no_map_without_calibration_or_keypoints():
    assert _map_registration("oracle", np.ones(60)).uncertainty_map() is None
    without = Registration(DisplacementField(torch.zeros(1, 3, *MAP_GRID.shape), MAP_GRID), MAP_GRID, None,
                           "corrfield", {"seed": 0}, {"total": 1.0})
    assert without.uncertainty_map() is None and without.uncertainty_report() is None


def test_graph_error_map_exception():
    with pytest.raises(ValueError, match="keypoints_mm: expected shape"):
        graph_error_map("corrfield", {}, MAP_GRID, np.zeros((3, 2)), np.ones(3))

