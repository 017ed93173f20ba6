"""Peer registration tools run through the benchmark: elastix (itk-elastix), ConvexAdam and ANTs SyN (antspyx).

All are optional (``pip install 'graphreg[peers]'``) and registered lazily in
:mod:`graphreg.apps.bench.methods`; this module imports them only inside the functions.

Convention:
    Each method returns a :class:`~graphreg.core.field.DisplacementField` on the fixed image's grid,
    pointing fixed -> moving, like every graphreg method.

    - elastix: ``transformix`` writes the deformation field ``T(x) - x`` on the fixed image
      domain, in world mm along ITK's LPS axes, where ``T`` maps a *fixed* point to its *moving*
      position (elastix registers by sampling the moving image at ``T(x)``). That is graphreg's
      direction and ITK's mm layout, read by :meth:`DisplacementField.from_mm_array`.
    - ConvexAdam (``convexAdam.convex_adam_MIND.convex_adam_pt``): given two arrays of the same
      shape it returns ``(*shape, 3)`` displacements in voxels of that array, component ``i``
      along array axis ``i``, fixed -> moving (its ``apply_convex`` samples the moving array at
      ``index + disp`` with ``scipy.ndimage.map_coordinates``). Fed ``(z, y, x)`` arrays, this is
      exactly graphreg's voxel convention on the working grid.
    - ANTs (``ants.registration``): its forward transforms ``[warp, affine]`` map a fixed point to
      its moving position as ``affine(warp(x))`` (ITK convention, LPS mm; checked against
      ``ants.apply_transforms_to_points``); sampled on the fixed grid by SimpleITK.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import SimpleITK as sitk

from graphreg.errors import GeometryError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.core.volume import Volume, bounding_box
from graphreg.apps.bench.methods import MethodResult


def dilate_mask(mask: Volume, radius_mm: float) -> Volume:
    """Binary dilation of ``mask > 0`` by a ball of ``radius_mm`` (anisotropic in voxels).

    Shapes:
        mask.array ``(z, y, x)``; returns a ``uint8`` 0/1 Volume on the same grid.
    """
    binary = Volume((np.asarray(mask.array) > 0).astype(np.uint8), mask.grid).to_sitk()
    if radius_mm <= 0:
        return Volume(sitk.GetArrayFromImage(binary), mask.grid)
    radius = [max(1, int(math.ceil(radius_mm / s))) for s in mask.grid.spacing]
    dilated = sitk.BinaryDilate(binary, radius, sitk.sitkBall, 0.0, 1.0)
    return Volume(sitk.GetArrayFromImage(dilated), mask.grid)


# ====================================================================== elastix
@dataclass(frozen=True)
class ElastixSettings:
    """The elastix setup used for lung CT (affine, then cubic B-spline).

    Attributes:
        resolutions: pyramid levels of both stages.
        grid_spacing_mm: final B-spline control point spacing.
        grid_schedule: control grid spacing factor per level (coarse -> fine).
        metric: ``"AdvancedMattesMutualInformation"`` or ``"AdvancedNormalizedCorrelation"``.
        bending_weight: weight of ``TransformBendingEnergyPenalty`` relative to the metric.
        affine_iterations, bspline_iterations: optimiser iterations per level.
        spatial_samples: random samples per iteration.
        mask_dilation_mm: the fixed lung mask is dilated by this before use.
    """

    resolutions: int = 4
    grid_spacing_mm: float = 10.0
    grid_schedule: tuple[float, ...] = (8.0, 4.0, 2.0, 1.0)
    metric: str = "AdvancedMattesMutualInformation"
    bending_weight: float = 0.05
    affine_iterations: int = 250
    bspline_iterations: int = 300
    spatial_samples: int = 4000
    mask_dilation_mm: float = 10.0

    def parameter_maps(self) -> list[dict[str, list[str]]]:
        """The affine and B-spline elastix parameter maps (plain dicts of string lists)."""
        if len(self.grid_schedule) != self.resolutions:
            raise GeometryError(f"grid_schedule: expected {self.resolutions} factors (one per "
                                f"resolution), got {len(self.grid_schedule)}")
        common = {
            "FixedInternalImagePixelType": ["float"],
            "MovingInternalImagePixelType": ["float"],
            "FixedImagePyramid": ["FixedRecursiveImagePyramid"],
            "MovingImagePyramid": ["MovingRecursiveImagePyramid"],
            "NumberOfResolutions": [str(self.resolutions)],
            "Interpolator": ["LinearInterpolator"],
            "ResampleInterpolator": ["FinalBSplineInterpolator"],
            "FinalBSplineInterpolationOrder": ["1"],
            "Resampler": ["DefaultResampler"],
            "Optimizer": ["AdaptiveStochasticGradientDescent"],
            "AutomaticParameterEstimation": ["true"],
            "ASGDParameterEstimationMethod": ["DisplacementDistribution"],
            "ImageSampler": ["RandomCoordinate"],
            "NewSamplesEveryIteration": ["true"],
            "NumberOfSpatialSamples": [str(self.spatial_samples)],
            "NumberOfSamplesForExactGradient": ["4096"],
            "MaximumNumberOfSamplingAttempts": ["8"],
            "CheckNumberOfSamples": ["true"],
            "NumberOfHistogramBins": ["32"],
            "ErodeMask": ["false"],
            "WriteResultImage": ["false"],
            "DefaultPixelValue": ["-1000"],
            "HowToCombineTransforms": ["Compose"],
        }
        affine = dict(common, **{
            "Registration": ["MultiResolutionRegistration"],
            "Transform": ["AffineTransform"],
            "AutomaticScalesEstimation": ["true"],
            "AutomaticTransformInitialization": ["true"],
            "AutomaticTransformInitializationMethod": ["CenterOfGravity"],
            "Metric": [self.metric],
            "MaximumNumberOfIterations": [str(self.affine_iterations)],
        })
        bspline = dict(common, **{
            "Registration": ["MultiMetricMultiResolutionRegistration"],
            "Transform": ["BSplineTransform"],
            "BSplineTransformSplineOrder": ["3"],
            "FinalGridSpacingInPhysicalUnits": [f"{self.grid_spacing_mm:g}"],
            "GridSpacingSchedule": [f"{f:g}" for f in self.grid_schedule],
            "Metric": [self.metric, "TransformBendingEnergyPenalty"],
            "Metric0Weight": ["1.0"],
            "Metric1Weight": [f"{self.bending_weight:g}"],
            "MaximumNumberOfIterations": [str(self.bspline_iterations)],
        })
        return [affine, bspline]


def _to_itk(volume: Volume, dtype):
    """``volume`` as an ITK image of ``dtype`` with its geometry."""
    import itk

    image = itk.GetImageFromArray(np.ascontiguousarray(volume.array, dtype=dtype))
    image.SetSpacing([float(s) for s in volume.grid.spacing])
    image.SetOrigin([float(o) for o in volume.grid.origin])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(volume.grid.direction_matrix)))
    return image


def elastix_register(fixed: Volume, moving: Volume, fixed_mask: Optional[Volume] = None,
                     settings: ElastixSettings = ElastixSettings()) -> tuple[np.ndarray, dict[str, float]]:
    """Register with elastix and return the transformix deformation field.

    elastix runs with ITK's default thread count (every core, or ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``).
    The thread count is deliberately not passed: itk-elastix segfaults in multi-metric
    registrations when ``number_of_threads > 1`` is set explicitly (ITKElastix issue #160).

    Shapes:
        returns ``(field_mm, timings)``: ``field_mm`` is ``(z, y, x, 3)`` on ``fixed.grid``, world
        mm ``(x, y, z)``, fixed -> moving; ``timings`` seconds per stage.

    Raises:
        GeometryError: ``fixed_mask`` is not on the fixed grid or is empty.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    import itk

    itk.ElastixRegistrationMethod  # itk loads its modules lazily; this loads elastix's
    timings["import"] = time.perf_counter() - start

    start = time.perf_counter()
    fixed_itk = _to_itk(fixed, np.float32)
    moving_itk = _to_itk(moving, np.float32)
    parameters = itk.ParameterObject.New()
    for parameter_map in settings.parameter_maps():
        parameters.AddParameterMap(parameter_map)
    kwargs = {}
    if fixed_mask is not None:
        if not fixed_mask.grid.same_as(fixed.grid):
            raise GeometryError("fixed_mask: expected the fixed image's grid, got "
                                f"[{fixed_mask.grid.describe()}] vs [{fixed.grid.describe()}]")
        if not np.any(fixed_mask.array):
            raise GeometryError("fixed_mask: expected at least one non-zero voxel, got an empty mask")
        kwargs["fixed_mask"] = _to_itk(dilate_mask(fixed_mask, settings.mask_dilation_mm), np.uint8)
    timings["preprocess"] = time.perf_counter() - start

    start = time.perf_counter()
    _, transform = itk.elastix_registration_method(
        fixed_itk, moving_itk, parameter_object=parameters, log_to_console=False, **kwargs)
    timings["register"] = time.perf_counter() - start

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="graphreg-transformix-") as scratch:
        # transformix writes deformationField.* into its output directory (the cwd by default)
        deformation = itk.transformix_deformation_field(moving_itk, transform, output_directory=scratch)
    field_mm = np.asarray(itk.GetArrayFromImage(deformation), dtype=np.float64)
    timings["deformation_field"] = time.perf_counter() - start
    if field_mm.shape != (*fixed.grid.shape, 3):  # transformix writes on the fixed domain
        raise GeometryError(f"transformix field: expected shape {(*fixed.grid.shape, 3)}, "
                            f"got {field_mm.shape}")
    return field_mm, timings


