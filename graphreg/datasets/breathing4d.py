"""Synthetic 4D-CT: a breathing cycle of phases made from one real CT, with the exact position of
every reference point in every phase, and hysteresis (inhale and exhale take different paths).

Convention:
    Phase 0 is the given CT (the reference, end-inhale). Two motion fields on the reference grid
    (fixed -> moving, :mod:`graphreg.datasets.breathing`): ``U_cc``, the diaphragm's
    cranio-caudal motion, and ``U_ap``, the antero-posterior and lateral contraction of the chest.
    Phase ``i`` of ``N`` (``t = i / N``) moves by

        ``u_i = a(t) U_cc + b(t) U_ap``, ``a(t) = (1 - cos 2 pi t) / 2``,
        ``b(t) = a(t) + h sin(2 pi t) / 2``

    so the chest lags behind the diaphragm: a point passes through different positions on the way
    out (``t < 1/2``) and back in, a loop whose width grows with the hysteresis ``h`` (``h = 0``:
    one path). Each phase image is made by :func:`graphreg.datasets.breathing.synthesize_pair`
    (exact inverse warping, lung density changed by mass preservation, noise), so a reference
    point ``p`` lies exactly at ``p + u_i(p)`` in phase ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphreg.errors import GraphregError
from graphreg.core.field import DisplacementField
from graphreg.core.volume import Volume
from graphreg.datasets.breathing import (
    ParametricBreathing,
    jacobian_volume,
    parametric_motion,
    synthesize_pair,
    vessel_landmarks,
)
from graphreg.datasets.pairs import dense_field


@dataclass
class BreathingSequence:
    """A synthetic 4D-CT with its truth.

    Attributes:
        phases: ``N`` phase images (int16 HU, the reference grid); ``phases[0]`` is the reference.
        lungs: the reference lung mask.
        fields: ``N`` true fields (reference -> phase, on a coarse control grid; ``fields[0]`` is
            zero); :func:`graphreg.datasets.pairs.dense_field` gives them on the reference grid.
        points_mm: ``(P, 3)`` reference points (vessel landmarks), world mm.
        positions_mm: ``(P, N, 3)`` their true positions in every phase, world mm.
        weights: ``(N, 2)`` the amplitudes ``a(t), b(t)`` of ``U_cc`` and ``U_ap``.
        jacobian_min: the smallest Jacobian determinant of any phase's true field.
    """

    phases: list[Volume]
    lungs: Volume
    fields: list[DisplacementField]
    points_mm: np.ndarray
    positions_mm: np.ndarray
    weights: np.ndarray
    jacobian_min: float


def cycle_weights(count: int, hysteresis: float) -> np.ndarray:
    """``(count, 2)``: ``a(t), b(t)`` of the module docstring at ``t = i / count``."""
    if count < 2:
        raise GraphregError(f"count: expected at least 2 phases, got {count}")
    t = np.arange(count) / count
    a = 0.5 * (1.0 - np.cos(2.0 * np.pi * t))
    return np.stack([a, a + 0.5 * hysteresis * np.sin(2.0 * np.pi * t)], axis=1)


def breathing_sequence(fixed: Volume, lungs: Volume, rng: np.random.Generator, count: int = 8,
                       hysteresis: float = 0.6, diaphragm_mm: float = 15.0, ap_contraction: float = 0.05,
                       lateral_contraction: float = 0.02, noise_hu: float = 10.0, landmarks: int = 100,
                       control_mm: float = 8.0) -> BreathingSequence:
    """A synthetic breathing cycle of ``count`` phases of ``fixed`` (see the module docstring).

    Args:
        fixed: the reference CT (HU, LPS axes), end-inhale; lungs: its lung mask, same grid.
        rng: random generator (landmarks, noise).
        hysteresis: ``h`` of the module docstring.
        diaphragm_mm: peak cranial motion of the lung base (right lung; the left moves 0.9 of it).
        ap_contraction, lateral_contraction: peak fractions of the chest's contraction
            (:class:`graphreg.datasets.breathing.ParametricBreathing`).
        noise_hu: Gaussian noise added to every phase but the reference.
        landmarks: number of reference points.
        control_mm: spacing of the motion's control grid.

    Raises:
        GraphregError: a phase's field folds (lower the amplitudes).
    """
    weights = cycle_weights(count, hysteresis)
    cc = parametric_motion(fixed, lungs, rng, ParametricBreathing((diaphragm_mm, 0.9 * diaphragm_mm), 1.8, 0.0, 0.0, 0.0),
                           control_mm=control_mm)
    ap = parametric_motion(fixed, lungs, rng, ParametricBreathing((0.0, 0.0), 1.8, ap_contraction,
                                                                  lateral_contraction, 0.0), control_mm=control_mm)
    if not cc.grid.same_as(ap.grid):
        raise GraphregError("motion: the two motion components came out on different control grids")
    points = fixed.grid.voxel_to_world(vessel_landmarks(fixed, lungs, rng, count=landmarks))
    phases, fields, positions, worst = [fixed], [], [], 1.0
    for index, (a, b) in enumerate(weights):
        motion = DisplacementField(a * cc.displacement + b * ap.displacement, cc.grid)
        dense = dense_field(motion, fixed.grid)
        fields.append(motion)
        positions.append(dense.transform_points(points))
        if index == 0:
            continue
        worst = min(worst, float(jacobian_volume(dense).min()))
        pair = synthesize_pair(fixed, motion, lungs, rng, noise_hu=noise_hu, density=True, landmarks=0,
                               name=f"phase_{index:02d}")
        phases.append(pair.moving)
    if worst <= 0:
        raise GraphregError(f"motion: a phase's field folds (min Jacobian {worst:.3f}); lower the amplitudes")
    return BreathingSequence(phases, lungs, fields, points, np.stack(positions, axis=1), weights, worst)
