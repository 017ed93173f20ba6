"""Registry of registration methods the benchmark can run, by name.

A *method* is any callable

    ``fn(fixed, moving, fixed_mask, moving_mask, device) -> MethodResult``

taking :class:`~graphreg.core.volume.Volume` images (masks may be ``None``) and a torch device string,
and returning the displacement on the fixed image's grid together with the seconds spent per stage.
The graphreg pipeline, dense baselines and peer tools (elastix, ConvexAdam) all plug in with one
call to :func:`register_method`.

Methods that need an optional package are registered *lazily*: the callable is given as an import
path ``"package.module:function"`` together with the packages it ``requires``; nothing is imported
until :func:`get_method` is called, and a missing package is reported as
:class:`MethodUnavailableError` with the ``pip install`` line that fixes it.

A keypoint method runs with another registration config as ``NAME@CONFIG`` (``CONFIG``: a YAML
file or a shipped preset name, e.g. ``corrfield@configs/accurate.yaml`` or ``graphregnet-noio@accurate``):
:func:`get_method` returns it with that config, and the runner names its rows
:func:`method_label` (``corrfield@accurate``).

Convention:
    ``MethodResult.field`` is a :class:`~graphreg.core.field.DisplacementField` on ``fixed.grid``,
    pointing fixed -> moving. ``MethodResult.timings`` maps stage names to wall-clock seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import time
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Optional, Protocol, Union

from graphreg.core.config import RegistrationConfig
from graphreg.errors import ConfigError, GraphregError
from graphreg.methods.registry import METHODS, method_names
from graphreg.io.resources import asset_path
from graphreg.core.volume import Volume


class MethodUnavailableError(GraphregError):
    """A registered method cannot run here because an optional package is not installed."""


@dataclass
class MethodResult:
    """What a method returns.

    Attributes:
        field: :class:`~graphreg.core.field.DisplacementField` on the fixed grid, fixed -> moving.
        timings: seconds per stage, e.g. ``{"preprocess": 0.4, "optimise": 12.1}``.
        extras: anything else worth recording (parameters, iteration counts); JSON-serialisable.
        keypoints: for keypoint methods, ``(points_mm (N, 3), displacements_mm (N, 3),
            uncertainty_mm (N,))`` of the graph stage (world mm, fixed -> moving), so the runner
            can score the uncertainty against the ground truth; ``None`` otherwise.
    """

    field: object
    timings: dict[str, float] = dataclass_field(default_factory=dict)
    extras: dict = dataclass_field(default_factory=dict)
    keypoints: Optional[tuple] = None


class Method(Protocol):
    """Signature of a registration method (see the module docstring)."""

    def __call__(self, fixed: Volume, moving: Volume, fixed_mask: Optional[Volume],
                 moving_mask: Optional[Volume], device: str) -> MethodResult: ...


@dataclass(frozen=True)
class MethodSpec:
    """One registry entry.

    Attributes:
        name: the name used on the command line.
        target: the callable, or its import path ``"module:attribute"`` (resolved on first use).
        description: one line shown by ``available_methods``.
        requires: ``(import name, pip name)`` pairs that must be importable to run it.
    """

    name: str
    target: Union[Method, str]
    description: str
    requires: tuple[tuple[str, str], ...] = ()

    def missing(self) -> list[str]:
        """pip names of the required packages that are not installed."""
        return [pip for module, pip in self.requires if not _importable(module)]


def _importable(module: str) -> bool:
    """True when ``module`` (dotted names allowed) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, fn: Union[Method, str], description: str, *,
                    requires: dict[str, str] | None = None, overwrite: bool = False) -> None:
    """Make ``fn`` available to the benchmark as ``name``.

    Args:
        name: short lower-case name without commas or spaces (``"graphregnet"``).
        fn: the method callable, or ``"module:function"`` to import it on first use.
        description: one line for listings.
        requires: ``{import name: pip name}`` of optional packages ``fn`` needs.
        overwrite: replace an existing entry of the same name instead of raising.

    Raises:
        ConfigError: bad name, ``fn`` neither callable nor ``"module:attr"``, or a duplicate name.
    """
    if not isinstance(name, str) or not name or any(c in name for c in ", \t\n"):
        raise ConfigError(f"name: expected a non-empty name without commas or spaces, got {name!r}")
    if not callable(fn) and not (isinstance(fn, str) and fn.count(":") == 1):
        raise ConfigError(f"fn: expected a callable or an import path 'module:attr', got {fn!r}")
    if name in _REGISTRY and not overwrite:
        raise ConfigError(f"name: method {name!r} is already registered (pass overwrite=True)")
    _REGISTRY[name] = MethodSpec(name, fn, description, tuple((requires or {}).items()))


