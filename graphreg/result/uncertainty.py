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

:func:`graph_error_map` densifies the predicted error like the displacements (the config's
densifier, clipped at 0): a dense map of the predicted *graph-stage* error, again not of the final
field's error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from graphreg.errors import ShapeError

if TYPE_CHECKING:  # pragma: no cover
    from graphreg.core.geometry import Grid
    from graphreg.core.volume import Volume


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
#: 4dct5-4dct8, seed 77; 2 mm; default config, shipped GraphRegNet weights of 2026-12-07);
#: docs/uncertainty.md.
SCALES = {"corrfield": ErrorScale(0.136, 0.310), "graphregnet": ErrorScale(0.195, 0.423)}

#: What the calibrated numbers predict, as named in ``report.json``.
PREDICTS = "graph-stage keypoint error |d - d_true| (before densification and instance optimisation)"
#: What the dense map predicts, as named in ``report.json``.
MAP_PREDICTS = ("graph-stage error (mm) of the keypoint displacements densified like the field, before "
                "instance optimisation; not the error of the final field")


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


def graph_error_map(method: str, config: dict, grid: "Grid", keypoints_mm: np.ndarray,
                    spread_mm: np.ndarray) -> Optional["Volume"]:
    """The predicted graph-stage error of :func:`graph_error_mm` densified on ``grid``.

    The keypoints' predicted errors are interpolated by the densifier of ``config["densify"]``
    (:func:`graphreg.methods.keypoint.densify.densify_values` with
    :func:`graphreg.methods.keypoint.densify.densify_options`, as the displacements are) and
    clipped at 0 (the spline can undershoot between large and small values). Multiplying by
    ``scale_p90 / scale_median`` gives the dense 90 % bound (the interpolant is linear).

    Args:
        method: the registration method (others than those of :data:`SCALES` give None).
        config: the registration's configuration as a plain dict (``RegistrationConfig.to_dict()``).
        grid: where to evaluate the map (the working grid of the field).
        keypoints_mm: ``(N, 3)`` fixed keypoints, world mm; spread_mm: ``(N,)`` their spreads, mm.

    Returns:
        A float32 :class:`~graphreg.core.volume.Volume` on ``grid`` (mm), or None without a calibration.

    Raises:
        ShapeError: ``keypoints_mm`` is not ``(N, 3)`` for the ``N`` spreads.
    """
    import torch

    from graphreg.core.config import load_config
    from graphreg.core.volume import Volume
    from graphreg.methods.keypoint.densify import densify_options, densify_values

    predicted = graph_error_mm(method, spread_mm)
    if predicted is None:
        return None
    points = np.asarray(keypoints_mm, dtype=np.float64)
    if points.shape != (len(predicted["predicted_mm"]), 3):
        raise ShapeError(f"keypoints_mm: expected shape ({len(predicted['predicted_mm'])}, 3), got {points.shape}")
    cfg = load_config(config)
    voxels = torch.from_numpy(grid.world_to_voxel(points))
    values = torch.from_numpy(predicted["predicted_mm"][:, None])
    dense = densify_values(voxels, values, grid.shape, method=cfg.densify.method, **densify_options(cfg))
    return Volume(dense[0, 0].clamp_min(0.0).numpy().astype(np.float32), grid)


def graph_error_map_report(method: str, error_map: "Volume", region: np.ndarray, region_name: str) -> dict:
    """The ``report.json`` entry ``uncertainty_map``: what the map predicts, where it is summarised
    and the mean / median / 90th percentile of the predicted error and of its 90 % bound (mm) there.

    Shapes:
        error_map: a :func:`graph_error_map` of ``method``; region: boolean on its grid (not empty).
    """
    scale = SCALES[method]
    values = np.asarray(error_map.array, dtype=np.float64)[region]
    stats = {"mean": float(values.mean()), "p50": float(np.median(values)), "p90": float(np.percentile(values, 90))}
    ratio = scale.scale_p90 / scale.scale_median
    return {"predicts": MAP_PREDICTS, "region": region_name, "voxels": int(values.size),
            "predicted": stats, "p90_bound": {key: value * ratio for key, value in stats.items()}}


__all__ = ["ErrorScale", "MAP_PREDICTS", "PREDICTS", "SCALES", "graph_error_map", "graph_error_map_report",
           "graph_error_mm", "graph_error_report"]
