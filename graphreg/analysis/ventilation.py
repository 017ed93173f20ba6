"""Regional lung ventilation from a registration: how much each piece of lung expands from exhale to inhale.

Convention:
    - Every map lives on the fixed (reference) grid, is float32 and is 0 outside the fixed lung mask.
    - Sign: **positive = expansion from exhale to inhale**. The ventilation maps are the local volume
      change relative to the exhale volume, ``(V_in - V_ex) / V_ex``, whichever image is inhale.
    - Jacobian method: ``J(x) = det(I + du/dx)`` of the mapping ``x -> x + u(x)`` (fixed -> moving,
      :func:`graphreg.ops.metrics.jacobian_determinant`), the ratio ``dV_moving / dV_fixed``. Fixed
      image inhale: ``V_in / V_ex = 1 / J``, so ``ventilation_jacobian = 1 / J - 1``; fixed image
      exhale: ``ventilation_jacobian = J - 1``.
    - Intensity (HU) method, from the conservation of lung tissue mass (Simon, J Clin Monit Comput
      16:433, 2000; Guerrero et al., Phys Med Biol 51:777, 2006; Reinhardt et al., Med Image Anal
      12:752, 2008). A lung voxel is air (-1000 HU) and tissue (about 0 HU) mixed, so its tissue
      mass is proportional to ``(HU + 1000) * V``. With the mass kept between the fixed image
      ``F(x)`` and the warped moving image ``W(x) = M(x + u(x))``::

          ventilation_hu = V_in / V_ex - 1 = (HU_ex - HU_in) / (HU_in + 1000)

      and the classical specific ventilation (change of *air* volume per exhale air volume,
      Guerrero 2006, Simon 2000)::

          specific_ventilation_hu = 1000 (HU_in - HU_ex) / (HU_ex (1000 + HU_in))

      where ``(HU_in, HU_ex)`` is ``(F, W)`` when the fixed image is inhale, else ``(W, F)``, both
      first smoothed inside the fixed lungs (Gaussian, ``hu_smoothing_mm``, normalised by the
      smoothed mask so that no chest wall or mediastinum enters; :func:`smooth_in_mask`). HU
      are clipped to ``[HU_FLOOR, inf)`` (no empty tissue) for ``ventilation_hu`` and to
      :data:`AIR_HU_RANGE` (air and tissue both present) for the specific ventilation.
    - Mass check: lung tissue mass ``sum (F + 1000) dV`` over the fixed lungs against the moving
      image's mass over their image ``phi(lungs)``, ``sum (W + 1000) J dV`` (HU clipped at -1000).
      The ratio moving / fixed is 1 for a mass-conserving field.
    - Regions: left / right lung (LPS: ``+x`` is the patient's left) and cranio-caudal thirds of the
      fixed lung mask's extent along world ``z`` (``upper`` = towards the head), see
      :func:`lung_regions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field

import numpy as np

from graphreg.errors import GeometryError, GraphregError
from graphreg.core.field import DisplacementField
from graphreg.core.volume import Volume

INHALE_CHOICES = ("auto", "fixed", "moving")
#: lowest HU used in the HU formulas (a voxel of pure air would divide by zero)
HU_FLOOR = -990.0
#: HU range of the specific ventilation (it needs some air at exhale: HU_ex < 0)
AIR_HU_RANGE = (-990.0, -10.0)
#: a second connected component of the lung mask at least this fraction of the largest makes the
#: two components the two lungs; otherwise the lungs are split at the mask's x midline
SECOND_LUNG_FRACTION = 0.2
#: mean lung Jacobian this close to 1 (|log|) cannot tell inhale from exhale by volume, nor mean lung
#: HU this close (HU) by density
_SAME_VOLUME_LOG = 1e-3
_SAME_HU = 0.5
#: map name -> NIfTI file of :func:`write_ventilation`
MAP_FILES = {"jacobian": "jacobian.nii.gz", "ventilation_jacobian": "ventilation_jacobian.nii.gz",
             "ventilation_hu": "ventilation_hu.nii.gz", "specific_ventilation_hu": "specific_ventilation_hu.nii.gz"}
#: default Gaussian sigma (mm) of the HU images before the HU formulas (docs/ventilation.md: on the
#: demo pair it lifts the HU map's Spearman with the truth from 0.54 to 0.84)
HU_SMOOTHING_MM = 3.0
SIDES = ("right", "left")
THIRDS = ("upper", "middle", "lower")


# ---------------------------------------------------------------------- formulas
def jacobian_map(field: DisplacementField) -> np.ndarray:
    """``J`` of ``x + u(x)`` at every voxel of the field's grid, float32 ``(D, H, W)``, computed
    slab by slab (:func:`graphreg.datasets.breathing.jacobian_volume`) so full CT grids fit."""
    from graphreg.datasets.breathing import jacobian_volume

    return jacobian_volume(field.to("cpu"))


def ventilation_from_jacobian(jacobian, fixed_is_inhale: bool) -> np.ndarray:
    """``(V_in - V_ex) / V_ex`` from ``J = dV_moving / dV_fixed``: ``1/J - 1`` (fixed inhale) or
    ``J - 1`` (fixed exhale). ``J <= 0`` (folding) gives NaN. Same shape as ``jacobian``."""
    jac = np.asarray(jacobian, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 1.0 / jac - 1.0 if fixed_is_inhale else jac - 1.0
    return np.where(jac > 0, out, np.nan)


def ventilation_from_hu(hu_inhale, hu_exhale) -> np.ndarray:
    """``(V_in - V_ex) / V_ex = (HU_ex - HU_in) / (HU_in + 1000)`` by tissue mass conservation
    (module docstring), HU clipped below at :data:`HU_FLOOR`. Arrays of one shape, HU."""
    hu_in = np.maximum(np.asarray(hu_inhale, dtype=np.float64), HU_FLOOR)
    hu_ex = np.maximum(np.asarray(hu_exhale, dtype=np.float64), HU_FLOOR)
    return (hu_ex - hu_in) / (hu_in + 1000.0)


def specific_ventilation(hu_inhale, hu_exhale) -> np.ndarray:
    """Guerrero et al. 2006 / Simon 2000: change of air volume per exhale air volume,
    ``1000 (HU_in - HU_ex) / (HU_ex (1000 + HU_in))``, HU clipped to :data:`AIR_HU_RANGE`."""
    hu_in = np.clip(np.asarray(hu_inhale, dtype=np.float64), *AIR_HU_RANGE)
    hu_ex = np.clip(np.asarray(hu_exhale, dtype=np.float64), *AIR_HU_RANGE)
    return 1000.0 * (hu_in - hu_ex) / (hu_ex * (1000.0 + hu_in))


def smooth_in_mask(array, mask, sigma_mm: float, spacing_zyx) -> np.ndarray:
    """Gaussian smoothing (``sigma_mm``, world mm) of ``array`` using only the voxels of ``mask``:
    ``G * (array mask) / G * mask`` (normalised convolution), so values outside the mask never
    enter. ``sigma_mm = 0`` returns the array (float32). Shapes: ``(D, H, W)``; float32 out."""
    from scipy import ndimage

    values = np.asarray(array, dtype=np.float32)
    if sigma_mm <= 0:
        return values
    inside = (np.asarray(mask) > 0).astype(np.float32)
    sigma = [sigma_mm / s for s in spacing_zyx]
    weight = ndimage.gaussian_filter(inside, sigma)
    smoothed = ndimage.gaussian_filter(values * inside, sigma)
    return np.where(inside > 0, smoothed / np.maximum(weight, 1e-6), values)


def tissue_mass(hu, volume_weight) -> float:
    """``sum (HU + 1000) * volume_weight`` (HU clipped at -1000): tissue mass in units of
    1 g/ml-equivalent HU times the weights' volume unit."""
    return float(np.sum((np.maximum(np.asarray(hu, dtype=np.float64), -1000.0) + 1000.0) * volume_weight))


