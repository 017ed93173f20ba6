"""Peak-memory estimate of the keypoint pipeline, and the memory budget of ``graphreg.register``.

The estimate follows the stages of :func:`graphreg.api.register` with the keypoint method
(preprocessing, Förstner keypoints, MIND-SSC, correlation search and tree belief propagation per
level, densification, Adam instance optimisation) and of
:meth:`graphreg.result.registration.Registration.save` (the field resampled to the fixed image's own
grid, written, the warped image, the Jacobian statistics: what ``graphreg register`` runs). Per
stage it adds what is alive then (inputs, working-grid images, MIND features, fields) and that
stage's temporaries; the peak is the largest stage. Nothing is allocated.

Convention:
    Bytes (int); shapes ``(D, H, W)`` = ``(z, y, x)``. ``n_f``, ``n_m``: voxels of the fixed and
    the moving image on their own grids; ``n_w``: voxels of the working grid
    (``preprocess.spacing_mm`` isotropic around the fixed lungs, :func:`working_grid_shape`);
    ``K = keypoints.num_points`` (an upper bound: fewer are often found); ``L = (2 r + 1)^3``
    candidates of a search level of radius ``r``. The factors below were read off the code
    (tensors alive x 4 bytes, 8 where it uses float64) and then checked against measurements.

With region ``"body"`` the second run's stages are added (``"body: ..."``). Its accuracy against
measured peaks, and what it leaves out, are in ``docs/design.md`` ("Memory estimate").
:data:`BASE_BYTES` is the interpreter with torch, SimpleITK and scipy loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from graphreg.core.config import RegistrationConfig, load_config
from graphreg.errors import GraphregError, ResourceError
from graphreg.core.geometry import Grid

#: Python, torch, SimpleITK, scipy and graphreg loaded, before any image (bytes).
BASE_BYTES = 450 * 2**20

#: bytes per working-grid voxel of each persistent tensor or stage's temporaries.
BYTES_PER_VOXEL = {
    "pair": 10,  # fixed and moving float32, two bool masks
    "features": 96,  # MIND-SSC, 12 channels float32, both images
    "field": 12,  # one displacement field, 3 x float32
    "keypoints": 250,  # Förstner: gradients, structure tensor, its inverse, filters (transient)
    "mind": 200,  # one image's MIND: 6 shifted copies, 12 squared differences, box filter passes
    "preprocess": 30,  # intensity scaling and resampled copies on the working grid
    "warp": 50,  # warped moving features (48) from the second level on
    "level": 140,  # per level: densification (coarse TPS grid upsampled, old and new dense field),
                   # sampled displacements and allocator slack
    "instance_opt_downsample": 200,  # box-filtered full-resolution features before resampling
}
#: bytes per voxel of the instance optimisation's similarity grid (features, warped features,
#: residual and autograd buffers) and of its parameter grid (field, gradient, two Adam moments,
#: smoothing passes).
INSTANCE_OPT_SIMILARITY_BYTES = 420
INSTANCE_OPT_PARAMETER_BYTES = 96
#: bytes per working voxel that the full-resolution refinement holds whatever its sampling: the
#: channels-last copy of the moving features, the fixed features and voxel positions of the masked
#: voxels, the diffusion and smoothing temporaries (calibrated: the 2 mm benchmark pair_01 peaked
#: at 2114 MB RSS with the refinement, 1506 MB without any instance optimisation).
REFINE_FIXED_BYTES = 250
#: the sampled part never costs less than this share of a full similarity grid.
REFINE_MIN_SHARE = 0.25
#: bytes per cost-volume entry (keypoint x candidate) beyond the correlation chunk: the cost and
#: the marginals (float32); belief propagation reuses the correlation's freed memory (measured:
#: 787 keypoints x 29^3 candidates add no more than 512 x 17^3).
COST_ENTRY_BYTES = 8
#: bytes per voxel of the fixed image's own grid when the result is saved: the field (12) and the
#: largest of the writers' temporaries (field in world mm as float64, its copies: ~72).
OUTPUT_FIELD_BYTES = 12
OUTPUT_WRITE_BYTES = 76
#: temporaries per voxel of one chunk (at most 500 000 voxels) of the full-resolution resampling
#: and Jacobian (:mod:`graphreg.result.registration`).
OUTPUT_CHUNK_BYTES = 480
OUTPUT_CHUNK_VOXELS = 500_000


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of a registration.

    Attributes:
        stages: bytes alive at the peak of each stage, in pipeline order.
        working_shape: ``(D, H, W)`` of the working grid used.
        num_keypoints: keypoints assumed.
    """

    stages: dict
    working_shape: tuple
    num_keypoints: int

    @property
    def peak_bytes(self) -> int:
        """The largest stage (bytes)."""
        return max(self.stages.values())

    @property
    def peak_stage(self) -> str:
        """Name of the stage that needs the most memory."""
        return max(self.stages, key=self.stages.get)

    @property
    def peak_gb(self) -> float:
        """:attr:`peak_bytes` in GB (``1e9`` bytes)."""
        return self.peak_bytes / 1e9

    def describe(self) -> str:
        """One line: peak, its stage and the working grid."""
        d, h, w = self.working_shape
        return (f"{self.peak_gb:.2f} GB at stage '{self.peak_stage}' (working grid {d}x{h}x{w}, "
                f"{self.num_keypoints} keypoints)")


