"""Pre-alignment checked against a translation search that does not depend on the lung masks.

The lungs' centre-of-mass translation is cheap and usually right, but a wrong moving mask (one
lung kept, a cut field of view) moves it by centimetres. It is compared here with an exhaustive
translation search of the masked normalised cross-correlation (NCC) between the fixed image
inside its (dilated) lungs and the moving image, computed for every shift at once by FFT
(Padfield, IEEE TIP 2012), at 8 mm and then refined at 4 mm.

Convention:
    Translations are world ``(x, y, z)`` mm, fixed -> moving: the moving image is sampled at
    ``x + t`` for the fixed point ``x`` (as :func:`graphreg.methods.keypoint.preprocess.working_pair`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import ndimage
from scipy.fft import irfftn, next_fast_len, rfftn

from graphreg.core.config import PreprocessConfig
from graphreg.core.geometry import Grid
from graphreg.methods.keypoint.preprocess import centre_of_mass_mm
from graphreg.core.volume import Volume, bounding_box
from graphreg.checks import Check, limits
from graphreg.checks.masks import CheckedMasks, body_mask

#: intensities compared by the search (HU window) and the value marking "no image here"
_HU_WINDOW = (-1000.0, 300.0)
_OUTSIDE_HU = -1500.0
#: margin around the lungs (mm) included in the compared region (the lung border carries the signal)
_REGION_MARGIN_MM = 10.0


def masked_ncc_map(fixed: np.ndarray, region: np.ndarray, moving: np.ndarray, valid: np.ndarray,
                   min_overlap: float = 0.5) -> np.ndarray:
    """NCC of ``fixed`` inside ``region`` with ``moving`` (where ``valid``) at every shift.

    The six local sums are cross-correlations, each the product of two real FFTs of a size that
    holds ``moving`` (the wrap-around of the circular correlation falls outside the shifts kept).

    Shapes:
        fixed, region: ``(D, H, W)``; moving, valid: ``(D + 2b, H + 2b, W + 2b)``; returns
        ``(2b + 1,) * 3`` with index ``b`` the zero shift. Shifts whose overlap is below
        ``min_overlap`` of the region get -1.
    """
    shape = [next_fast_len(n, real=True) for n in moving.shape]
    keep = tuple(slice(s - 1, b) for s, b in zip(fixed.shape, moving.shape))

    def spectrum(array: np.ndarray, flip: bool) -> np.ndarray:
        return rfftn(array[::-1, ::-1, ::-1] if flip else array, shape)

    r = region.astype(np.float64)
    rf = r * fixed
    v = valid.astype(np.float64)
    vm = v * moving
    big = [spectrum(a, False) for a in (v, vm, vm * moving)]
    small = [spectrum(a, True) for a in (r, rf, rf * fixed)]
    n, sf, sff, sm, smm, sfm = (irfftn(big[i] * small[j], shape)[keep]
                                for i, j in ((0, 0), (0, 1), (0, 2), (1, 0), (2, 0), (1, 1)))
    n_safe = np.maximum(n, 1.0)
    cov = sfm - sf * sm / n_safe
    var = np.maximum(sff - sf * sf / n_safe, 0) * np.maximum(smm - sm * sm / n_safe, 0)
    ncc = np.where(var > 1e-9, cov / np.sqrt(np.maximum(var, 1e-18)), -1.0)
    return np.where(n >= min_overlap * r.sum() - 0.5, ncc, -1.0)


def _scaled(array: np.ndarray) -> np.ndarray:
    low, high = _HU_WINDOW
    return (np.clip(array.astype(np.float64), low, high) - low) / (high - low)


def translation_search(reference: Volume, region: Volume, other: Volume, centre_mm: np.ndarray,
                       bound_mm: float, spacing_mm: float) -> tuple[np.ndarray, float]:
    """The translation within ``centre_mm +- bound_mm`` (per axis, steps of ``spacing_mm``) that
    maximises the NCC of ``reference`` inside ``region`` (dilated) with ``other``.

    Args:
        reference: image the region belongs to (HU); region: its lung mask (any grid).
        other: the image searched (HU).
        centre_mm: ``(3,)`` world ``(x, y, z)`` mm, the search's centre; bound_mm >= 0.

    Returns:
        the best translation ``(3,)`` mm (reference -> other) and its NCC.
    """
    iso = reference.grid.with_spacing((spacing_mm,) * 3)
    lungs = region.resampled(iso, "nearest").array > 0
    if not lungs.any():
        return np.asarray(centre_mm, dtype=np.float64), -1.0
    margin = int(np.ceil(_REGION_MARGIN_MM / spacing_mm))
    start, stop = bounding_box(lungs, margin + 1)
    box = iso.cropped(start, stop)
    lungs = ndimage.binary_dilation(lungs[tuple(slice(a, b) for a, b in zip(start, stop))], iterations=margin)
    fixed = reference.resampled(box, "linear", _OUTSIDE_HU).array
    region_box = lungs & (fixed > _OUTSIDE_HU)
    b = int(np.floor(bound_mm / spacing_mm + 1e-9))
    origin = box.voxel_to_world(np.full(3, -b, dtype=np.float64)) + np.asarray(centre_mm, dtype=np.float64)
    big = Grid(tuple(n + 2 * b for n in box.shape), box.spacing, tuple(origin), box.direction)
    moving = other.resampled(big, "linear", _OUTSIDE_HU).array
    ncc = masked_ncc_map(_scaled(fixed), region_box, _scaled(moving), moving > _OUTSIDE_HU)
    best = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
    shift = box.voxel_vectors_to_mm(np.asarray(best, dtype=np.float64) - b)
    return np.asarray(centre_mm, dtype=np.float64) + shift, float(ncc[best])


def coarse_to_fine_search(reference: Volume, region: Volume, other: Volume,
                          centre_mm=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, float]:
    """:func:`translation_search` over ``centre_mm`` +- :data:`limits.PREALIGN_MAX_MM` at 8 mm, refined
    +- 8 mm at 4 mm."""
    coarse, _ = translation_search(reference, region, other, np.asarray(centre_mm, dtype=np.float64),
                                   limits.PREALIGN_MAX_MM, 8.0)
    return translation_search(reference, region, other, coarse, 8.0, 4.0)


def ncc_at(reference: Volume, region: Volume, other: Volume, translation_mm: np.ndarray) -> float:
    """The search's NCC (4 mm) at one translation."""
    return translation_search(reference, region, other, translation_mm, 0.0, 4.0)[1]