# ---------------------------------------------------------------------- regions
def lung_regions(lungs: Volume) -> tuple[np.ndarray, str]:
    """Label every lung voxel with its lung and cranio-caudal third.

    The lungs: when the mask's second-largest connected component (26-connectivity) holds at least
    :data:`SECOND_LUNG_FRACTION` of the largest, the two are the two lungs (the side of each by the
    world ``x`` of its centre; other voxels go to the lung whose centre is nearer in ``x``);
    otherwise (lungs touching, one lung) voxels are split at the world ``x`` of the mask's centre
    of mass. Thirds: three equal lengths of the mask's world ``z`` extent (voxel centres).

    Returns:
        ``(labels, method)``: uint8 ``(D, H, W)``, 0 outside, else ``1 + 3 * side + third`` with
        side 0 = right, 1 = left and third 0 = upper, 1 = middle, 2 = lower; ``method`` is
        ``"components"`` or ``"midline"``.
    """
    from scipy import ndimage

    mask = np.asarray(lungs.array) > 0
    if not mask.any():
        raise GeometryError("fixed_mask: expected a lung mask with at least one voxel, got an empty mask")
    voxels = np.argwhere(mask).astype(np.float64)
    affine = lungs.grid.voxel_to_world_matrix
    world_x = voxels @ affine[0, :3] + affine[0, 3]
    world_z = voxels @ affine[2, :3] + affine[2, 3]
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(components[mask])
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    method = "midline"
    left = world_x > world_x.mean()
    if count >= 2 and sizes[order[1]] >= SECOND_LUNG_FRACTION * sizes[order[0]]:
        method = "components"
        ids = components[mask]
        centres = [world_x[ids == order[k]].mean() for k in (0, 1)]
        nearer = np.where(np.abs(world_x - centres[0]) <= np.abs(world_x - centres[1]), 0, 1)
        nearer[ids == order[0]], nearer[ids == order[1]] = 0, 1
        left = np.asarray(centres)[nearer] > min(centres)
    low, high = world_z.min(), world_z.max()
    third = np.clip(((high - world_z) / max(high - low, 1e-9) * 3).astype(int), 0, 2)
    labels = np.zeros(mask.shape, np.uint8)
    labels[mask] = (1 + 3 * left.astype(int) + third).astype(np.uint8)
    return labels, method


