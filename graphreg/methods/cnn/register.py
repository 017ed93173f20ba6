"""Inference of the dense methods: preprocess like the keypoint pipeline, predict, wrap as a Registration.

:func:`register_cnn` runs a trained network (a checkpoint path or a loaded
:class:`~graphreg.training.checkpoint.LoadableModel`) on a fixed/moving pair, optionally refines
the prediction by Adam instance optimisation (:func:`graphreg.methods.keypoint.instance_opt.instance_optimise`)
and returns a :class:`~graphreg.result.registration.Registration` exactly like :func:`graphreg.api.register`.
Reading and preparing the pair and wrapping the result are :mod:`graphreg.methods.workflow`'s, shared with
every method.

Convention:
    The network sees the working pair of :func:`graphreg.methods.keypoint.preprocess.working_pair`:
    isotropic grid around the fixed lungs, intensities in ``[0, 1]``, the moving image
    pre-aligned by the lung centres of mass. Its output is a displacement in working voxels
    ``(z, y, x)``, fixed -> moving, *without* that pre-alignment translation, which
    :func:`graphreg.methods.workflow.wrap_registration` adds back.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from graphreg.core.config import RegistrationConfig, load_config, read_yaml
from graphreg.errors import GraphregError
from graphreg.result.registration import Registration
from graphreg.training.checkpoint import LoadableModel, load_model, read_checkpoint
from graphreg.methods.workflow import prepare_pair, read_inputs, wrap_registration


def _resolve_model(model: Union[str, Path, LoadableModel], device: torch.device,
                   architecture: Optional[str] = None) -> tuple[LoadableModel, dict]:
    """The network on ``device`` in eval mode and its training configuration; a checkpoint of
    another ``architecture`` (when given) is refused."""
    if isinstance(model, (str, Path)):
        return load_model(model, architecture, device), dict(read_checkpoint(model).get("config") or {})
    if isinstance(model, LoadableModel):
        return model.to(device).eval(), {}
    raise GraphregError(f"model: expected a checkpoint path or a graphreg network, got {type(model).__name__}")


#: preprocessing settings a dense network is trained with (its checkpoint's ``data`` section)
_TRAINED_PREPROCESS = ("spacing_mm", "hu_min", "hu_max")


def _explicit_preprocess(config: Any) -> set:
    """The keys of :data:`_TRAINED_PREPROCESS` that ``config`` (a valid :func:`load_config` source) sets
    itself: those of its ``preprocess`` section for a mapping or YAML file, all of them for a
    :class:`~graphreg.core.config.RegistrationConfig`, none for None."""
    if config is None:
        return set()
    if isinstance(config, RegistrationConfig):
        return set(_TRAINED_PREPROCESS)
    mapping = read_yaml(config) if isinstance(config, (str, Path)) else config
    return set(mapping.get("preprocess") or {}) & set(_TRAINED_PREPROCESS)


def register_cnn(fixed: Any, moving: Any, fixed_mask: Any = None, moving_mask: Any = None, *,
                 model: Union[str, Path, LoadableModel], config: Any = None,
                 instance_optimisation: Optional[bool] = None, device: Optional[str] = None,
                 progress: Optional[Callable[[str], None]] = None,
                 architecture: Optional[str] = None) -> Registration:
    """Register ``moving`` to ``fixed`` with a trained dense network.

    Args:
        fixed, moving, fixed_mask, moving_mask: as for :func:`graphreg.api.register`.
        model: a checkpoint written by the training loop (``model.pt``) or a network.
        config: a :class:`~graphreg.core.config.RegistrationConfig` source (YAML path, mapping) for
            the preprocessing, MIND and instance-optimisation settings. The working spacing and
            HU window are those the checkpoint was trained with (its config's
            ``data.spacing_mm``, ``data.hu_min``, ``data.hu_max`` when present) unless the
            mapping or YAML file sets ``preprocess.spacing_mm`` / ``hu_min`` / ``hu_max`` itself
            (a ``RegistrationConfig`` object is taken as it is).
        instance_optimisation: refine the prediction by Adam instance optimisation; None: as
            ``config.instance_opt.enabled``.
        device: ``"cpu"``, ``"cuda"`` or None (GPU when present).
        progress: optional callback receiving one line per stage.
        architecture: the architecture a checkpoint path must hold (e.g. ``"voxelmorph"``);
            None accepts any dense one.

    Returns:
        A :class:`~graphreg.result.registration.Registration` whose ``method`` is the network's
        architecture name (``"+io"`` appended when instance optimisation ran).
    """
    from graphreg.runtime.device import resolve_device

    torch_device = resolve_device(device)
    say = progress or (lambda line: None)
    start = time.perf_counter()
    network, trained_with = _resolve_model(model, torch_device, architecture)
    cfg: RegistrationConfig = load_config(config)
    data = trained_with.get("data") or {}
    for key in set(_TRAINED_PREPROCESS) - _explicit_preprocess(config):
        if key in data:
            setattr(cfg.preprocess, key, float(data[key]))
    torch.manual_seed(cfg.seed)
    dense = prepare_pair(read_inputs(fixed, moving, fixed_mask, moving_mask, progress), cfg.preprocess, torch_device)
    timings = {"load": dense.seconds}
    say(f"preprocess: working grid {dense.pair.grid.size_xyz} at {cfg.preprocess.spacing_mm} mm "
        f"({dense.seconds:.1f} s)")

    tick = time.perf_counter()
    with torch.no_grad():
        displacement = network(dense.pair.fixed, dense.pair.moving)
    timings["network"] = time.perf_counter() - tick
    say(f"network ({network.architecture}): {timings['network']:.1f} s")

    method = network.architecture
    enabled = cfg.instance_opt.enabled if instance_optimisation is None else bool(instance_optimisation)
    io_config = replace(cfg.instance_opt, enabled=enabled)
    if io_config.runs():
        from graphreg.methods.keypoint.instance_opt import instance_features, optimise_with_config

        tick = time.perf_counter()
        with torch.no_grad():
            fixed_features, moving_features = instance_features(dense.pair.fixed, dense.pair.moving,
                                                                cfg.mind.radius, io_config)
        timings["mind"] = time.perf_counter() - tick
        displacement, io_timings = optimise_with_config(fixed_features, moving_features, displacement,
                                                        dense.pair.fixed_mask, io_config, cfg.seed)
        timings.update(io_timings)
        say(f"instance optimisation: {sum(io_timings.values()):.1f} s")
        method += "+io"
    timings["total"] = time.perf_counter() - start
    return wrap_registration(dense, displacement, method, cfg.to_dict(), timings,
                              {"device": str(torch_device), "seed": cfg.seed, "model_args": network.model_args})


__all__ = ["register_cnn"]