def working_grid_shape(fixed_grid: Grid, spacing_mm: float, crop_margin_mm: float,
                       fixed_mask: Optional[np.ndarray] = None) -> tuple[int, int, int]:
    """``(D, H, W)`` of the working grid :func:`graphreg.methods.keypoint.preprocess.working_pair` builds.

    With ``fixed_mask`` (on ``fixed_grid``) the lung bounding box is mapped to the isotropic grid
    and grown by the crop margin (equal to the pipeline's to about one voxel per side); without it,
    the whole field of view at ``spacing_mm`` (an upper bound).

    Shapes:
        fixed_mask: ``(D, H, W)`` of ``fixed_grid`` (nonzero = lungs) or None.
    """
    if not (isinstance(spacing_mm, (int, float)) and math.isfinite(spacing_mm) and spacing_mm > 0):
        raise GraphregError(f"spacing_mm: expected a number > 0 mm, got {spacing_mm!r}")
    isotropic = fixed_grid.with_spacing((spacing_mm,) * 3)
    if fixed_mask is None:
        return isotropic.shape
    mask = np.asarray(fixed_mask) > 0
    if mask.shape != fixed_grid.shape:
        raise GraphregError(f"fixed_mask: expected shape {fixed_grid.shape} (the fixed grid's), got {mask.shape}")
    ranges = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if hits.size == 0:
            return isotropic.shape
        ranges.append((hits[0], hits[-1]))
    corners = np.array([[z, y, x] for z in ranges[0] for y in ranges[1] for x in ranges[2]], dtype=np.float64)
    index = isotropic.world_to_voxel(fixed_grid.voxel_to_world(corners))
    margin = int(np.ceil(crop_margin_mm / spacing_mm))
    start = np.maximum(np.floor(index.min(0)) - margin, 0)
    stop = np.minimum(np.ceil(index.max(0)) + 1 + margin, isotropic.shape)
    return tuple(int(max(1, b - a)) for a, b in zip(start, stop))


def _level_bytes(count: int, radius: int, step: float, symmetric: bool) -> int:
    """Correlation chunk plus cost volumes and belief propagation of one search level."""
    from graphreg.methods.keypoint.correlation import CHUNK_BYTES

    candidates = (2 * radius + 1) ** 3
    half = int(math.floor(2 / step + 1e-9))  # the correlation's default patch radius of 2 voxels
    extended = (2 * radius + 1 + 2 * half) ** 3
    per_point = 4 * ((12 + (2 * half + 1) ** 3 + 3) * extended + 3 * candidates)
    chunk = min(CHUNK_BYTES, count * per_point) + per_point  # chunks hold >= 1 keypoint
    cost = COST_ENTRY_BYTES * count * candidates * (2 if symmetric else 1)
    return chunk + cost


