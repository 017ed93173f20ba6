"""Keypoint spread -> graph-stage error in mm (graphreg.result.uncertainty) and its report.json entry."""

import numpy as np
import pytest
import torch

from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.result.registration import Registration
from graphreg.result.uncertainty import PREDICTS, SCALES, graph_error_mm, graph_error_report


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