@dataclass
class Prealignment:
    """The pre-alignment translation chosen, with what it was chosen from.

    Attributes:
        translation_mm: ``(3,)`` world mm, fixed -> moving (before rounding to working voxels).
        report: ``centre_of_mass_mm``, ``ncc_centre_of_mass``, ``search_mm``, ``ncc_search``,
            ``chosen`` and ``reason`` (``report.json``'s ``prealign``).
        checks: the agreement of the two estimates.
    """

    translation_mm: np.ndarray
    report: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)


def _carry(mask: Volume, grid: Grid, translation_mm: np.ndarray) -> Volume:
    """``mask`` (on the other image's grid) carried onto ``grid`` by ``translation_mm`` (grid -> mask)."""
    shifted = Grid(grid.shape, grid.spacing, tuple(np.asarray(grid.origin) + translation_mm), grid.direction)
    return Volume(mask.resampled(shifted, "nearest").array.astype(np.uint8), grid)


def prealign(fixed: Volume, moving: Volume, masks: CheckedMasks, config: PreprocessConfig,
             warn: Callable[[str], None]) -> Prealignment:
    """Choose the pre-alignment and complete ``masks`` (a missing fixed mask is replaced here).

    With ``config.prealign`` off the translation is zero. Otherwise the lungs' centre-of-mass
    translation (when both masks are trusted) is kept unless the translation search's NCC beats
    it by :data:`limits.PREALIGN_NCC_MARGIN`. The search covers +- :data:`limits.PREALIGN_MAX_MM`
    around zero (independent of the masks) and around the centre of mass; the latter is used
    unless the former is better by the margin. A translation is thus applied only where the
    images' similarity confirms it.
    A missing fixed mask becomes the moving mask carried over by the search from the moving side
    (or the fixed body when both are missing).
    """
    rounded = lambda a: np.round(np.asarray(a, dtype=np.float64), 2).tolist()  # noqa: E731
    if masks.fixed is None:
        if masks.moving is not None:
            back, _ = coarse_to_fine_search(moving, masks.moving, fixed) if config.prealign else (np.zeros(3), 0.0)
            masks.fixed = _carry(masks.moving, fixed.grid, -back)
            fallback = "the moving lung mask carried over by the mask-independent translation search"
        else:
            masks.fixed = body_mask(fixed)
            fallback = "the fixed body (HU above -500): keypoints anywhere in the body"
        masks.fallbacks[[f["mask"] for f in masks.fallbacks].index("fixed_mask")]["fallback"] = fallback
    for entry in masks.fallbacks:
        entry.setdefault("fallback", "no moving mask: the pre-alignment uses the mask-independent translation "
                                     "search and the fixed mask carried over by it")
        warn(f"warning: {entry['reason']}; fallback: {entry['fallback']}")
    if not config.prealign:
        return Prealignment(np.zeros(3), {"chosen": "none", "reason": "preprocess.prealign is off"})
    search, ncc_search = coarse_to_fine_search(fixed, masks.fixed, moving)
    report = {"search_mm": rounded(search), "ncc_search": round(ncc_search, 4)}
    checks = []
    if masks.moving is None:
        report.update(chosen="search", reason="no trusted moving lung mask")
        return Prealignment(search, report, checks)
    com = centre_of_mass_mm(masks.moving) - centre_of_mass_mm(masks.fixed)
    report["centre_of_mass_mm"] = rounded(com)
    # the search is also run around the centre of mass (positioning offsets beyond the bound), and
    # kept unless the one around zero is clearly better: the result then moves with the images
    around, ncc_around = coarse_to_fine_search(fixed, masks.fixed, moving, com)
    if ncc_around + limits.PREALIGN_NCC_MARGIN >= ncc_search:
        search, ncc_search = around, ncc_around
        report.update(search_mm=rounded(search), ncc_search=round(ncc_search, 4), search_centre="centre_of_mass")
    ncc_com = ncc_at(fixed, masks.fixed, moving, com)
    report["ncc_centre_of_mass"] = round(ncc_com, 4)
    keep = ncc_search <= ncc_com + limits.PREALIGN_NCC_MARGIN
    why = f"NCC {ncc_com:.3f} at the centre of mass against {ncc_search:.3f} for the search"
    report.update(chosen="centre_of_mass" if keep else "search", reason=why)
    # far apart, one of them is wrong: fine only when the centre of mass clearly wins on similarity
    distance = float(np.linalg.norm(com - search))
    agree = Check("prealign.agreement", "ok", distance, f"<= {limits.PREALIGN_AGREE_MM:g} mm, or the centre of "
                  f"mass's NCC higher by {limits.PREALIGN_NCC_MARGIN:g}")
    if distance > limits.PREALIGN_AGREE_MM and not (keep and ncc_com > ncc_search + limits.PREALIGN_NCC_MARGIN):
        agree = Check(agree.name, "suspect", distance, agree.limit,
                      f"the lungs' centre-of-mass translation and the translation search differ by {distance:.1f} mm "
                      f"(kept: {report['chosen']})")
        warn(f"warning: {agree.detail}")
    checks.append(agree)
    return Prealignment(com if report["chosen"] == "centre_of_mass" else search, report, checks)
