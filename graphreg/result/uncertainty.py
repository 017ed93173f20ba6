"""Keypoint uncertainty in millimetres: the regulariser's spread scaled to the graph-stage error.

A keypoint method reports, per keypoint, the spread ``s`` (mm) of the coarse level's displacement
distribution (:attr:`~graphreg.result.registration.Registration.keypoint_uncertainty_mm`). That
spread ranks keypoints by the error of their *graph-stage* displacement ``|d - d_true|`` (the
regulariser's output, before densification and instance optimisation), but it is about 4-7 times
that error. :data:`SCALES` turns it into millimetres: ``scale_median * s`` is the predicted
(median) error, ``scale_p90 * s`` a bound the error stays under at 90 % of the keypoints.

It does not predict the error of the final field at the keypoints (after instance optimisation):
no per-keypoint signal tried reached a rank correlation of 0.5 with that error. The fit, its
held-out pairs and the benchmark scores are in ``docs/uncertainty.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from graphreg.errors import ShapeError


@dataclass(frozen=True)
class ErrorScale:
    """Spread -> graph-stage error (mm) of one regulariser.

    Attributes:
        scale_median: predicted error = ``scale_median * spread``: the median over held-out keypoints
            of ``error / spread``.
        scale_p90: 90 % bound = ``scale_p90 * spread``: the 90th percentile of ``error / spread``.
    """

    scale_median: float
    scale_p90: float


#: Fitted on 4 held-out realistic pairs (training anatomies 10500-10503, DIR-Lab motion sets
#: 4dct5-4dct8, seed 77; 2 mm; default config, shipped GraphRegNet weights); docs/uncertainty.md.
SCALES = {"corrfield": ErrorScale(0.136, 0.310), "graphregnet": ErrorScale(0.244, 0.603)}

#: What the calibrated numbers predict, as named in ``report.json``.
PREDICTS = "graph-stage keypoint error |d - d_true| (before densification and instance optimisation)"


def graph_error_mm(method: str, spread_mm: np.ndarray) -> Optional[dict]:
    """The predicted graph-stage error of each keypoint, for a regulariser of :data:`SCALES`.

    Args:
        method: the registration method (``"corrfield"`` or ``"graphregnet"``; others give None).
        spread_mm: ``(N,)`` keypoint spreads, mm.

    Returns:
        ``{"predicted_mm": (N,), "p90_bound_mm": (N,)}`` float64 arrays, or None when ``method``
        has no calibration.

    Raises:
        ShapeError: ``spread_mm`` is not one-dimensional.
    """
    scale = SCALES.get(method)
    if scale is None:
        return None
    spread = np.asarray(spread_mm, dtype=np.float64)
    if spread.ndim != 1:
        raise ShapeError(f"spread_mm: expected shape (N,), got {spread.shape}")
    return {"predicted_mm": scale.scale_median * spread, "p90_bound_mm": scale.scale_p90 * spread}


def graph_error_report(method: str, spread_mm: np.ndarray) -> Optional[dict]:
    """The ``report.json`` entry ``keypoint_graph_error_mm``: what is predicted, the scales, and the
    mean / median / max of the predicted error and its 90 % bound (mm); None without a calibration."""
    predicted = graph_error_mm(method, spread_mm)
    if predicted is None:
        return None
    scale = SCALES[method]
    summary = {"predicts": PREDICTS, "scale_median": scale.scale_median, "scale_p90": scale.scale_p90}
    for key, values in predicted.items():
        name = key.removesuffix("_mm")
        summary[name] = {"mean": float(values.mean()), "p50": float(np.median(values)), "max": float(values.max())}
    return summary


__all__ = ["ErrorScale", "PREDICTS", "SCALES", "graph_error_mm", "graph_error_report"]