def _pipeline_stages(cfg: RegistrationConfig, n_w: int, count: int, inputs: int, n_f: int, n_m: int,
                     input_itemsize: int) -> dict:
    """Bytes alive at the peak of each pipeline stage on a working grid of ``n_w`` voxels, with
    ``inputs`` bytes held throughout (see :func:`estimate_memory`)."""
    per = {name: factor * n_w for name, factor in BYTES_PER_VOXEL.items()}
    stages = {}
    # binary mask copies (bool + uint8) and one image copied into SimpleITK for resampling
    stages["preprocess"] = inputs + 3 * (n_f + n_m) + max(n_f, n_m) * input_itemsize + per["preprocess"]
    alive = inputs + per["pair"]
    stages["keypoints"] = alive + per["keypoints"]
    stages["mind"] = alive + per["features"] // 2 + per["mind"]
    alive += per["features"] + per["field"]
    for index, level in enumerate(cfg.levels):
        warp = per["warp"] if index else 0
        search = _level_bytes(count, level.radius, level.step, cfg.regulariser.symmetric)
        stages[f"search level {index + 1}"] = alive + warp + search + per["level"]
    io = cfg.instance_opt
    if io.runs() and io.mind_dilation != cfg.mind.dilation:  # its own features, one image at a time
        stages["mind (instance optimisation)"] = alive + per["field"] + per["features"] // 2 + per["mind"]
    if io.enabled and io.iterations > 0:
        similarity = INSTANCE_OPT_SIMILARITY_BYTES * n_w // io.similarity_factor ** 3
        parameter = INSTANCE_OPT_PARAMETER_BYTES * n_w // io.grid_factor ** 3
        downsample = per["instance_opt_downsample"] if io.similarity_factor > 1 else 0
        stages["instance optimisation"] = alive + per["field"] + max(downsample, similarity + parameter)
    if io.enabled and io.refine.iterations > 0:
        stages["instance optimisation (full resolution)"] = (
            alive + per["field"] + (INSTANCE_OPT_PARAMETER_BYTES + REFINE_FIXED_BYTES) * n_w
            + int(INSTANCE_OPT_SIMILARITY_BYTES * n_w * max(io.refine.sample_fraction, REFINE_MIN_SHARE)))
    return stages


def estimate_memory(fixed_grid: Grid, moving_grid: Grid, config=None,
                    working_shape: Optional[Sequence[int]] = None, input_itemsize: int = 2,
                    include_outputs: bool = True, num_keypoints: Optional[int] = None,
                    body_shape: Optional[Sequence[int]] = None) -> MemoryEstimate:
    """Peak memory of registering images on ``fixed_grid`` / ``moving_grid`` with ``config``.

    Args:
        fixed_grid, moving_grid: the images' own grids.
        config: :class:`~graphreg.core.config.RegistrationConfig`, mapping or YAML path (defaults
            when None).
        working_shape: ``(D, H, W)`` of the working grid (:func:`working_grid_shape`); default:
            the whole fixed field of view at the working spacing (an upper bound).
        input_itemsize: bytes per voxel of the images as read (2 for int16 CT, 4 for float32).
        include_outputs: also count saving the result on the fixed grid (``graphreg register``).
        num_keypoints: keypoints to assume; default ``keypoints.num_points`` (the most the
            pipeline keeps; images with little structure give fewer, so this errs high).
        body_shape: with ``config.region.mode == "body"``, ``(D, H, W)`` of the second run's
            working grid around the body (default: the whole fixed field of view at the working
            spacing, an upper bound). Its stages are named ``"body: ..."`` and hold the lung run's
            pair and field besides their own.

    Returns:
        :class:`MemoryEstimate` (``peak_bytes``, ``peak_stage``, ``stages``).
    """
    cfg: RegistrationConfig = load_config(config)
    if working_shape is None:
        working_shape = working_grid_shape(fixed_grid, cfg.preprocess.spacing_mm, cfg.preprocess.crop_margin_mm)
    working_shape = tuple(int(n) for n in working_shape)
    n_f, n_m = math.prod(fixed_grid.shape), math.prod(moving_grid.shape)
    count = cfg.keypoints.num_points if num_keypoints is None else int(num_keypoints)
    inputs = BASE_BYTES + (n_f + n_m) * (input_itemsize + 1)  # images and uint8 lung masks
    stages = _pipeline_stages(cfg, math.prod(working_shape), count, inputs, n_f, n_m, input_itemsize)
    lung_field = BYTES_PER_VOXEL["field"] * math.prod(working_shape)
    if cfg.region.mode == "body":  # the second run, on the body, while the lung run's pair and field stay alive
        if body_shape is None:
            body_shape = fixed_grid.with_spacing((cfg.preprocess.spacing_mm,) * 3).shape
        kept = (BYTES_PER_VOXEL["pair"] + BYTES_PER_VOXEL["field"]) * math.prod(working_shape)
        body = _pipeline_stages(cfg, math.prod(body_shape), count, inputs + kept, n_f, n_m, input_itemsize)
        stages.update({f"body: {name}": value for name, value in body.items()})
        lung_field = BYTES_PER_VOXEL["field"] * math.prod(body_shape)  # the joined field lives on the body's grid
    if include_outputs:
        field = OUTPUT_FIELD_BYTES * n_f
        stages["save result"] = inputs + lung_field + field + max(OUTPUT_WRITE_BYTES * n_f,
                                                                      OUTPUT_CHUNK_BYTES * min(n_f, OUTPUT_CHUNK_VOXELS))
    return MemoryEstimate({name: int(value) for name, value in stages.items()}, working_shape, count)


