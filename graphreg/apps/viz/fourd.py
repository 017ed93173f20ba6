"""Figures of a 4D registration (:mod:`graphreg.analysis.fourd`): point trajectories through the phases and
the mid-position image beside the reference phase."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from graphreg.errors import GraphregError
from graphreg.core.volume import Volume
from graphreg.apps.viz.slices import (
    PLANES,
    DisplayFrame,
    _check_grid,
    _figure,
    _label,
    _mask_contour,
    _show,
    _slices,
    intensity_window,
)

#: axis names of world mm (LPS): +x left, +y posterior, +z superior
AXIS_LABELS = ("x (right -> left)", "y (anterior -> posterior)", "z (inferior -> superior)")


def plot_trajectories(names: Sequence[str], positions: np.ndarray, reference: int,
                      labels: Optional[Sequence[str]] = None):
    """Displacement from the reference position against the phase, one panel per world axis and
    one line per point.

    Shapes:
        positions: ``(P, N_phases, 3)`` world mm (:func:`graphreg.analysis.fourd.trajectories`).
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 3 or positions.shape[1:] != (len(names), 3):
        raise GraphregError(f"positions: expected shape (P, {len(names)}, 3), got {positions.shape}")
    labels = list(labels) if labels is not None else [f"point {i}" for i in range(len(positions))]
    shifts = positions - positions[:, reference:reference + 1]
    figure = _figure(3, 1, width=4.2, height=3.4)
    panels = figure.subplots(1, 3, squeeze=False)[0]
    phases = np.arange(len(names))
    for axis, axes in enumerate(panels):
        for label, shift in zip(labels, shifts):
            axes.plot(phases, shift[:, axis], marker="o", markersize=3, label=label)
        axes.axhline(0.0, color="0.6", linewidth=0.8)
        axes.set_xticks(phases, names, rotation=60, fontsize=7)
        axes.set_title(f"d{AXIS_LABELS[axis]}", fontsize=9)
        axes.set_ylabel("displacement from the reference phase (mm)", fontsize=8)
    panels[0].legend(fontsize=7)
    return figure


def plot_midposition(reference: Volume, midposition: Volume, mask: Optional[Volume] = None,
                     reference_name: str = "reference phase"):
    """The reference phase, the mid-position image and their difference (HU), three planes each."""
    grid = reference.grid
    _check_grid("midposition", midposition, grid)
    frame = DisplayFrame.from_grid(grid)
    chosen = _slices(frame, None, mask)
    lo, hi = intensity_window(reference)
    difference = np.asarray(midposition.array, np.float32) - np.asarray(reference.array, np.float32)
    rows = [(reference_name, reference.array, dict(cmap="gray", vmin=lo, vmax=hi)),
            ("mid-position", midposition.array, dict(cmap="gray", vmin=lo, vmax=hi)),
            ("mid-position - reference (HU)", difference, dict(cmap="RdBu_r", vmin=-400, vmax=400))]
    figure = _figure(3, len(rows))
    panels = figure.subplots(len(rows), 3, squeeze=False)
    for row, (name, array, style) in zip(panels, rows):
        for axes, plane in zip(row, PLANES):
            _show(axes, frame, plane, frame.take(np.asarray(array), plane, chosen[plane]), **style)
            _mask_contour(axes, frame, plane, chosen[plane], mask)
            _label(axes, plane, f"{name}: {plane} {chosen[plane]}")
    return figure