def _region_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    regions = {"lungs": labels > 0}
    for s, side in enumerate(SIDES):
        regions[side] = (labels >= 1 + 3 * s) & (labels <= 3 + 3 * s)
    for t, third in enumerate(THIRDS):
        regions[third] = (labels > 0) & ((labels - 1) % 3 == t)
    for s, side in enumerate(SIDES):
        for t, third in enumerate(THIRDS):
            regions[f"{side}_{third}"] = labels == 1 + 3 * s + t
    return regions


# ---------------------------------------------------------------------- maps
@dataclass
class VentilationMaps:
    """Ventilation maps of a registration (module docstring), on ``grid`` of the fixed image.

    Attributes:
        maps: name (keys of :data:`MAP_FILES`) -> float32 ``(D, H, W)`` Volume, 0 outside the lungs
            (``jacobian`` is ``J`` itself, 1 outside).
        regions: uint8 region labels (:func:`lung_regions`).
        fixed, lungs: the fixed image and lung mask (for the figure).
        summary: the JSON summary (inhale, conventions, mass check, per-region statistics).
    """

    maps: dict[str, Volume]
    regions: Volume
    fixed: Volume
    lungs: Volume
    summary: dict = dataclass_field(default_factory=dict)


def _stats(values: np.ndarray) -> dict:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": None, "median": None, "p10": None, "p90": None}
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {"mean": float(values.mean()), "median": float(p50), "p10": float(p10), "p90": float(p90)}