def elastix_method(fixed: Volume, moving: Volume, fixed_mask: Optional[Volume],
                   moving_mask: Optional[Volume], device: str = "cpu") -> MethodResult:
    """Benchmark method ``"elastix"``: :func:`elastix_register` with :class:`ElastixSettings`.

    Runs on the CPU with every available core (``device`` is ignored); the moving mask is unused.
    """
    settings = ElastixSettings()
    field_mm, timings = elastix_register(fixed, moving, fixed_mask, settings)
    import itk

    threads = int(itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads())
    start = time.perf_counter()
    field = DisplacementField.from_mm_array(field_mm, fixed.grid)
    timings["to_field"] = time.perf_counter() - start
    extras = {"threads": threads, "grid_spacing_mm": settings.grid_spacing_mm,
              "metric": settings.metric, "resolutions": settings.resolutions}
    return MethodResult(field, timings, extras)


# ====================================================================== ConvexAdam
@dataclass(frozen=True)
class ConvexAdamSettings:
    """ConvexAdam parameters (defaults: the lung CT setup of the Learn2Reg NLST entry).

    Attributes:
        spacing_mm: isotropic working resolution; both images are resampled onto one grid.
        margin_mm: margin around the fixed lung mask's bounding box for the working grid.
        mind_r, mind_d: MIND-SSC patch radius and dilation (voxels).
        grid_sp: control spacing of the coupled convex stage (voxels).
        disp_hw: search half-width in units of ``grid_sp`` (``±disp_hw * grid_sp`` voxels).
        lambda_weight: diffusion regularisation weight of the Adam stage.
        iterations: Adam iterations.
        grid_sp_adam: resolution factor of the Adam displacement grid.
        intensity_window: HU clipping window before scaling to [0, 1].
    """

    spacing_mm: float = 1.75
    margin_mm: float = 15.0
    mind_r: int = 1
    mind_d: int = 2
    grid_sp: int = 4
    disp_hw: int = 6
    lambda_weight: float = 0.65
    iterations: int = 50
    grid_sp_adam: int = 2
    intensity_window: tuple[float, float] = (-1000.0, 1500.0)


