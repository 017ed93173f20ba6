"""The keypoint methods of ``graphreg.register`` (``corrfield``, ``graphregnet``): prepare ->
estimate -> wrap through :mod:`graphreg.methods.workflow`.

Convention:
    The pipeline (:func:`graphreg.methods.keypoint.driver.run_keypoint_pipeline`) works in working voxels
    ``(z, y, x)``, fixed -> moving, without the pre-alignment translation;
    :func:`graphreg.methods.workflow.wrap_registration` adds it back and reports the keypoints in world mm.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import torch

from graphreg.core.config import RegionConfig, RegistrationConfig, config_label, load_config
from graphreg.runtime.device import resolve_device
from graphreg.errors import ConfigError, GraphregError
from graphreg.methods.registry import method_info
from graphreg.methods.keypoint.preprocess import WorkingPair
from graphreg.result.registration import Registration
from graphreg.methods.workflow import SparseStage, prepare_pair, read_inputs, wrap_registration

#: ``given(pair)`` -> a callable of keypoints ``(N, 3)`` giving their displacements ``(N, 3)``
#: (working voxels, fixed -> moving, without the pre-alignment) in place of the regulariser
GivenDisplacements = Callable[[WorkingPair], Callable[[torch.Tensor], torch.Tensor]]


def register_keypoint(fixed: Any, moving: Any, fixed_mask: Any = None, moving_mask: Any = None,
                      method: str = "corrfield", config: Any = None, device: Optional[str] = None,
                      progress: Optional[Callable[[str], None]] = None, model: Any = None,
                      memory_budget_gb: Optional[float] = None,
                      given: Optional[GivenDisplacements] = None,
                      region: Optional[RegionConfig] = None) -> Registration:
    """A keypoint method (arguments as :func:`graphreg.api.register`).

    Args:
        region: replaces the config's ``region`` section (:func:`graphreg.api.region_config`);
            mode ``"body"`` adds the registration of the body outside the lungs
            (:func:`graphreg.methods.region.register_outside`), joined to the lung field with sliding at
            the fixed lung boundary. Mode ``"lungs"`` is applied by the caller to every method.
        given: for diagnostics (the benchmark's ``oracle``): displacements at the keypoints that
            replace every search level and regulariser (see :data:`GivenDisplacements`); ``method``
            is then only the name recorded in the result. None: ``method`` must be a keypoint method
            of :mod:`graphreg.methods.registry`.
    """
    from graphreg.methods.keypoint.driver import check_learned_level, run_keypoint_pipeline

    if given is None and method_info(method).family != "keypoint":
        raise GraphregError(f"method: expected a keypoint method, got {method!r}")
    cfg: RegistrationConfig = load_config(config)
    if given is None and method != "graphregnet" and cfg.regulariser.blend != "none":
        raise ConfigError(f"config key 'regulariser.blend': {cfg.regulariser.blend!r} blends GraphRegNet with the "
                          f"classical regulariser, so it needs method 'graphregnet' (got {method!r}); "
                          f"use 'none' with {method!r}")
    if region is not None:
        cfg.region = region
    if progress:
        progress(f"settings: {config_label(config)}")
    torch_device = resolve_device(device)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()

    network, extras = None, {}
    if given is None and method == "graphregnet":
        from graphreg.training.checkpoint import default_weights, load_model

        if not isinstance(model, torch.nn.Module):
            model = default_weights(method) if model is None else model
            extras["model"] = str(model)
            model = load_model(model, "graphregnet")
        network = model.to(torch_device).eval()
        check_learned_level(network, cfg.levels[0])
    inputs_start = time.perf_counter()
    inputs = read_inputs(fixed, moving, fixed_mask, moving_mask, progress)
    read_seconds = inputs_start - start + inputs.read_seconds  # loading the network counts as reading
    if memory_budget_gb is not None:
        _check_memory(inputs, cfg, memory_budget_gb)
    prepared = prepare_pair(inputs, cfg.preprocess, torch_device)
    pair = prepared.pair
    timings = {"read": read_seconds, "preprocess": time.perf_counter() - start - read_seconds}
    if progress:
        progress(f"preprocess: working grid {pair.grid.size_xyz} at {cfg.preprocess.spacing_mm} mm "
                 f"({timings['preprocess']:.1f} s)")

    output = run_keypoint_pipeline(pair, cfg, method, progress=progress, model=network,
                                   given=None if given is None else given(pair))
    timings.update(output.timings)
    timings["total"] = time.perf_counter() - start

    coarse = cfg.levels[0]
    sparse = SparseStage(output.keypoints, output.keypoint_displacements,
                         output.keypoint_spread.double().cpu() * cfg.preprocess.spacing_mm,
                         coarse.radius * coarse.step * cfg.preprocess.spacing_mm,
                         output.keypoint_residual.norm(dim=1).cpu())
    checks_start = time.perf_counter()
    extras.update({"settings": config_label(config), "device": str(torch_device), "seed": cfg.seed,
                   "n_keypoints": int(len(output.keypoints))})
    if output.fold_repair is not None:
        extras["fold_repair"] = output.fold_repair
    registration = wrap_registration(prepared, output.displacement, method, cfg.to_dict(), timings, extras,
                                     sparse=sparse)
    registration.timings["checks"] = prepared.checked.seconds + time.perf_counter() - checks_start
    if cfg.region.mode == "body":
        _add_body(registration, inputs, prepared, cfg, torch_device, progress)
        registration.timings["total"] = time.perf_counter() - start
    return registration


def _add_body(registration: Registration, inputs, prepared, cfg: RegistrationConfig, device, progress) -> None:
    """Region ``"body"``: register the body outside the lungs and join it to the lung field
    (sliding at the fixed lung boundary); its keypoints are appended, the fixed body becomes the
    valid mask (:mod:`graphreg.methods.region`)."""
    import numpy as np

    from graphreg.methods.region import region_report, register_outside, sliding_join

    start = time.perf_counter()
    pair = prepared.pair
    outside_pair, outside, body = register_outside(inputs.fixed, inputs.moving, inputs.masks.fixed,
                                                   inputs.masks.moving, cfg, device, progress)
    registration.working_field = sliding_join(registration.working_field, pair.fixed_mask[0, 0].cpu().numpy(),
                                              outside.field(outside_pair))
    grid = outside_pair.grid
    registration.keypoints_mm = np.concatenate(
        [registration.keypoints_mm, grid.voxel_to_world(outside.keypoints.double().cpu().numpy())])
    registration.keypoint_displacements_mm = np.concatenate(
        [registration.keypoint_displacements_mm,
         grid.voxel_vectors_to_mm(outside.keypoint_displacements.double().cpu().numpy()) + outside_pair.translation_mm])
    registration.keypoint_uncertainty_mm = np.concatenate(
        [registration.keypoint_uncertainty_mm,
         outside.keypoint_spread.double().cpu().numpy() * cfg.preprocess.spacing_mm])
    registration.valid_mask = body
    registration.extras["region"] = region_report(cfg.region)
    registration.timings["body"] = time.perf_counter() - start


def _check_memory(inputs, cfg: RegistrationConfig, budget_gb: float) -> None:
    """Raise :class:`~graphreg.errors.ResourceError` when the estimated peak exceeds ``budget_gb``."""
    from graphreg.methods.keypoint.memory import check_memory_budget, estimate_memory, working_grid_shape

    fixed, moving, lungs = inputs.fixed, inputs.moving, inputs.masks.fixed
    lungs = lungs.array if lungs is not None and lungs.grid.same_as(fixed.grid) else None
    shape = working_grid_shape(fixed.grid, cfg.preprocess.spacing_mm, cfg.preprocess.crop_margin_mm, lungs)
    itemsize = max(fixed.array.dtype.itemsize, moving.array.dtype.itemsize)
    check_memory_budget(estimate_memory(fixed.grid, moving.grid, cfg, shape, itemsize), budget_gb)


__all__ = ["GivenDisplacements", "register_keypoint"]
