"""Lung masks checked before use, and the fallbacks when an automatic one fails.

Convention:
    Masks and images are :class:`~graphreg.core.volume.Volume` objects (``(z, y, x)``, HU); a mask is
    on its image's grid. World left-right is the grid's world ``x`` axis (LPS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from graphreg.core.volume import Volume
from graphreg.checks import Check, limits, lower_limit, upper_limit

#: voxels of a mask looked at by the checks (a strided view keeps them cheap on native scans)
_CHECK_VOXELS = 2_000_000


def _strided(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """A strided view of ``volume.array`` and the index step per axis ``(z, y, x)``."""
    step = max(1, int(np.ceil((volume.array.size / _CHECK_VOXELS) ** (1 / 3))))
    steps = np.array([1 if n < 4 * step else step for n in volume.array.shape])
    return volume.array[::steps[0], ::steps[1], ::steps[2]], steps


def side_share(mask: Volume, image: Volume) -> float:
    """Share of the lung volume on the smaller side of the body's left-right midline.

    The midline is the mean world ``x`` of the body (HU above -500) in the slices holding lungs,
    so it does not depend on the mask's own balance.
    """
    lungs, steps = _strided(mask)
    body, _ = _strided(image)
    lung_idx = np.argwhere(lungs > 0)
    if len(lung_idx) == 0:
        return 0.0
    z0, z1 = lung_idx[:, 0].min(), lung_idx[:, 0].max() + 1
    body_idx = np.argwhere(body[z0:z1] > -500)
    body_idx[:, 0] += z0
    if len(body_idx) == 0:
        return 0.0
    world_x = lambda idx: mask.grid.voxel_to_world((idx * steps).astype(np.float64))[:, 0]  # noqa: E731
    left = world_x(lung_idx) > world_x(body_idx).mean()
    return float(min(left.mean(), 1.0 - left.mean()))


def border_share(mask: Volume) -> float:
    """Share of lung voxels on the four in-plane faces of the image."""
    lungs = mask.array > 0
    total = int(lungs.sum())
    if total == 0:
        return 1.0
    faces = lungs[:, 0].sum() + lungs[:, -1].sum() + lungs[:, 1:-1, 0].sum() + lungs[:, 1:-1, -1].sum()
    return float(faces) / total


def volume_ml(mask: Volume) -> float:
    """Foreground volume in ml."""
    return float((mask.array > 0).sum()) * float(np.prod(mask.grid.spacing)) / 1000.0


def mask_checks(mask: Volume, image: Volume, name: str) -> list[Check]:
    """The checks of one lung mask: enough lung volume, two lungs (both sides of the body's
    midline), not cut by the in-plane field of view.

    Args:
        mask: lung mask on ``image.grid``; image: the CT (HU); name: ``"fixed_mask"`` or
            ``"moving_mask"`` (prefix of the checks' names).
    """
    return [
        lower_limit(f"{name}.lung_volume_ml", volume_ml(mask), limits.MASK_MIN_LUNG_ML, None,
                    f"{name}: lung volume (ml)"),
        lower_limit(f"{name}.two_lungs", side_share(mask, image), limits.MASK_MIN_SIDE_SHARE, None,
                    f"{name}: share of the lungs on the smaller side of the body (one lung only?)"),
        upper_limit(f"{name}.in_view", border_share(mask), limits.MASK_MAX_BORDER_SHARE, None,
                    f"{name}: share of lung voxels on the in-plane image border"),
    ]


def volume_ratio_check(fixed_mask: Volume, moving_mask: Volume) -> Check:
    """Moving / fixed lung volume inside :data:`limits.VOLUME_RATIO_RANGE`."""
    low, high = limits.VOLUME_RATIO_RANGE
    ratio = volume_ml(moving_mask) / max(volume_ml(fixed_mask), 1e-9)
    rule = f"in [{low:g}, {high:g}]"
    if low <= ratio <= high:
        return Check("masks.volume_ratio", "ok", ratio, rule)
    return Check("masks.volume_ratio", "failed", ratio, rule,
                 f"moving / fixed lung volume {ratio:.2f} is outside the breathing range {rule}")


@dataclass
class CheckedMasks:
    """The lung masks a registration uses, after the checks.

    Attributes:
        fixed, moving: masks on their image's grids; ``moving`` None when no trusted moving mask
            is left (the pre-alignment then uses the mask-independent search, and the working
            moving mask is the fixed one carried over by it).
        checks: every mask check.
        fallbacks: one entry per replaced mask: ``{"mask", "reason", "fallback"}``.
    """

    fixed: Volume
    moving: Optional[Volume]
    checks: list = field(default_factory=list)
    fallbacks: list = field(default_factory=list)

    def report(self) -> dict:
        return {"checks": [c.to_dict() for c in self.checks], "fallbacks": self.fallbacks}


def automatic_mask(image: Volume, name: str) -> tuple[Optional[Volume], Optional[str]]:
    """:func:`graphreg.ops.lungmask.lung_mask` of ``image``, or None and the reason it failed."""
    from graphreg.ops.lungmask import lung_mask
    from graphreg.errors import GraphregError

    try:
        mask = lung_mask(image)
    except GraphregError as error:
        return None, f"{name}: the automatic lung mask failed ({error})"
    if not mask.array.any():
        return None, f"{name}: the automatic lung mask found no lungs"
    return mask, None


def body_mask(image: Volume) -> Volume:
    """Last-resort fixed region: the body (HU above -500, holes filled slice by slice)."""
    from scipy import ndimage

    body = image.array > -500
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    return Volume(ndimage.binary_fill_holes(body, structure=in_plane).astype(np.uint8), image.grid)


def checked_masks(fixed: Volume, moving: Volume, fixed_mask: Optional[Volume],
                  moving_mask: Optional[Volume], warn) -> CheckedMasks:
    """Masks for a registration: the user's masks (checked, kept) or automatic ones (checked,
    replaced on a failed check). A mask never stops the run:

    - a failed automatic moving mask is dropped (the fixed mask carried over by the
      mask-independent pre-alignment stands in for it, see :func:`carried_mask`);
    - a failed automatic fixed mask is replaced by the moving mask carried over the same way,
      or by the fixed body when no moving mask is left;
    - a lung volume ratio outside the breathing range drops the automatic moving mask (the
      fixed one when only it is automatic).

    Args:
        fixed_mask, moving_mask: the user's masks on their image's grids, or None (automatic).
        warn: ``warn(line)`` for every failed check and fallback.
    """
    result = CheckedMasks(fixed=None, moving=None)
    given = {"fixed_mask": fixed_mask is not None, "moving_mask": moving_mask is not None}
    masks = {}
    for name, image, mask in (("fixed_mask", fixed, fixed_mask), ("moving_mask", moving, moving_mask)):
        reason = None
        if mask is None:
            mask, reason = automatic_mask(image, name)
        if mask is not None:
            checks = mask_checks(mask, image, name)
            result.checks += checks
            failed = [c for c in checks if not c.passed]
            if failed and not given[name]:
                reason = "; ".join(c.detail for c in failed)
                mask = None
            for check in failed if given[name] else []:
                warn(f"warning: {check.detail} (the given mask is used)")
        else:
            result.checks.append(Check(f"{name}.automatic", "failed", None, "a lung mask is found", reason))
        if reason is not None:
            result.fallbacks.append({"mask": name, "reason": reason})
        masks[name] = mask
    if masks["fixed_mask"] is not None and masks["moving_mask"] is not None:
        ratio = volume_ratio_check(masks["fixed_mask"], masks["moving_mask"])
        result.checks.append(ratio)
        drop = "moving_mask" if not given["moving_mask"] else "fixed_mask" if not given["fixed_mask"] else None
        if not ratio.passed and drop is not None:
            masks[drop] = None
            result.fallbacks.append({"mask": drop, "reason": ratio.detail})
        elif not ratio.passed:
            warn(f"warning: {ratio.detail} (the given masks are used)")
    result.fixed, result.moving = masks["fixed_mask"], masks["moving_mask"]
    return result