def working_grid(fixed: Volume, fixed_mask: Optional[Volume], spacing_mm: float,
                 margin_mm: float) -> Grid:
    """Isotropic grid of ``spacing_mm`` over the fixed lungs' bounding box plus ``margin_mm``.

    Without a mask the whole fixed image is covered.
    """
    grid = fixed.grid
    if fixed_mask is not None:
        margin = [int(math.ceil(margin_mm / s)) for s in fixed.grid.spacing_zyx]
        start, stop = bounding_box(fixed_mask.array, margin)
        grid = grid.cropped(start, stop)
    return grid.with_spacing((spacing_mm,) * 3)


def convexadam_voxel_field(fixed: np.ndarray, moving: np.ndarray, settings: ConvexAdamSettings,
                           device: str = "cpu") -> np.ndarray:
    """Run ConvexAdam on two arrays of the same shape.

    Shapes:
        fixed, moving: ``(z, y, x)`` on one grid, intensities already scaled.
        returns: ``(z, y, x, 3)`` float64 displacement in voxels, components ``(z, y, x)``,
        fixed -> moving.
    """
    import torch
    from convexAdam.convex_adam_MIND import convex_adam_pt

    if fixed.shape != moving.shape:
        raise GeometryError(f"moving: expected the fixed array's shape {fixed.shape}, got {moving.shape}")
    torch_device = torch.device(device)
    dtype = torch.float16 if torch_device.type == "cuda" else torch.float32
    disp = convex_adam_pt(
        img_fixed=np.ascontiguousarray(fixed, dtype=np.float32),
        img_moving=np.ascontiguousarray(moving, dtype=np.float32),
        mind_r=settings.mind_r, mind_d=settings.mind_d, lambda_weight=settings.lambda_weight,
        grid_sp=settings.grid_sp, disp_hw=settings.disp_hw, selected_niter=settings.iterations,
        selected_smooth=0, grid_sp_adam=settings.grid_sp_adam, ic=True, use_mask=False,
        dtype=dtype, verbose=False, device=torch_device,
    )
    return np.asarray(disp, dtype=np.float64)