def validate_memory_budget(budget_gb) -> None:
    """Raise :class:`~graphreg.errors.GraphregError` unless ``budget_gb`` is a finite number > 0."""
    if isinstance(budget_gb, bool) or not isinstance(budget_gb, (int, float)) or not (
            math.isfinite(budget_gb) and budget_gb > 0):
        raise GraphregError(f"memory_budget_gb: expected a number of GB > 0, got {budget_gb!r}")


def check_memory_budget(estimate: MemoryEstimate, budget_gb: Optional[float]) -> None:
    """Raise :class:`~graphreg.errors.ResourceError` when ``estimate`` exceeds ``budget_gb``.

    The message states the estimate, the budget, the stage that needs the most and which
    configuration keys lower it. ``budget_gb=None`` checks nothing.

    Raises:
        GraphregError: ``budget_gb`` is not a positive number.
        ResourceError: the estimate exceeds the budget.
    """
    if budget_gb is None:
        return
    validate_memory_budget(budget_gb)
    if estimate.peak_bytes <= budget_gb * 1e9:
        return
    stage = estimate.peak_stage.removeprefix("body: ")
    if stage == "save result":
        advice = ("the result on the fixed image's own grid dominates: resample the input images to a coarser "
                  "grid before registering, or raise the budget")
    elif stage.startswith("search level"):
        advice = ("lower 'keypoints.num_points', the search radius 'levels[i].radius' or use fewer 'levels', "
                  "keep 'regulariser.symmetric' false, or coarsen 'preprocess.spacing_mm'")
    else:
        advice = ("coarsen the working grid 'preprocess.spacing_mm' (memory falls with its cube), lower "
                  "'preprocess.crop_margin_mm', raise 'instance_opt.similarity_factor' / "
                  "'instance_opt.grid_factor', set 'instance_opt.refine.iterations' to 0, lower 'keypoints.num_points' or use fewer 'levels'")
    if estimate.peak_stage.startswith("body: "):
        advice += "; or use region 'lungs' (region 'body' registers the body outside the lungs in a second run)"
    raise ResourceError(f"memory_budget_gb: this registration needs an estimated {estimate.describe()}, "
                        f"more than the budget of {budget_gb:g} GB; to fit, {advice}")


__all__ = ["BASE_BYTES", "MemoryEstimate", "check_memory_budget", "estimate_memory", "validate_memory_budget",
           "working_grid_shape"]
