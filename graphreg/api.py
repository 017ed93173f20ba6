"""``graphreg.register``: one call from two lung CTs to a dense field in physical space."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional

import numpy as np

from graphreg.runtime.allocator import reusing_freed_memory
from graphreg.core.config import RegionConfig, load_config, validate_config
from graphreg.errors import GraphregError
from graphreg.methods.registry import method_info, method_names
from graphreg.result.registration import Registration
from graphreg.runtime.threads import thread_report, use_threads

KEYPOINT_METHODS = method_names("keypoint")


def register(fixed: Any, moving: Any, fixed_mask: Any = None, moving_mask: Any = None,
             method: str = "corrfield", config: Any = None, device: Optional[str] = None,
             progress: Optional[Callable[[str], None]] = None, model: Any = None,
             memory_budget_gb: Optional[float] = None, threads: Optional[int] = None,
             region: Optional[str] = None) -> Registration:
    """Register a moving lung CT to a fixed one.

    Args:
        fixed, moving: path (NIfTI, MHA/MHD, NRRD, DICOM folder, DIR-Lab ``.img`` with a known
            name), ``SimpleITK.Image``, :class:`~graphreg.core.volume.Volume` or ``(array (z, y, x),
            Grid)``; intensities in Hounsfield units.
        fixed_mask, moving_mask: lung masks in the same forms (computed when None; a mask on
            another grid than its image is resampled with a warning).
        method: ``"corrfield"`` (keypoint pipeline with the learning-free graph regulariser),
            ``"graphregnet"`` (the same pipeline with the learned GraphRegNet regularising the
            coarse level; shipped weights unless ``model=`` is given),
            ``"demons"`` / ``"bspline-ffd"`` (SimpleITK), or a dense CNN baseline
            (``"voxelmorph"``, ``"bspline-cnn"``, ``"linear-deformable"``; network + instance
            optimisation unless ``config`` sets ``instance_opt.enabled: false``); the table of
            :mod:`graphreg.methods.registry`.
        config: a :class:`~graphreg.core.config.RegistrationConfig`, a YAML path or a mapping of
            overrides (unknown keys are rejected).
        device: ``"cpu"``, ``"cuda"`` or None (GPU when present).
        progress: optional callback receiving one line per stage.
        model: checkpoint path (or network) of a learned method (None: the shipped
            ``assets/<name>/model.pt``); ignored by the others.
        memory_budget_gb: refuse to run (:class:`~graphreg.errors.ResourceError`, raised after
            reading the images and masks, before resampling and the pipeline) when the peak
            memory estimated by :func:`graphreg.methods.keypoint.memory.estimate_memory` exceeds this many GB;
            the message names the config keys that lower it. Keypoint methods only; None: no check.
        threads: CPU threads of this call (torch and SimpleITK, restored afterwards), an integer
            >= 1; None: ``$GRAPHREG_THREADS``, else the cores this process may use
            (:func:`graphreg.runtime.threads.resolve_threads`). Recorded in the report with the OpenMP wait
            policy; import graphreg before torch so that idle threads sleep (``docs/threads.md``).
            The field is bit-identical for the same thread count (``docs/reproducibility.md``).
        region: where the field is registered and trusted (:mod:`graphreg.methods.region`), overriding the
            config's ``region.mode``: ``"lungs"`` (default: the registered field within
            ``region.margin_mm`` of the fixed lungs, decaying beyond to the translation of the
            body's centre of mass) or ``"body"`` (keypoint methods: a second registration of the body outside
            the lungs, joined with sliding at the lung boundary, for dose warping). ``.valid_mask``
            and ``extras["region"]`` say where the field is trustworthy.

    Returns:
        :class:`~graphreg.result.registration.Registration` with ``.field`` (on the fixed grid, mm
        exportable), ``.transform_points``, ``.warp``, ``.save`` and ``.timings``. Keypoint
        methods also give ``.status`` (``"ok"``, ``"suspect"`` or ``"failed"``, from the checks of
        :mod:`graphreg.checks`; ``extras["quality"]`` holds the reasons), and record the lung
        mask checks and fallbacks (``extras["masks"]``) and the pre-alignment (``extras["prealign"]``).
        An automatic mask that fails its checks never stops the run: it is replaced and the
        fallback is reported.
    """
    settings = region_config(config, region, method)

    def run() -> Registration:
        result = _register(fixed, moving, fixed_mask, moving_mask, method, config, device, progress, model,
                           memory_budget_gb, settings)
        return with_lung_region(result, settings) if settings.mode == "lungs" else result

    return run_registration(run, threads)


def run_registration(run: Callable[[], Registration], threads: Optional[int] = None) -> Registration:
    """``run()`` as :func:`register` runs every method (and the benchmark its diagnostics): with
    ``threads`` CPU threads (:func:`graphreg.runtime.threads.use_threads`, recorded in the result's
    ``extras``) and freed memory kept for reuse (:func:`graphreg.runtime.allocator.reusing_freed_memory`)."""
    with reusing_freed_memory(), use_threads(threads) as count:
        result = run()
    result.extras.update(thread_report(count))
    return result


def region_config(config: Any, region: Optional[str], method: Optional[str] = None) -> RegionConfig:
    """The ``region`` section of ``config`` (a :func:`load_config` source), its mode replaced by
    ``region`` when given, checked against :data:`graphreg.core.config.RULES` and, when ``method`` is
    given, against it (mode ``"body"`` needs a keypoint method); the margin is capped at
    ``preprocess.crop_margin_mm`` (the field is estimated only that far from the lungs)."""
    cfg = load_config(config)
    settings = dataclasses.replace(cfg.region)
    if region is not None:
        settings.mode = region
    validate_config(settings, "region.")
    if method is not None and settings.mode == "body" and method not in KEYPOINT_METHODS:
        raise GraphregError(f"region: 'body' is available for the keypoint methods ({', '.join(KEYPOINT_METHODS)}), "
                            f"got method {method!r}; use region 'lungs'")
    settings.margin_mm = min(settings.margin_mm, cfg.preprocess.crop_margin_mm)
    return settings


def with_lung_region(result: Registration, settings: RegionConfig) -> Registration:
    """Region ``"lungs"`` applied to a finished registration (:func:`graphreg.methods.region.lung_region_field`):
    its working field replaced by the blended one, ``valid_mask`` and ``extras["region"]`` set."""
    from graphreg.methods.region import lung_region_field, region_report

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
    """:func:`register` in the thread setting it chose: the method's family runs it
    (:mod:`graphreg.methods.registry`), each through :mod:`graphreg.methods.workflow`'s prepare and wrap steps."""
    family = method_info(method).family  # an unknown name is an error that lists the methods
    if memory_budget_gb is not None:
        from graphreg.methods.keypoint.memory import validate_memory_budget

        validate_memory_budget(memory_budget_gb)
        if family != "keypoint":
            raise GraphregError(f"memory_budget_gb: the memory estimate covers the keypoint methods "
                                f"({', '.join(KEYPOINT_METHODS)}), not {method!r}; leave it unset for this method")
    if family == "classical":
        from graphreg.methods.classical import register_classical

        return register_classical(fixed, moving, fixed_mask, moving_mask, method=method, config=config,
                                  progress=progress)
    if family == "cnn":
        from graphreg.methods.cnn.register import register_cnn
        from graphreg.training.checkpoint import default_weights

        return register_cnn(fixed, moving, fixed_mask, moving_mask, config=config, device=device, progress=progress,
                            model=default_weights(method) if model is None else model, architecture=method)
    from graphreg.methods.keypoint.register import register_keypoint

    return register_keypoint(fixed, moving, fixed_mask, moving_mask, method, config, device, progress, model,
                             memory_budget_gb, region=settings)