def _check_on(name: str, volume: Volume, field: DisplacementField) -> None:
    if not isinstance(volume, Volume):
        raise GraphregError(f"{name}: expected a graphreg Volume, got {type(volume).__name__}")
    if not volume.grid.same_as(field.grid, tol_mm=1e-3):
        raise GeometryError(f"{name}: expected an image on the fixed grid [{' '.join(field.grid.describe().split())}], "
                            f"got [{' '.join(volume.grid.describe().split())}]")


def _which_is_inhale(inhale: str, jac_lungs: np.ndarray, fixed_hu: np.ndarray, warped_hu: np.ndarray) -> tuple[bool, dict]:
    """(fixed is inhale, how it was decided). ``auto``: by lung volume (mean ``J`` < 1: the moving
    lungs are smaller, so the fixed image is inhale), by mean lung HU when the volumes are equal."""
    mean_jac = float(jac_lungs.mean())
    fixed_mean, warped_mean = float(fixed_hu.mean()), float(warped_hu.mean())
    evidence = {"mean_jacobian": mean_jac, "fixed_mean_lung_hu": fixed_mean, "warped_moving_mean_lung_hu": warped_mean}
    if inhale not in INHALE_CHOICES:
        raise GraphregError(f"inhale: expected one of {', '.join(INHALE_CHOICES)}, got {inhale!r}")
    if inhale != "auto":
        return inhale == "fixed", {"by": "given", **evidence}
    if abs(np.log(mean_jac)) >= _SAME_VOLUME_LOG:
        fixed_inhale, by = mean_jac < 1.0, "lung volume (mean J)"
    elif abs(fixed_mean - warped_mean) >= _SAME_HU:
        fixed_inhale, by = fixed_mean < warped_mean, "mean lung HU"
    else:
        raise GraphregError("inhale: cannot tell inhale from exhale (same lung volume and mean HU); "
                            "pass --inhale fixed or --inhale moving")
    hu_says = fixed_mean < warped_mean
    return bool(fixed_inhale), {"by": by, "volume_and_hu_agree": bool((mean_jac < 1.0) == hu_says), **evidence}