def unregister_method(name: str) -> None:
    """Remove ``name`` from the registry (no error when absent)."""
    _REGISTRY.pop(name, None)


def method_spec(name: str) -> MethodSpec:
    """The registry entry of ``name``.

    Raises:
        ConfigError: unknown name (the message lists the known ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"method: expected one of {sorted(_REGISTRY)}, got {name!r}") from None


def get_method(name: str) -> Method:
    """The callable registered as ``name``, importing it if it was registered lazily; for
    ``NAME@CONFIG`` the keypoint method ``NAME`` with the registration config ``CONFIG`` (a YAML
    path or preset name, read and validated here).

    Raises:
        ConfigError: unknown name; ``@CONFIG`` on a method that is not a keypoint method; a config
            that does not load (:func:`graphreg.core.config.load_config`).
        MethodUnavailableError: a package the method requires is not installed.
    """
    name, _, config = name.partition("@")
    if config:
        return _with_config(name, config)
    spec = method_spec(name)
    missing = spec.missing()
    if missing:
        raise MethodUnavailableError(
            f"method {name!r}: not installed: needs {', '.join(missing)} "
            f"(pip install {' '.join(missing)}, or pip install 'graphreg[peers]')"
        )
    if callable(spec.target):
        return spec.target
    module_name, attr = spec.target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def _with_config(name: str, config: str) -> Method:
    """The keypoint method ``name`` (a partial of :func:`keypoint_method`) with the config ``config``."""
    from graphreg.core.config import load_config

    target = method_spec(name).target
    if getattr(target, "func", None) is not keypoint_method:
        raise ConfigError(f"method: expected NAME@CONFIG with a keypoint method as NAME "
                          f"(corrfield, graphregnet and their variants), got {name}@{config}")
    return functools.partial(target, config=load_config(config))


def method_label(name: str) -> str:
    """How rows name the method ``name``: ``NAME@CONFIG`` with ``CONFIG``'s file stem
    (``corrfield@docs/io5.yaml`` -> ``corrfield@io5``), any other name unchanged."""
    method, at, config = name.partition("@")
    return f"{method}@{Path(config).stem}" if at else name


def available_methods() -> dict[str, str]:
    """``{name: description}`` of every registered method; unavailable ones say so."""
    listing = {}
    for name in sorted(_REGISTRY):
        spec = _REGISTRY[name]
        missing = spec.missing()
        note = f" [not installed: pip install {' '.join(missing)}]" if missing else ""
        listing[name] = spec.description + note
    return listing


def identity_method(fixed: Volume, moving: Volume, fixed_mask: Optional[Volume],
                    moving_mask: Optional[Volume], device: str = "cpu") -> MethodResult:
    """No registration: the zero displacement on the fixed grid (gives the initial TRE)."""
    from graphreg.core.field import DisplacementField

    start = time.perf_counter()
    zero = DisplacementField.identity(fixed.grid)
    return MethodResult(zero, {"total": time.perf_counter() - start})


def _from_registration(registration) -> MethodResult:
    """A :class:`~graphreg.result.registration.Registration` as a :class:`MethodResult` (field on the fixed grid)."""
    timings = {k: float(v) for k, v in registration.timings.items() if k != "total"}
    keypoints = None
    if registration.keypoint_uncertainty_mm is not None:
        keypoints = (registration.keypoints_mm, registration.keypoint_displacements_mm,
                     registration.keypoint_uncertainty_mm)
    return MethodResult(registration.field, timings, dict(registration.extras), keypoints)


def keypoint_method(name: str, instance_optimisation: bool, fixed: Volume, moving: Volume,
                    fixed_mask: Optional[Volume], moving_mask: Optional[Volume], device: str = "cpu",
                    model: Optional[str] = None, config: Optional[RegistrationConfig] = None) -> MethodResult:
    """The graphreg keypoint pipeline (``name``: ``"corrfield"`` or ``"graphregnet"``) with ``config``
    (None: the default), with or without (``instance_optimisation``) its Adam instance optimisation;
    ``model`` replaces the shipped GraphRegNet weights (ablations)."""
    from graphreg.api import register

    config = config or RegistrationConfig()
    if not instance_optimisation:
        config = dataclasses.replace(config, instance_opt=dataclasses.replace(config.instance_opt, enabled=False))
    return _from_registration(register(fixed, moving, fixed_mask, moving_mask, method=name, config=config,
                                       device=device, model=model))


def truth_at_keypoints(truth):
    """The ground truth as the keypoint pipeline's given displacements
    (:data:`graphreg.methods.keypoint.register.GivenDisplacements`), made as GraphRegNet's training targets are
    (:func:`graphreg.methods.graphregnet.data.keypoint_targets`).

    Args:
        truth: the pair's ground-truth :class:`~graphreg.core.field.DisplacementField` (fixed grid).

    Raises:
        GraphregError: ``truth`` is not a ``DisplacementField``.
    """
    from graphreg.core.field import DisplacementField
    from graphreg.methods.graphregnet.data import keypoint_targets

    if not isinstance(truth, DisplacementField):
        raise GraphregError(f"truth: the oracle needs the ground-truth DisplacementField, got {type(truth).__name__}")
    truth = truth.to("cpu")

    def at_keypoints(pair):
        return lambda points: keypoint_targets(pair, points.cpu(), truth.displacement[0], truth.grid).to(points)

    return at_keypoints


def oracle_method(instance_optimisation: bool, fixed: Volume, moving: Volume, fixed_mask: Optional[Volume],
                  moving_mask: Optional[Volume], device: str = "cpu", *, truth) -> MethodResult:
    """Diagnostic: the keypoint pipeline with the pair's true displacements at the keypoints in
    place of a regulariser (:func:`truth_at_keypoints`), densified, with or without the default
    instance optimisation: what a perfect keypoint regulariser would score.

    Args:
        truth: the pair's ground-truth :class:`~graphreg.core.field.DisplacementField`; the runner
            passes it to methods for which :func:`needs_ground_truth` holds.
    """
    from graphreg.api import region_config, run_registration, with_lung_region
    from graphreg.methods.keypoint.register import register_keypoint

    given = truth_at_keypoints(truth)
    config = None if instance_optimisation else {"instance_opt": {"enabled": False}}
    region = region_config(config, None)  # the default region 'lungs', as graphreg.register applies it
    return _from_registration(run_registration(lambda: with_lung_region(register_keypoint(
        fixed, moving, fixed_mask, moving_mask, "oracle", config, device, given=given), region)))


def needs_ground_truth(fn: Method) -> bool:
    """Whether ``fn`` (a registered callable) is a diagnostic that takes the true field as ``truth=``."""
    return getattr(fn, "func", fn) is oracle_method


def classical_method(name: str, fixed: Volume, moving: Volume, fixed_mask: Optional[Volume],
                     moving_mask: Optional[Volume], device: str = "cpu") -> MethodResult:
    """A SimpleITK baseline of :mod:`graphreg.methods.classical` (``"demons"`` or ``"bspline-ffd"``) with its
    default lung setup; runs on the CPU (``device`` is ignored)."""
    from graphreg.methods.classical import register_classical

    return _from_registration(register_classical(fixed, moving, fixed_mask, moving_mask, method=name))


def cnn_method(architecture: str, instance_optimisation: bool, fixed: Volume, moving: Volume,
               fixed_mask: Optional[Volume], moving_mask: Optional[Volume], device: str = "cpu") -> MethodResult:
    """A dense CNN baseline with its shipped weights (:func:`graphreg.training.checkpoint.default_weights`),
    the network alone or followed by the default Adam instance optimisation."""
    from graphreg.methods.cnn.register import register_cnn
    from graphreg.training.checkpoint import default_weights

    registration = register_cnn(fixed, moving, fixed_mask, moving_mask, model=default_weights(architecture),
                                architecture=architecture,
                                instance_optimisation=instance_optimisation, device=device)
    return _from_registration(registration)


register_method("identity", identity_method, "no registration (zero displacement)")
# every method of graphreg.register (graphreg.methods.registry), and its variants
for _name in method_names("keypoint"):
    register_method(_name, functools.partial(keypoint_method, _name, True),
                    f"graphreg {METHODS[_name].description}, + Adam instance optimisation")
    register_method(f"{_name}-noio", functools.partial(keypoint_method, _name, False),
                    f"graphreg {METHODS[_name].description}, densified, no instance optimisation")
for _name in method_names("classical"):
    register_method(_name, functools.partial(classical_method, _name), f"{METHODS[_name].description} (graphreg.methods.classical)")
for _name in method_names("cnn"):
    register_method(_name, functools.partial(cnn_method, _name, False),
                    f"{METHODS[_name].description}, shipped weights, network alone")
    register_method(f"{_name}+io", functools.partial(cnn_method, _name, True),
                    f"{METHODS[_name].description}, shipped weights, + Adam instance optimisation (MIND)")
#: ablation weights shipped beside the default GraphRegNet (assets/graphregnet/ablations/<name>.pt;
#: the default: supervised, 127 realistic pairs of 127 training anatomies)
GRAPHREGNET_ABLATIONS = {"noedge": "as the default, encoder/decoder only (no EdgeConv)",
                         "coords": "as the default, EdgeConv on the keypoint coordinates only",
                         "pool64": "as the default, on 64 of its 127 pairs for 4000 of its 8000 steps",
                         "pool_unsup": "unsupervised (image loss), on the default's 127 realistic pairs",
                         "realistic16": "unsupervised, on 16 realistic pairs of 16 training anatomies",
                         "one_anatomy": "the previous default: unsupervised, 16 pairs of one anatomy",
                         "one_anatomy_sup": "supervised, on 16 pairs of one anatomy"}
for _name, _description in GRAPHREGNET_ABLATIONS.items():
    _weights = str(asset_path("graphregnet", "ablations", f"{_name}.pt"))
    register_method(f"graphregnet-{_name}-noio",
                    functools.partial(keypoint_method, "graphregnet", False, model=_weights),
                    f"GraphRegNet ablation: {_description}; no instance optimisation")
    register_method(f"graphregnet-{_name}",
                    functools.partial(keypoint_method, "graphregnet", True, model=_weights),
                    f"GraphRegNet ablation: {_description}; + Adam instance optimisation")
del _name, _description, _weights
register_method("oracle", functools.partial(oracle_method, True),
                "diagnostic: true displacements at the keypoints (no regulariser), densified, + Adam "
                "instance optimisation; needs pairs with a ground-truth field")
register_method("oracle-noio", functools.partial(oracle_method, False),
                "diagnostic: true displacements at the keypoints, densified, no instance optimisation")
register_method("elastix", "graphreg.apps.bench.peers:elastix_method",
                "itk-elastix: affine + B-spline (10 mm grid), MI, bending energy, masked",
                requires={"itk.ElastixPython": "itk-elastix"})
register_method("convexadam", "graphreg.apps.bench.peers:convexadam_method",
                "ConvexAdam: MIND-SSC, coupled convex + Adam, 1.75 mm isotropic lungs",
                requires={"convexAdam": "convexadam"})
register_method("ants", "graphreg.apps.bench.peers:ants_method",
                "ANTs SyN (antspyx): affine + SyN, local cross-correlation (radius 2), 40-20-0 iterations, "
                "dilated lung mask", requires={"ants": "antspyx"})

__all__ = ["Method", "MethodResult", "MethodSpec", "MethodUnavailableError", "available_methods",
           "classical_method", "cnn_method", "keypoint_method", "get_method", "identity_method", "method_label", "method_spec",
           "oracle_method", "register_method", "truth_at_keypoints", "unregister_method"]
