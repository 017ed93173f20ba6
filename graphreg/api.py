"""``graphreg.register``: one call from two lung CTs to a dense field in physical space."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional

import numpy as np
import torch

from .allocator import reusing_freed_memory
from .config import RegionConfig, RegistrationConfig, config_label, load_config, validate_config
from .device import resolve_device
from .errors import GraphregError
from .field import DisplacementField
from .methods import method_info, method_names
from .registration import Registration, working_lungs
from .threads import thread_report, use_threads

KEYPOINT_METHODS = method_names("keypoint")
CLASSICAL_METHODS = method_names("classical")
CNN_METHODS = method_names("cnn")
#: diagnostics for the benchmark, not registration methods (they need the true field)
DIAGNOSTIC_METHODS = ("oracle",)


@reusing_freed_memory()
def register(fixed: Any, moving: Any, fixed_mask: Any = None, moving_mask: Any = None,
             method: str = "corrfield", config: Any = None, device: Optional[str] = None,
             progress: Optional[Callable[[str], None]] = None, model: Any = None,
             memory_budget_gb: Optional[float] = None, threads: Optional[int] = None,
             region: Optional[str] = None) -> Registration:
    """Register a moving lung CT to a fixed one.

    Args:
        fixed, moving: path (NIfTI, MHA/MHD, NRRD, DICOM folder, DIR-Lab ``.img`` with a known
            name), ``SimpleITK.Image``, :class:`~graphreg.volume.Volume` or ``(array (z, y, x),
            Grid)``; intensities in Hounsfield units.
        fixed_mask, moving_mask: lung masks in the same forms (computed when None; a mask on
            another grid than its image is resampled with a warning).
        method: ``"corrfield"`` (keypoint pipeline with the learning-free graph regulariser),
            ``"graphregnet"`` (the same pipeline with the learned GraphRegNet regularising the
            coarse level; shipped weights unless ``model=`` is given),
            ``"demons"`` / ``"bspline-ffd"`` (SimpleITK), or a dense CNN baseline
            (``"voxelmorph"``, ``"bspline-cnn"``, ``"linear-deformable"``; network + instance
            optimisation unless ``config`` sets ``instance_opt.enabled: false``); or the
            diagnostic ``"oracle"``: the keypoint pipeline with the true displacements of ``model``
            (the ground-truth :class:`~graphreg.field.DisplacementField` on the fixed grid) at the
            keypoints in place of any regulariser, then the same densification and instance
            optimisation: the best a keypoint regulariser could reach through them.
        config: a :class:`~graphreg.config.RegistrationConfig`, a YAML path or a mapping of
            overrides (unknown keys are rejected).
        device: ``"cpu"``, ``"cuda"`` or None (GPU when present).
        progress: optional callback receiving one line per stage.
        model: checkpoint path (or network) of a learned method (None: the shipped
            ``assets/<name>/model.pt``); ignored by the others.
        memory_budget_gb: refuse to run (:class:`~graphreg.errors.ResourceError`, raised after
            reading the images and masks, before resampling and the pipeline) when the peak
            memory estimated by :func:`graphreg.memory.estimate_memory` exceeds this many GB;
            the message names the config keys that lower it. Keypoint methods only; None: no check.
        threads: CPU threads of this call (torch and SimpleITK, restored afterwards), an integer
            >= 1; None: ``$GRAPHREG_THREADS``, else the cores this process may use
            (:func:`graphreg.threads.resolve_threads`). Recorded in the report with the OpenMP wait
            policy; import graphreg before torch so that idle threads sleep (``docs/threads.md``).
            The field is bit-identical for the same thread count (``docs/reproducibility.md``).
        region: where the field is registered and trusted (:mod:`graphreg.region`), overriding the
            config's ``region.mode``: ``"lungs"`` (default: the registered field within
            ``region.margin_mm`` of the fixed lungs, decaying beyond to the translation of the
            body's centre of mass) or ``"body"`` (keypoint methods: a second registration of the body outside
            the lungs, joined with sliding at the lung boundary, for dose warping). ``.valid_mask``
            and ``extras["region"]`` say where the field is trustworthy.

    Returns:
        :class:`~graphreg.registration.Registration` with ``.field`` (on the fixed grid, mm
        exportable), ``.transform_points``, ``.warp``, ``.save`` and ``.timings``. Keypoint
        methods also give ``.status`` (``"ok"``, ``"suspect"`` or ``"failed"``, from the checks of
        :mod:`graphreg.checks`; ``extras["quality"]`` holds the reasons), and record the lung
        mask checks and fallbacks (``extras["masks"]``) and the pre-alignment (``extras["prealign"]``).
        An automatic mask that fails its checks never stops the run: it is replaced and the
        fallback is reported.
    """
    settings = region_config(config, region)
    if settings.mode == "body" and method not in KEYPOINT_METHODS:
        raise GraphregError(f"region: 'body' is available for the keypoint methods ({', '.join(KEYPOINT_METHODS)}), "
                            f"got method {method!r}; use region 'lungs'")
    with use_threads(threads) as count:
        result = _register(fixed, moving, fixed_mask, moving_mask, method, config, device, progress, model,
                           memory_budget_gb, settings)
        if settings.mode == "lungs":
            with_lung_region(result, settings)
    result.extras.update(thread_report(count))
    return result


def region_config(config: Any, region: Optional[str]) -> RegionConfig:
    """The ``region`` section of ``config`` (a :func:`load_config` source), its mode replaced by
    ``region`` when given, checked against :data:`graphreg.config.RULES`; the margin is capped at
    ``preprocess.crop_margin_mm`` (the field is estimated only that far from the lungs)."""
    cfg = load_config(config)
    settings = dataclasses.replace(cfg.region)
    if region is not None:
        settings.mode = region
    validate_config(settings, "region.")
    settings.margin_mm = min(settings.margin_mm, cfg.preprocess.crop_margin_mm)
    return settings


def with_lung_region(result: Registration, settings: RegionConfig) -> Registration:
    """Region ``"lungs"`` applied to a finished registration (:func:`graphreg.region.lung_region_field`):
    its working field replaced by the blended one, ``valid_mask`` and ``extras["region"]`` set."""
    from .region import lung_region_field, region_report

    shift = np.asarray(result.extras["body_translation_mm"], dtype=np.float64)
    lungs = result.fixed_lungs
    if lungs is None or not lungs.grid.same_as(result.working_field.grid):
        raise GraphregError("region: 'lungs' needs the fixed lung mask on the working grid, which this result lacks")
    start = time.perf_counter()
    result.working_field, result.valid_mask, decay = lung_region_field(result.working_field, lungs.array, shift,
                                                                       result.fixed_grid, settings)
    result.timings["region"] = time.perf_counter() - start
    result.extras["region"] = region_report(settings, shift, decay)
    return result


def _register(fixed: Any, moving: Any, fixed_mask: Any, moving_mask: Any, method: str, config: Any,
              device: Optional[str], progress: Optional[Callable[[str], None]], model: Any,
              memory_budget_gb: Optional[float], settings: RegionConfig) -> Registration:
    """:func:`register` in the thread setting it chose."""
    from .pipeline.driver import check_learned_level, run_keypoint_pipeline
    from .region import body_translation_mm
    from .workflow import prepare_pair, read_inputs

    if method not in DIAGNOSTIC_METHODS:
        method_info(method)  # an unknown name is an error that lists the methods
    if method == "oracle" and not isinstance(model, DisplacementField):
        raise GraphregError(f"model: method 'oracle' needs the ground-truth DisplacementField, got "
                            f"{type(model).__name__}")
    if memory_budget_gb is not None:
        from .memory import validate_memory_budget

        validate_memory_budget(memory_budget_gb)
        if method not in KEYPOINT_METHODS:
            raise GraphregError(f"memory_budget_gb: the memory estimate covers the keypoint methods "
                                f"({', '.join(KEYPOINT_METHODS)}), not {method!r}; leave it unset for this method")
    if method in CLASSICAL_METHODS:
        from .classical import register_classical

        return register_classical(fixed, moving, fixed_mask, moving_mask, method=method, config=config,
                                  progress=progress)
    if method in CNN_METHODS:
        from .cnn.register import register_cnn
        from .training.checkpoint import default_weights

        return register_cnn(fixed, moving, fixed_mask, moving_mask, config=config, device=device, progress=progress,
                            model=default_weights(method) if model is None else model, architecture=method)
    cfg: RegistrationConfig = load_config(config)
    cfg.region = settings
    if progress:
        progress(f"settings: {config_label(config)}")
    torch_device = resolve_device(device)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()

    network, extras = None, {}
    if method == "graphregnet":
        from .training.checkpoint import default_weights, load_model

        if not isinstance(model, torch.nn.Module):
            model = default_weights(method) if model is None else model
            extras["model"] = str(model)
            model = load_model(model, "graphregnet")
        network = model.to(torch_device).eval()
        check_learned_level(network, cfg.levels[0])
    inputs_start = time.perf_counter()
    inputs = read_inputs(fixed, moving, fixed_mask, moving_mask, progress)
    read_seconds = inputs_start - start + inputs.read_seconds  # loading the network counts as reading
    fixed_volume, moving_volume, fixed_lungs = inputs.fixed, inputs.moving, inputs.masks.fixed
    if memory_budget_gb is not None:
        from .memory import check_memory_budget, estimate_memory, working_grid_shape

        lungs = fixed_lungs.array if fixed_lungs is not None and fixed_lungs.grid.same_as(fixed_volume.grid) else None
        shape = working_grid_shape(fixed_volume.grid, cfg.preprocess.spacing_mm, cfg.preprocess.crop_margin_mm, lungs)
        itemsize = max(fixed_volume.array.dtype.itemsize, moving_volume.array.dtype.itemsize)
        check_memory_budget(estimate_memory(fixed_volume.grid, moving_volume.grid, cfg, shape, itemsize),
                            memory_budget_gb)
    checked = prepare_pair(inputs, cfg.preprocess, torch_device).checked
    pair = checked.pair
    if method == "oracle":  # the truth at the keypoints, as GraphRegNet's training targets are made
        from .graphregnet.data import keypoint_targets

        truth = model.to("cpu")

        def network(points: torch.Tensor) -> torch.Tensor:
            return keypoint_targets(pair, points.cpu(), truth.displacement[0], truth.grid).to(points)
    timings = {"read": read_seconds, "preprocess": time.perf_counter() - start - read_seconds}
    if progress:
        progress(f"preprocess: working grid {pair.grid.size_xyz} at {cfg.preprocess.spacing_mm} mm "
                 f"({timings['preprocess']:.1f} s)")

    output = run_keypoint_pipeline(pair, cfg, method, progress=progress, model=network)
    timings.update(output.timings)
    timings["total"] = time.perf_counter() - start

    grid = pair.grid
    keypoints_mm = grid.voxel_to_world(output.keypoints.double().cpu().numpy())
    keypoint_disp_mm = grid.voxel_vectors_to_mm(output.keypoint_displacements.double().cpu().numpy()) \
        + pair.translation_mm
    spread = output.keypoint_spread.double().cpu().numpy() * cfg.preprocess.spacing_mm
    checks_start = time.perf_counter()
    coarse = cfg.levels[0]
    quality = checked.quality(output.displacement, torch.as_tensor(spread),
                              coarse.radius * coarse.step * cfg.preprocess.spacing_mm)
    timings["checks"] = checked.seconds + time.perf_counter() - checks_start
    working_field, valid = output.field(pair), None
    if settings.mode == "body":
        from .region import region_report, register_outside, sliding_join

        body_start = time.perf_counter()
        outside_pair, outside, valid = register_outside(fixed_volume, moving_volume, inputs.masks.fixed,
                                                        inputs.masks.moving, cfg, torch_device, progress)
        working_field = sliding_join(working_field, pair.fixed_mask[0, 0].cpu().numpy(), outside.field(outside_pair))
        outside_grid = outside_pair.grid
        keypoints_mm = np.concatenate([keypoints_mm, outside_grid.voxel_to_world(outside.keypoints.double().cpu().numpy())])
        keypoint_disp_mm = np.concatenate([keypoint_disp_mm, outside_grid.voxel_vectors_to_mm(
            outside.keypoint_displacements.double().cpu().numpy()) + outside_pair.translation_mm])
        spread = np.concatenate([spread, outside.keypoint_spread.double().cpu().numpy() * cfg.preprocess.spacing_mm])
        extras["region"] = region_report(settings)
        timings["body"] = time.perf_counter() - body_start
        timings["total"] = time.perf_counter() - start
    return Registration(
        working_field=working_field,
        fixed_grid=fixed_volume.grid,
        moving=moving_volume,
        method=method,
        config=cfg.to_dict(),
        timings=timings,
        keypoints_mm=keypoints_mm,
        keypoint_displacements_mm=keypoint_disp_mm,
        keypoint_uncertainty_mm=spread,
        extras={**extras, "settings": config_label(config), "device": str(torch_device), "seed": cfg.seed,
                "n_keypoints": int(len(keypoints_mm)), "prealign_translation_mm": np.round(pair.translation_mm, 3).tolist(),
                "body_translation_mm": np.round(body_translation_mm(fixed_volume, moving_volume), 3).tolist(),
                **checked.extras(), "quality": quality},
        fixed_lungs=working_lungs(pair),
        valid_mask=valid,
    )
