"""Evaluation metrics: landmark errors, Jacobian statistics, Dice, and the Learn2Reg numbers.

Convention:
    Displacements are ``(B, 3, D, H, W)`` voxels ``(z, y, x)`` pointing fixed -> moving (or a
    :class:`graphreg.core.field.DisplacementField`); landmarks are ``(N, 3)`` in world mm unless a
    function says otherwise. :func:`learn2reg_evaluate` is the exception: it works in the
    Learn2Reg challenge's own layout (nibabel array order), so its numbers match the official
    evaluation script.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch

from graphreg.errors import GeometryError, GraphregError, ShapeError, check_finite

#: Determinants are clipped to this before the logarithm (the Learn2Reg script uses the same).
LOG_JACOBIAN_FLOOR = 1e-9


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _as_points(name: str, value) -> np.ndarray:
    points = _as_numpy(value).astype(np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ShapeError(f"{name}: expected shape (N, 3), got {points.shape}")
    check_finite(name, points)
    return points


# ---------------------------------------------------------------------- landmarks
def landmark_errors(mapped_mm, target_mm) -> np.ndarray:
    """Euclidean distance between paired points.

    Shapes:
        mapped_mm, target_mm: ``(N, 3)`` world mm (numpy or tensor), row ``i`` paired with row ``i``.
        returns: ``(N,)`` float64 mm.
    """
    mapped = _as_points("mapped_mm", mapped_mm)
    target = _as_points("target_mm", target_mm)
    if mapped.shape != target.shape:
        raise ShapeError(f"target_mm: expected shape {mapped.shape} (as mapped_mm), got {target.shape}")
    return np.linalg.norm(mapped - target, axis=1)


def summarize_errors(errors) -> dict[str, float]:
    """Summary of per-landmark errors in mm.

    Returns:
        ``mean_mm``, ``std_mm`` (population, ``ddof=0``), ``p25_mm``, ``p50_mm``, ``p75_mm``,
        ``max_mm`` (floats) and ``n_points`` (int).
    """
    values = _as_numpy(errors).astype(np.float64).ravel()
    if values.size == 0:
        raise ShapeError("errors: expected at least one value, got an empty array")
    check_finite("errors", values)
    p25, p50, p75 = np.percentile(values, [25, 50, 75])
    return {
        "mean_mm": float(values.mean()),
        "std_mm": float(values.std()),
        "p25_mm": float(p25),
        "p50_mm": float(p50),
        "p75_mm": float(p75),
        "max_mm": float(values.max()),
        "n_points": int(values.size),
    }


def rank_correlation(predicted, observed) -> float:
    """Spearman rank correlation between two paired samples, e.g. per-keypoint uncertainty and error.

    ``1`` when ``observed`` grows strictly with ``predicted``, ``0`` when unrelated; ``nan`` when
    either sample is constant (no ranking to compare).

    Shapes:
        predicted, observed: ``(N,)`` numbers, ``N >= 2``, finite.
    """
    from scipy.stats import spearmanr

    a = _as_numpy(predicted).astype(np.float64).ravel()
    b = _as_numpy(observed).astype(np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ShapeError(f"observed: expected {a.size} >= 2 values paired with predicted, got {b.size}")
    check_finite("predicted", a)
    check_finite("observed", b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


# ---------------------------------------------------------------------- Jacobian
def jacobian_determinant(displacement: torch.Tensor, spacing_zyx=None) -> torch.Tensor:
    """Jacobian determinant of ``phi(x) = x + u(x)`` at every voxel.

    Derivatives are central differences (one-sided on the border) by :func:`torch.gradient`;
    differentiable.

    Shapes:
        displacement: ``(B, 3, D, H, W)`` voxels ``(z, y, x)``.
        returns: ``(B, D, H, W)``, dimensionless.

    Note (why ``spacing_zyx`` does not change the result):
        With ``spacing_zyx`` the displacement is first turned into mm (``U_a = s_a u_a``) and
        differentiated with respect to physical positions ``X_b = s_b x_b``, giving the
        physical Jacobian ``J_phys = S (I + du/dx) S^-1`` with ``S = diag(s)``. That is a
        similarity transform of the voxel Jacobian, so
        ``det J_phys = det S * det(I + du/dx) / det S = det(I + du/dx)``. The same argument
        with ``S`` replaced by any invertible linear map (direction cosines included) shows that
        the determinant does not depend on the grid's placement either. Passing the spacing
        computes the physical form explicitly (the tests check that both agree).
    """
    if not isinstance(displacement, torch.Tensor) or displacement.ndim != 5 or displacement.shape[1] != 3:
        got = tuple(getattr(displacement, "shape", ()))
        raise ShapeError(f"displacement: expected a tensor of shape (B, 3, D, H, W), got {got}")
    if min(displacement.shape[2:]) < 2:
        raise ShapeError(
            f"displacement: expected at least 2 voxels along each axis, got {tuple(displacement.shape)}"
        )
    if spacing_zyx is None:
        u = displacement
        spacing = (1.0, 1.0, 1.0)
    else:
        spacing = tuple(float(s) for s in spacing_zyx)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise GeometryError(f"spacing_zyx: expected 3 positive mm values, got {spacing_zyx}")
        scale = torch.tensor(spacing, dtype=displacement.dtype, device=displacement.device)
        u = displacement * scale.view(1, 3, 1, 1, 1)
    # grads[b][:, c] = d u_c / d axis_b, each (B, 3, D, H, W)
    grads = torch.gradient(u, spacing=spacing, dim=(2, 3, 4))
    # a[c][b] = delta_cb + d u_c / d axis_b, each (B, D, H, W); the 3x3 determinant by cofactors
    # (several times faster than torch.linalg.det on millions of small matrices on CPU)
    a = [[grads[b][:, c] + (1.0 if b == c else 0.0) for b in range(3)] for c in range(3)]
    return (a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
            - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
            + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]))


def _mask_tensor(mask, shape: tuple[int, ...], device) -> torch.Tensor:
    """``mask > 0`` as a boolean tensor broadcast to ``shape`` = ``(B, D, H, W)``."""
    if isinstance(mask, torch.Tensor):
        m = mask.detach().to(device)
    else:
        m = torch.from_numpy(np.ascontiguousarray(mask)).to(device)
    if m.ndim == 5 and m.shape[1] == 1:
        m = m[:, 0]
    if (m.ndim not in (3, 4) or tuple(m.shape[-3:]) != tuple(shape[1:])
            or (m.ndim == 4 and m.shape[0] not in (1, shape[0]))):
        raise GeometryError(f"mask: expected shape (D, H, W) = {tuple(shape[1:])}, (B, D, H, W) or "
                            f"(B, 1, D, H, W), got {tuple(m.shape)}")
    m = (m > 0).expand(shape)
    if not m.any():
        raise GeometryError("mask: expected at least one non-zero voxel, got an empty mask")
    return m


def jacobian_stats(field, mask=None) -> dict[str, float]:
    """Regularity of a displacement: statistics of the Jacobian determinant ``J`` of ``x + u(x)``.

    Args:
        field: a :class:`~graphreg.core.field.DisplacementField` or a ``(B, 3, D, H, W)`` voxel tensor.
        mask: optional ``(D, H, W)`` (or ``(B, D, H, W)``, ``(B, 1, D, H, W)``) array; voxels with
            a positive value are evaluated (e.g. the fixed lung mask).

    Returns:
        ``std_log_jacobian``: standard deviation (``ddof=0``) of ``log(max(J, 1e-9))``;
        ``folding_percent``: percentage of voxels with ``J <= 0``; ``jacobian_min``,
        ``jacobian_max``.
    """
    if isinstance(field, torch.Tensor):
        disp, spacing = field, None
    else:  # a DisplacementField
        disp, spacing = field.displacement, field.grid.spacing_zyx
    with torch.no_grad():
        jac = jacobian_determinant(disp, spacing).to(torch.float64)
        if mask is not None:
            jac = jac[_mask_tensor(mask, tuple(jac.shape), jac.device)]
        jac = jac.flatten()
        log_jac = torch.log(jac.clamp_min(LOG_JACOBIAN_FLOOR))
        return {
            "std_log_jacobian": float(log_jac.std(correction=0)),
            "folding_percent": float((jac <= 0).double().mean() * 100.0),
            "jacobian_min": float(jac.min()),
            "jacobian_max": float(jac.max()),
        }


# ---------------------------------------------------------------------- overlap
def dice(a, b, labels=None) -> dict[int, float]:
    """Dice overlap ``2 |A ∩ B| / (|A| + |B|)`` per label.

    Args:
        a, b: integer label maps of the same shape (numpy or tensor), e.g. the fixed mask and
            the warped moving mask.
        labels: labels to evaluate; default: every non-zero label present in ``a`` or ``b``.

    Returns:
        ``{label: dice}``; a label absent from both maps gives ``nan``.
    """
    a = _as_numpy(a)
    b = _as_numpy(b)
    if a.shape != b.shape:
        raise ShapeError(f"b: expected shape {a.shape} (as a), got {b.shape}")
    if labels is None:
        labels = [int(v) for v in np.union1d(np.unique(a), np.unique(b)) if v != 0]
    result: dict[int, float] = {}
    for label in labels:
        in_a, in_b = a == label, b == label
        total = int(in_a.sum()) + int(in_b.sum())
        result[label] = float(2.0 * np.logical_and(in_a, in_b).sum() / total) if total else float("nan")
    return result


# ---------------------------------------------------------------------- Learn2Reg
def _l2r_jacobian_determinant(disp: np.ndarray) -> np.ndarray:
    """The Learn2Reg Jacobian determinant of ``(X, Y, Z, 3)`` voxel displacements.

    Central differences ``(f[i+1] - f[i-1]) / 2`` along each array axis, plus the identity, on
    the interior (two voxels cropped from every face, where the official zero-padded stencil
    and this one agree exactly). Returns ``(X - 4, Y - 4, Z - 4)``.
    """
    grads = np.stack(np.gradient(disp, axis=(0, 1, 2)), axis=-1)  # (..., component, axis)
    jac = grads[2:-2, 2:-2, 2:-2] + np.eye(3)
    return np.linalg.det(jac)


def learn2reg_evaluate(disp_l2r, fixed_landmarks_vox, moving_landmarks_vox, spacing,
                       mask=None) -> dict:
    """TRE and SDlogJ exactly as the Learn2Reg evaluation computes them.

    Re-implements the definitions of the official script (github.com/MDL-UzL/L2R,
    ``evaluation/evaluation.py`` and ``evaluation/utils.py``: ``compute_tre`` and
    ``jacobian_determinant``):

    - TRE: the displacement at each fixed landmark by cubic-spline interpolation
      (``scipy.ndimage.map_coordinates``, ``order=3``, ``mode="constant"``), then
      ``|| (p + u(p) - q) * spacing ||`` in mm.
    - SDlogJ: central-difference Jacobian of ``x + u(x)`` on the interior (2 voxels cropped per
      face); the official script then adds **3** to the determinant (a quirk kept here so the
      numbers match), clips to ``[1e-9, 1e9]``, takes the log and its standard deviation
      (``ddof=0``), over ``mask[2:-2, 2:-2, 2:-2] > 0`` when a mask is given.

    Shapes:
        disp_l2r: ``(X, Y, Z, 3)`` voxels, nibabel array order of the fixed image, components
            in index order ``(i, j, k)``, fixed -> moving (the ``disp_XXXX_YYYY.nii.gz`` content).
        fixed_landmarks_vox, moving_landmarks_vox: ``(N, 3)`` 0-based voxel indices ``(i, j, k)``
            (the Learn2Reg landmark CSV rows).
        spacing: ``(3,)`` mm along ``(i, j, k)`` of the moving image (``header.get_zooms()[:3]``).
        mask: optional ``(X, Y, Z)`` fixed mask.

    Returns:
        ``tre_mm`` ``(N,)`` float64, ``tre_mean_mm``, ``sdlogj`` (official definition),
        ``folding_percent`` (percentage of interior voxels, inside the mask, with the plain
        determinant ``J <= 0``; the official script's fold count is taken after ``+3`` and
        clipping and so is always 0).
    """
    disp = _as_numpy(disp_l2r).astype(np.float64)
    if disp.ndim != 4 or disp.shape[-1] != 3 or min(disp.shape[:3]) < 5:
        raise ShapeError(f"disp_l2r: expected shape (X, Y, Z, 3) with X, Y, Z >= 5, got {disp.shape}")
    check_finite("disp_l2r", disp)
    fixed = _as_points("fixed_landmarks_vox", fixed_landmarks_vox)
    moving = _as_points("moving_landmarks_vox", moving_landmarks_vox)
    if fixed.shape != moving.shape:
        raise ShapeError(f"moving_landmarks_vox: expected shape {fixed.shape} (as fixed_landmarks_vox), "
                         f"got {moving.shape}")
    spacing = np.asarray(spacing, dtype=np.float64).ravel()
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise GeometryError(f"spacing: expected 3 positive mm values, got {spacing.tolist()}")

    coords = fixed.T
    u = np.stack([scipy.ndimage.map_coordinates(disp[..., c], coords, order=3, mode="constant")
                  for c in range(3)], axis=1)
    tre = np.linalg.norm((fixed + u - moving) * spacing, axis=1)
    return {"tre_mm": tre, "tre_mean_mm": float(tre.mean()), **learn2reg_jacobian(disp, mask)}


def learn2reg_jacobian(disp_l2r, mask=None) -> dict:
    """SDlogJ (official definition) and the folding percentage of :func:`learn2reg_evaluate`, alone.

    Shapes:
        disp_l2r: ``(X, Y, Z, 3)`` voxels (as :func:`learn2reg_evaluate`); mask: optional ``(X, Y, Z)``.

    Returns:
        ``sdlogj`` and ``folding_percent``.
    """
    disp = _as_numpy(disp_l2r).astype(np.float64)
    if disp.ndim != 4 or disp.shape[-1] != 3 or min(disp.shape[:3]) < 5:
        raise ShapeError(f"disp_l2r: expected shape (X, Y, Z, 3) with X, Y, Z >= 5, got {disp.shape}")
    check_finite("disp_l2r", disp)
    jac = _l2r_jacobian_determinant(disp)
    if mask is not None:
        m = _as_numpy(mask)
        if m.shape != disp.shape[:3]:
            raise GeometryError(f"mask: expected shape {disp.shape[:3]} (as disp_l2r), got {m.shape}")
        inside = m[2:-2, 2:-2, 2:-2] > 0
        if not inside.any():
            raise GeometryError("mask: expected non-zero voxels at least 2 voxels inside the border")
        jac = jac[inside]
    if jac.size == 0:
        raise GraphregError("disp_l2r: no interior voxels to evaluate the Jacobian on")
    log_jac = np.log(np.clip(jac + 3.0, LOG_JACOBIAN_FLOOR, 1e9))
    return {"sdlogj": float(log_jac.std()), "folding_percent": float((jac <= 0).mean() * 100.0)}
