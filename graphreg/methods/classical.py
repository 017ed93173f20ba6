"""Classical dense registration baselines through SimpleITK: demons and B-spline free-form deformation.

Both run on the same working pair as every other method (:mod:`graphreg.methods.keypoint.preprocess`:
isotropic grid around the fixed lungs, intensities in ``[0, 1]``, moving lungs pre-aligned by
their centres of mass) and return a :class:`~graphreg.result.registration.Registration`.

- ``"demons"``: ``sitk.FastSymmetricForcesDemonsRegistrationFilter`` (or
  ``DiffeomorphicDemonsRegistrationFilter``) on a Gaussian pyramid; each level starts from the
  previous level's field.
- ``"bspline-ffd"``: ``sitk.ImageRegistrationMethod`` with a cubic ``BSplineTransform``, metric
  restricted to the (dilated) fixed lung mask, L-BFGS-B, a Gaussian pyramid of shrink factors
  (one control mesh for all levels: ITK's L-BFGS-B keeps its parameter scales across levels, so
  mesh refinement with ``SetInitialTransformAsBSpline`` fails with it).

Nothing is re-implemented: SimpleITK computes the fields; this module only sets them up and
converts the result (world mm, fixed -> moving) to the library's voxel convention.

Convention:
    SimpleITK's demons and ``ImageRegistrationMethod`` both estimate a map from fixed physical
    points to moving physical points, i.e. the library's fixed -> moving direction; their
    displacement images hold world mm vectors ``(x, y, z)`` on the fixed (working) grid.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Optional

import numpy as np
import SimpleITK as sitk
import torch

from graphreg.core.config import from_mapping, load_config
from graphreg.errors import ConfigError, is_int_at_least
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.methods.registry import method_names
from graphreg.result.registration import Registration

#: methods of :func:`register_classical`
CLASSICAL_METHODS = method_names("classical")


@dataclass
class DemonsOptions:
    """Multi-resolution demons (lengths in working voxels, smoothing in mm)."""

    variant: str = "fast-symmetric"  #: ``"fast-symmetric"`` or ``"diffeomorphic"``
    shrink_factors: list = field(default_factory=lambda: [4, 2, 1])  #: pyramid, coarse to fine
    iterations: list = field(default_factory=lambda: [80, 40, 20])  #: demons iterations per level
    smoothing_sigmas: list = field(default_factory=lambda: [2.0, 1.0, 0.0])  #: image smoothing per level (voxels)
    field_sigma_mm: float = 2.0  #: Gaussian regularisation of the displacement field (mm)
    max_step_length: float = 2.0  #: largest update per iteration (mm; 0 = unbounded)


@dataclass
class BSplineFFDOptions:
    """Multi-resolution B-spline free-form deformation (``ImageRegistrationMethod``)."""

    control_spacing_mm: float = 20.0  #: control-point spacing at the finest level (mm)
    shrink_factors: list = field(default_factory=lambda: [4, 2, 1])  #: pyramid, coarse to fine
    smoothing_sigmas: list = field(default_factory=lambda: [2.0, 1.0, 0.0])  #: per level (voxels)
    #: ``"mse"``, ``"ncc"`` (global correlation) or ``"mattes"`` (mutual information); why ncc:
    #: ``docs/design.md`` ("Measured reasons of defaults")
    metric: str = "ncc"
    iterations: int = 50  #: L-BFGS-B iterations per level
    #: fraction of voxels sampled by the metric (random, seeded)
    sampling_percentage: float = 0.01
    #: the metric samples at least this many voxels at every level: the percentage rises at the
    #: coarse levels, where 1 % of a shrunk lung mask is only a few hundred voxels (or none on a
    #: small image, which ITK rejects)
    min_samples: int = 2000
    mask_dilation_mm: float = 6.0  #: the fixed lung mask is dilated by this before masking the metric


def _options(cls, values: Optional[dict], name: str):
    """``cls`` from a mapping of overrides: unknown keys, wrong types and pyramid lists of unequal
    lengths raise :class:`ConfigError` naming the key."""
    values = dict(values or {})
    list_keys = [f.name for f in fields(cls) if f.type in ("list", list)]
    lists = {key: values.pop(key) for key in list_keys if key in values}
    options = from_mapping(cls, values, f"{name}.")
    for key, value in lists.items():
        if not isinstance(value, (list, tuple)) or not value or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value):
            raise ConfigError(f"config key '{name}.{key}': expected a non-empty list of numbers >= 0, got {value!r}")
        setattr(options, key, list(value))
    pyramid = {key: len(getattr(options, key)) for key in list_keys}
    if len(set(pyramid.values())) != 1:
        raise ConfigError(f"{name}: the pyramid lists must have one length, got {pyramid}")
    if min(options.shrink_factors) < 1 or any(int(s) != s for s in options.shrink_factors):
        raise ConfigError(f"config key '{name}.shrink_factors': expected integers >= 1, got {options.shrink_factors}")
    return options


def _to_image(array: np.ndarray, grid: Grid, pixel=sitk.sitkFloat32) -> sitk.Image:
    image = sitk.Cast(sitk.GetImageFromArray(np.ascontiguousarray(array)), pixel)
    grid.apply_to_sitk(image)
    return image


def _level(image: sitk.Image, shrink: int, sigma_voxels: float) -> sitk.Image:
    """``image`` smoothed by ``sigma_voxels`` (voxels) and shrunk by ``shrink``."""
    if sigma_voxels > 0:
        image = sitk.SmoothingRecursiveGaussian(image, [sigma_voxels * s for s in image.GetSpacing()])
    return sitk.Shrink(image, [int(shrink)] * 3) if shrink > 1 else image


def demons_field(fixed: sitk.Image, moving: sitk.Image, options: DemonsOptions,
                 progress: Optional[Callable[[str], None]] = None) -> sitk.Image:
    """Multi-resolution demons displacement (vector image, world mm, on ``fixed``'s grid).

    Args:
        fixed, moving: float images on the same grid with comparable intensities.
        options: see :class:`DemonsOptions`.
    """
    if options.variant == "fast-symmetric":
        demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    elif options.variant == "diffeomorphic":
        demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    else:
        raise ConfigError(f"demons.variant: expected 'fast-symmetric' or 'diffeomorphic', got {options.variant!r}")
    demons.SetSmoothDisplacementField(True)
    demons.SetStandardDeviations(float(options.field_sigma_mm))
    demons.SetMaximumUpdateStepLength(float(options.max_step_length))
    displacement = None
    for shrink, sigma, iterations in zip(options.shrink_factors, options.smoothing_sigmas, options.iterations):
        fixed_level = _level(fixed, shrink, sigma)
        moving_level = _level(moving, shrink, sigma)
        if displacement is None:
            initial = sitk.Image(fixed_level.GetSize(), sitk.sitkVectorFloat64, 3)
            initial.CopyInformation(fixed_level)
        else:
            initial = sitk.Resample(displacement, fixed_level, sitk.Transform(), sitk.sitkLinear, 0.0,
                                    sitk.sitkVectorFloat64)
        demons.SetNumberOfIterations(int(iterations))
        displacement = demons.Execute(fixed_level, moving_level, initial)
        if progress:
            progress(f"demons level x{shrink}: {demons.GetElapsedIterations()} iterations, "
                     f"metric {demons.GetMetric():.4g}")
    if displacement.GetSize() != fixed.GetSize():
        displacement = sitk.Resample(displacement, fixed, sitk.Transform(), sitk.sitkLinear, 0.0,
                                     sitk.sitkVectorFloat64)
    return displacement


def bspline_ffd_field(fixed: sitk.Image, moving: sitk.Image, fixed_mask: Optional[sitk.Image],
                      options: BSplineFFDOptions, seed: int = 0,
                      progress: Optional[Callable[[str], None]] = None) -> sitk.Image:
    """Multi-resolution B-spline FFD displacement (vector image, world mm, on ``fixed``'s grid).

    Args:
        fixed, moving: float images on the same grid.
        fixed_mask: uint8 lung mask on ``fixed``'s grid (dilated by ``options.mask_dilation_mm``),
            or None for the whole image.
        options: see :class:`BSplineFFDOptions`.
        seed: seed of the metric's random sampling.
    """
    levels = len(options.shrink_factors)
    extent = [n * s for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
    mesh = [max(1, int(round(e / options.control_spacing_mm))) for e in extent]
    transform = sitk.BSplineTransformInitializer(fixed, mesh, 3)

    method = sitk.ImageRegistrationMethod()
    if options.metric == "mse":
        method.SetMetricAsMeanSquares()
    elif options.metric == "ncc":
        method.SetMetricAsCorrelation()
    elif options.metric == "mattes":
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    else:
        raise ConfigError(f"bspline-ffd.metric: expected 'mse', 'ncc' or 'mattes', got {options.metric!r}")
    if not 0 < options.sampling_percentage <= 1:
        raise ConfigError(f"bspline-ffd.sampling_percentage: expected a value in (0, 1], "
                          f"got {options.sampling_percentage}")
    if not is_int_at_least(options.min_samples, 1):
        raise ConfigError(f"bspline-ffd.min_samples: expected an integer >= 1, got {options.min_samples!r}")
    if fixed_mask is not None:
        radius = [max(0, int(round(options.mask_dilation_mm / s))) for s in fixed_mask.GetSpacing()]
        fixed_mask = sitk.BinaryDilate(fixed_mask, radius) if max(radius) else fixed_mask
        method.SetMetricFixedMask(fixed_mask)
    if options.sampling_percentage < 1:
        region = (int(np.count_nonzero(sitk.GetArrayViewFromImage(fixed_mask))) if fixed_mask is not None
                  else int(np.prod(fixed.GetSize())))
        percentages = [min(1.0, max(float(options.sampling_percentage), options.min_samples * s ** 3 / max(region, 1)))
                       for s in options.shrink_factors]
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentagePerLevel(percentages, int(seed))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-12, numberOfIterations=int(options.iterations),
                                maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=4 * int(options.iterations),
                                costFunctionConvergenceFactor=1e5)
    method.SetShrinkFactorsPerLevel([int(s) for s in options.shrink_factors])
    method.SetSmoothingSigmasPerLevel([float(s) for s in options.smoothing_sigmas])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(transform, inPlace=True)
    if progress:
        method.AddCommand(sitk.sitkMultiResolutionIterationEvent,
                          lambda: progress(f"bspline-ffd level {method.GetCurrentLevel() + 1}/{levels}: "
                                           f"metric {method.GetMetricValue():.4g}"))
    final = method.Execute(fixed, moving)
    return sitk.TransformToDisplacementField(final, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(),
                                             fixed.GetSpacing(), fixed.GetDirection())


def register_classical(fixed: Any, moving: Any, fixed_mask: Any = None, moving_mask: Any = None,
                       method: str = "demons", config: Any = None, options: Optional[dict] = None,
                       progress: Optional[Callable[[str], None]] = None) -> Registration:
    """Register ``moving`` to ``fixed`` with a classical SimpleITK method.

    Args:
        fixed, moving, fixed_mask, moving_mask: as for :func:`graphreg.api.register`.
        method: ``"demons"`` or ``"bspline-ffd"``.
        config: a :class:`~graphreg.core.config.RegistrationConfig` source; its ``preprocess`` section
            (working spacing, HU window, crop margin, pre-alignment) and ``seed`` are used.
        options: overrides of :class:`DemonsOptions` or :class:`BSplineFFDOptions` (unknown keys
            are rejected).
        progress: optional callback receiving one line per stage.

    Returns:
        A :class:`~graphreg.result.registration.Registration`; ``config`` in it holds the preprocessing
        and the method's options.
    """
    from graphreg.methods.workflow import prepare_pair, read_inputs, wrap_registration

    if method not in CLASSICAL_METHODS:
        raise ConfigError(f"method: expected one of {', '.join(CLASSICAL_METHODS)}, got {method!r}")
    opts = _options(DemonsOptions if method == "demons" else BSplineFFDOptions, options, method)
    cfg = load_config(config)
    start = time.perf_counter()
    dense = prepare_pair(read_inputs(fixed, moving, fixed_mask, moving_mask, progress), cfg.preprocess,
                         torch.device("cpu"))
    pair = dense.pair
    say = progress or (lambda line: None)
    say(f"preprocess: working grid {pair.grid.size_xyz} at {cfg.preprocess.spacing_mm} mm ({dense.seconds:.1f} s)")

    tick = time.perf_counter()
    fixed_image = _to_image(pair.fixed[0, 0].cpu().numpy(), pair.grid)
    moving_image = _to_image(pair.moving[0, 0].cpu().numpy(), pair.grid)
    if method == "demons":
        field_image = demons_field(fixed_image, moving_image, opts, say)
    else:
        mask_image = _to_image(pair.fixed_mask[0, 0].cpu().numpy().astype(np.uint8), pair.grid, sitk.sitkUInt8)
        field_image = bspline_ffd_field(fixed_image, moving_image, mask_image, opts, cfg.seed, say)
    displacement = DisplacementField.from_sitk(field_image).displacement
    timings = {"load": dense.seconds, "optimise": time.perf_counter() - tick}
    timings["total"] = time.perf_counter() - start
    say(f"{method}: {timings['optimise']:.1f} s")
    config_record = {"preprocess": asdict(cfg.preprocess), method: asdict(opts), "seed": cfg.seed}
    return wrap_registration(dense, displacement, method, config_record, timings,
                              {"simpleitk": sitk.Version_VersionString()})


__all__ = ["BSplineFFDOptions", "CLASSICAL_METHODS", "DemonsOptions", "bspline_ffd_field", "demons_field",
           "register_classical"]