def convexadam_method(fixed: Volume, moving: Volume, fixed_mask: Optional[Volume],
                      moving_mask: Optional[Volume], device: str = "cpu") -> MethodResult:
    """Benchmark method ``"convexadam"``.

    Both images are resampled (linear, SimpleITK) onto one isotropic working grid around the fixed
    lungs (:func:`working_grid`), HU-clipped and scaled to [0, 1]; ConvexAdam runs there; its voxel
    field becomes a :class:`DisplacementField` on the working grid and is resampled onto the fixed
    grid (outside the working region: the displacement of the nearest working voxel).
    """
    from graphreg.result.registration import resample_field

    settings = ConvexAdamSettings()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    grid = working_grid(fixed, fixed_mask, settings.spacing_mm, settings.margin_mm)
    low, high = settings.intensity_window
    arrays = []
    for image in (fixed, moving):
        sampled = image.resampled(grid, "linear", default=low).array.astype(np.float32)
        arrays.append((np.clip(sampled, low, high) - low) / (high - low))
    timings["preprocess"] = time.perf_counter() - start

    start = time.perf_counter()
    disp = convexadam_voxel_field(arrays[0], arrays[1], settings, device)
    timings["register"] = time.perf_counter() - start

    start = time.perf_counter()
    import torch

    working = DisplacementField(torch.from_numpy(np.ascontiguousarray(disp)).movedim(-1, 0)[None].float(), grid)
    field = resample_field(working, fixed.grid)
    timings["to_field"] = time.perf_counter() - start
    extras = {"working_size_xyz": list(grid.size_xyz), "spacing_mm": settings.spacing_mm,
              "lambda": settings.lambda_weight, "iterations": settings.iterations}
    return MethodResult(field, timings, extras)


__all__ = ["ConvexAdamSettings", "ElastixSettings", "convexadam_method",
           "convexadam_voxel_field", "dilate_mask", "elastix_method", "elastix_register",
           "working_grid"]


# ====================================================================== ANTs
@dataclass(frozen=True)
class AntsSettings:
    """The ANTs SyN setup used for lung CT (``ants.registration``: affine, then SyN).

    The defaults are the best of the settings tried on the easy 2 mm set that take at most a few
    minutes per pair (``tools/tune_ants.py``; docs/benchmark.md, "ANTs settings").

    Attributes:
        transform: ANTsPy's ``type_of_transform`` (``"SyN"``: affine initialisation, then SyN).
        metric: SyN similarity (``"CC"``: local cross-correlation).
        metric_radius: its neighbourhood radius (voxels; ``syn_sampling`` for CC).
        iterations: SyN iterations per level, coarse to fine; with ``n`` levels ANTsPy shrinks the
            images by ``2**(n-1) ... 1`` and smooths them by ``n-1 ... 0`` voxels (``(40, 20, 0)``:
            shrink 4x2x1, no iteration at full resolution).
        mask_dilation_mm: the fixed lung mask is dilated by this and restricts the metric
            (``None``: no mask).
        grad_step: SyN gradient step (``grad_step``).
        flow_sigma: smoothing of the update field (voxels, ``flow_sigma``).
        total_sigma: smoothing of the total field (voxels, ``total_sigma``).
        affine_sampling: share of voxels the affine stage's metric samples (ANTs' default 0.2).
            The affine stage is not repeatable: on the tests' small phantom it ended 0-25 mm off
            from run to run at 0.2 and at 1.0, with one ITK thread and antspyx's random seed set.
    """

    transform: str = "SyN"
    metric: str = "CC"
    metric_radius: int = 2
    iterations: tuple[int, ...] = (40, 20, 0)
    mask_dilation_mm: Optional[float] = 10.0
    grad_step: float = 0.2
    flow_sigma: float = 3.0
    total_sigma: float = 0.0
    affine_sampling: float = 0.2


