"""A finished keypoint registration judged without ground truth: its checks and ``status``.

Convention:
    Everything is measured on the working grid (:class:`~graphreg.methods.keypoint.preprocess.WorkingPair`)
    with the pipeline's displacement (working voxels ``(z, y, x)``, fixed -> moving, without the
    pre-alignment, which the working moving image already has).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from graphreg.ops.metrics import jacobian_stats
from graphreg.core.spatial import warp
from graphreg.checks import Check, limits, lower_limit, upper_limit, worst

#: dilation (working voxels) of the fixed lungs for the similarity: the lung border carries much of it
_REGION_DILATION = 2
#: the Jacobian checks look at every ``_JACOBIAN_STEP``-th voxel per axis (central differences
#: across twice the working spacing): folds narrower than that are missed, at an eighth of the cost
_JACOBIAN_STEP = 2


def masked_ncc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Normalised cross-correlation of ``a`` and ``b`` inside ``mask`` (nan when either is constant there).

    Shapes:
        a, b: ``(1, 1, D, H, W)``; mask: ``(1, 1, D, H, W)`` bool.
    """
    x, y = a[mask].double(), b[mask].double()
    x, y = x - x.mean(), y - y.mean()
    denominator = float(torch.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum()) / denominator if denominator > 0 else float("nan")


def outcome_checks(pair, displacement: torch.Tensor, keypoint_spread_mm: Optional[torch.Tensor],
                   search_range_mm: float, moving_mask_trusted: bool,
                   keypoint_residual_voxels: Optional[torch.Tensor] = None) -> tuple[list, dict]:
    """The outcome checks of one result.

    Args:
        pair: the :class:`~graphreg.methods.keypoint.preprocess.WorkingPair` registered.
        displacement: ``(1, 3, D, H, W)`` working voxels (the pipeline's output).
        keypoint_spread_mm: ``(N,)`` spread of the keypoints' displacement distributions (mm), or None.
        search_range_mm: half-range of the coarse search level (mm), the spread's scale.
        moving_mask_trusted: whether ``pair.moving_mask`` is a real moving mask (not the fixed
            one carried over); the Dice check needs one.
        keypoint_residual_voxels: ``(N,)`` working voxels each keypoint would still move in the
            coarse search repeated around the final field
            (:func:`graphreg.methods.keypoint.driver.residual_search`), or None.

    Returns:
        the checks and the measured numbers (``ncc_before``, ``ncc_after``, ``folding_percent``,
        ``std_log_jacobian``, ``dice``, ``keypoint_spread``, ``search_residual``).
    """
    with torch.no_grad():
        lungs = pair.fixed_mask
        region = lungs.float()
        for axis in range(3):  # a box dilation, one axis at a time
            size = [1, 1, 1]
            size[axis] = 2 * _REGION_DILATION + 1
            region = F.max_pool3d(region, size, 1, [(k - 1) // 2 for k in size])
        region = region > 0
        warped = warp(pair.moving, displacement)
        before = masked_ncc(pair.fixed, pair.moving, region)
        after = masked_ncc(pair.fixed, warped, region)
        # every other voxel (the field at twice the spacing, in its voxels): an eighth of the cost
        step = _JACOBIAN_STEP
        coarse = displacement[..., ::step, ::step, ::step] / step
        jac = jacobian_stats(coarse, lungs[0, 0, ::step, ::step, ::step]) if lungs[..., ::step, ::step, ::step].any() \
            else jacobian_stats(displacement, lungs[0, 0])
        dice = None
        if moving_mask_trusted:
            moved = warp(pair.moving_mask.to(displacement.dtype), displacement) >= 0.5
            dice = float(2 * (moved & lungs).sum() / max(int(moved.sum() + lungs.sum()), 1))
    spread = None if keypoint_spread_mm is None else float(keypoint_spread_mm.double().mean()) / search_range_mm
    residual = None if keypoint_residual_voxels is None or len(keypoint_residual_voxels) == 0 else \
        float((keypoint_residual_voxels > limits.RESIDUAL_MOVE_VOXELS).double().mean())
    checks = [
        lower_limit("outcome.ncc_after", after, limits.NCC_AFTER_FAILED, limits.NCC_AFTER_SUSPECT,
                    "similarity (NCC) in the fixed lungs after registration"),
        lower_limit("outcome.ncc_gain", after - before if after == after and before == before else None,
                    None, limits.NCC_GAIN_SUSPECT, "similarity gain (NCC after - before) in the fixed lungs"),
        upper_limit("outcome.folding_percent", jac["folding_percent"], limits.FOLDING_FAILED,
                    limits.FOLDING_SUSPECT, "folding (% of lung voxels with J <= 0)"),
        upper_limit("outcome.std_log_jacobian", jac["std_log_jacobian"], None, limits.SDLOGJ_SUSPECT,
                    "SDlogJ in the fixed lungs"),
    ]
    if dice is not None:
        checks.append(lower_limit("outcome.lung_dice", dice, limits.DICE_FAILED, limits.DICE_SUSPECT,
                                  "Dice of the warped moving lung mask with the fixed one"))
    if spread is not None:
        checks.append(upper_limit("outcome.keypoint_spread", spread, None, limits.SPREAD_SUSPECT_FRACTION,
                                  "mean spread of the keypoint displacements (fraction of the search range)"))
    if residual is not None:
        checks.append(upper_limit("outcome.search_residual", residual, None, limits.RESIDUAL_SUSPECT_SHARE,
                                  f"share of keypoints the coarse search, repeated around the final field, still "
                                  f"moves by more than {limits.RESIDUAL_MOVE_VOXELS:g} working voxels"))
    measured = {"ncc_before": before, "ncc_after": after, "folding_percent": jac["folding_percent"],
                "std_log_jacobian": jac["std_log_jacobian"], "dice": dice, "keypoint_spread": spread,
                "search_residual": residual}
    return checks, measured


def quality_report(checks: Sequence[Check], fallbacks: Sequence[dict], measured: dict,
                   mask_checks: Sequence[Check] = ()) -> dict:
    """``report.json``'s ``quality``: ``status`` (the worst verdict of ``checks``; a mask fallback
    makes it at least ``suspect``), ``reasons`` (one line per check that is not ok, and per
    fallback), every check (``mask_checks`` first: they decide which masks are used, not the
    status) and the measured numbers."""
    reasons = [f"{f['mask']} replaced: {f['reason']}" for f in fallbacks]
    reasons += [c.detail for c in checks if not c.passed]
    status = worst([c.verdict for c in checks] + ["suspect"] * len(fallbacks))
    return {"status": status, "reasons": reasons, "checks": [c.to_dict() for c in [*mask_checks, *checks]],
            "measured": {k: (None if v is None else round(float(v), 4)) for k, v in measured.items()}}