def ventilation_maps(field: DisplacementField, fixed: Volume, warped: Volume, lungs: Volume,
                     inhale: str = "auto", hu_smoothing_mm: float = HU_SMOOTHING_MM) -> VentilationMaps:
    """Jacobian and HU ventilation maps, the mass check and the per-region summary.

    Args:
        field: forward field (fixed -> moving) on the fixed grid.
        fixed: fixed image (HU) on that grid.
        warped: the moving image (HU) pulled onto the fixed grid through ``field``, ``M(x + u(x))``.
        lungs: fixed lung mask on that grid (nonzero = lung).
        inhale: ``"fixed"``, ``"moving"`` or ``"auto"`` (detected, see :func:`_which_is_inhale`).
        hu_smoothing_mm: Gaussian sigma (mm) of the HU images inside the lungs before the HU
            formulas (:func:`smooth_in_mask`; 0: none). The mass check uses the raw HU.

    Raises:
        GeometryError: an image or the mask is not on the field's grid, or the mask is empty.
        GraphregError: an unknown ``inhale``, or ``auto`` cannot decide.
    """
    for name, volume in (("fixed", fixed), ("warped", warped), ("fixed_mask", lungs)):
        _check_on(name, volume, field)
    labels, split = lung_regions(lungs)
    inside = labels > 0
    jac = jacobian_map(field)
    fixed_hu = np.asarray(fixed.array, dtype=np.float64)
    warped_hu = np.asarray(warped.array, dtype=np.float64)
    fixed_is_inhale, detection = _which_is_inhale(inhale, jac[inside], fixed_hu[inside], warped_hu[inside])
    if hu_smoothing_mm < 0:
        raise GraphregError(f"hu_smoothing_mm: expected a sigma >= 0 mm, got {hu_smoothing_mm}")
    smooth_fixed, smooth_warped = (smooth_in_mask(image, inside, hu_smoothing_mm, field.grid.spacing_zyx)
                                   for image in (fixed_hu, warped_hu))
    hu_in, hu_ex = (smooth_fixed, smooth_warped) if fixed_is_inhale else (smooth_warped, smooth_fixed)
    arrays = {"jacobian": jac.astype(np.float64),
              "ventilation_jacobian": ventilation_from_jacobian(jac, fixed_is_inhale),
              "ventilation_hu": ventilation_from_hu(hu_in, hu_ex),
              "specific_ventilation_hu": specific_ventilation(hu_in, hu_ex)}
    voxel_ml = float(np.prod(field.grid.spacing)) / 1000.0
    regions = {}
    for name, region in _region_masks(labels).items():
        if not region.any():
            continue
        fixed_mass = tissue_mass(fixed_hu[region], voxel_ml)
        moving_mass = tissue_mass(warped_hu[region], jac[region] * voxel_ml)
        regions[name] = {
            "voxels": int(region.sum()),
            "fixed_volume_ml": float(region.sum() * voxel_ml),
            "moving_volume_ml": float(jac[region].sum() * voxel_ml),
            **{key: _stats(arrays[key][region]) for key in ("ventilation_jacobian", "ventilation_hu",
                                                           "specific_ventilation_hu")},
            "mass_ratio_moving_to_fixed": moving_mass / fixed_mass if fixed_mass > 0 else None,
        }
    folded = int((jac[inside] <= 0).sum())
    summary = {
        "inhale": "fixed" if fixed_is_inhale else "moving",
        "inhale_detection": detection,
        "sign_convention": "positive = expansion from exhale to inhale; ventilation = (V_in - V_ex) / V_ex",
        "formulas": {
            "jacobian": "J = det(I + du/dx) of x -> x + u(x) (fixed -> moving) = dV_moving / dV_fixed",
            "ventilation_jacobian": "1/J - 1" if fixed_is_inhale else "J - 1",
            "ventilation_hu": "(HU_ex - HU_in) / (HU_in + 1000), HU >= %g (tissue mass conservation; "
                              "Simon 2000, Guerrero 2006)" % HU_FLOOR,
            "specific_ventilation_hu": "1000 (HU_in - HU_ex) / (HU_ex (1000 + HU_in)), HU in [%g, %g] "
                                       "(Guerrero et al. PMB 2006)" % AIR_HU_RANGE,
            "mass": "sum (HU + 1000) dV: fixed over the lungs, moving over their image (W + 1000) J dV",
        },
        "hu_smoothing_mm": float(hu_smoothing_mm),
        "hu_images": {"inhale": "fixed" if fixed_is_inhale else "warped moving",
                      "exhale": "warped moving" if fixed_is_inhale else "fixed"},
        "lung_split": split,
        "folded_lung_voxels": folded,
        "regions": regions,
    }
    maps = {}
    for key, array in arrays.items():
        outside = 1.0 if key == "jacobian" else 0.0
        maps[key] = Volume(np.where(inside, np.nan_to_num(array, nan=0.0), outside).astype(np.float32), field.grid)
    return VentilationMaps(maps, Volume(labels, field.grid), fixed, lungs, summary)


# ---------------------------------------------------------------------- agreement with a truth
def agreement(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict:
    """Voxel-wise agreement inside ``mask``: Spearman rank correlation and mean absolute error.

    Shapes:
        estimate, truth, mask: ``(D, H, W)``; voxels where either map is not finite are left out.
    """
    from graphreg.ops.metrics import rank_correlation

    inside = (np.asarray(mask) > 0) & np.isfinite(estimate) & np.isfinite(truth)
    a, b = np.asarray(estimate)[inside], np.asarray(truth)[inside]
    return {"spearman": rank_correlation(a, b), "mae": float(np.abs(a - b).mean()), "voxels": int(inside.sum())}