def _to_ants(volume: Volume):
    """``volume`` as an ANTs image (float32; ANTs arrays are ``(x, y, z)``)."""
    import ants

    return ants.from_numpy(np.ascontiguousarray(np.asarray(volume.array, dtype=np.float32).transpose(2, 1, 0)),
                           origin=[float(o) for o in volume.grid.origin],
                           spacing=[float(s) for s in volume.grid.spacing],
                           direction=np.asarray(volume.grid.direction_matrix, dtype=np.float64))


def ants_field_mm(forward_transforms: list[str], grid: Grid) -> np.ndarray:
    """ANTs' forward transforms (``[warp, affine]`` for SyN, ``[affine]`` for an affine
    ``type_of_transform``) as a displacement in mm on ``grid``.

    ANTs lists them as ``antsApplyTransforms -t`` takes them: a fixed point goes through the last
    first, so for SyN ``affine(warp(p))``. Displacement fields are ``.nii.gz`` files, the rest ITK
    transform files.

    Shapes:
        returns ``(z, y, x, 3)`` world mm ``(x, y, z)``, fixed -> moving.
    """
    def read(path: str) -> sitk.Transform:
        if str(path).endswith((".nii.gz", ".nii")):
            return sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(path), sitk.sitkVectorFloat64))
        return sitk.ReadTransform(path)

    composite = sitk.CompositeTransform([read(path) for path in reversed(forward_transforms)])  # last added runs first
    field = sitk.TransformToDisplacementField(composite, sitk.sitkVectorFloat64, list(grid.size_xyz),
                                              list(grid.origin), list(grid.spacing), list(grid.direction))
    return sitk.GetArrayFromImage(field)


def ants_register(fixed: Volume, moving: Volume, fixed_mask: Optional[Volume] = None,
                  settings: AntsSettings = AntsSettings()) -> tuple[np.ndarray, dict[str, float]]:
    """Register with ANTs SyN and return its forward transform sampled on the fixed grid.

    Shapes:
        returns ``(field_mm, timings)``: ``field_mm`` is ``(z, y, x, 3)`` on ``fixed.grid``, world
        mm ``(x, y, z)``, fixed -> moving; ``timings`` seconds per stage.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    import ants

    timings["import"] = time.perf_counter() - start
    start = time.perf_counter()
    kwargs = {}
    if fixed_mask is not None and settings.mask_dilation_mm is not None:
        kwargs["mask"] = _to_ants(dilate_mask(fixed_mask, settings.mask_dilation_mm))
    fixed_ants, moving_ants = _to_ants(fixed), _to_ants(moving)
    timings["preprocess"] = time.perf_counter() - start
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="graphreg_ants_") as folder:  # ANTs writes its transforms here
        result = ants.registration(fixed_ants, moving_ants, type_of_transform=settings.transform,
                                   outprefix=f"{folder}/", aff_random_sampling_rate=settings.affine_sampling,
                                   syn_metric=settings.metric, syn_sampling=settings.metric_radius,
                                   reg_iterations=settings.iterations, grad_step=settings.grad_step,
                                   flow_sigma=settings.flow_sigma, total_sigma=settings.total_sigma,
                                   verbose=False, **kwargs)
        timings["register"] = time.perf_counter() - start
        start = time.perf_counter()
        field_mm = ants_field_mm(result["fwdtransforms"], fixed.grid)
    timings["deformation_field"] = time.perf_counter() - start
    return field_mm, timings


def ants_method(fixed: Volume, moving: Volume, fixed_mask: Optional[Volume],
                moving_mask: Optional[Volume], device: str = "cpu",
                settings: AntsSettings = AntsSettings()) -> MethodResult:
    """Benchmark method ``"ants"``: :func:`ants_register` with ``settings`` (CPU; the moving mask is
    unused)."""
    import ants

    field_mm, timings = ants_register(fixed, moving, fixed_mask, settings)
    start = time.perf_counter()
    field = DisplacementField.from_mm_array(field_mm, fixed.grid)
    timings["to_field"] = time.perf_counter() - start
    extras = {"transform": settings.transform, "metric": settings.metric, "metric_radius": settings.metric_radius,
              "iterations": list(settings.iterations), "mask_dilation_mm": settings.mask_dilation_mm,
              "grad_step": settings.grad_step, "flow_sigma": settings.flow_sigma,
              "total_sigma": settings.total_sigma, "affine_sampling": settings.affine_sampling,
              "antspyx": ants.__version__}
    return MethodResult(field, timings, extras)
