"""Self-describing model checkpoints: one call loads a trained network.

A network class derives from :class:`LoadableModel` and is registered under an architecture
name with :func:`register_architecture`. Its constructor arguments are recorded automatically
(like voxelmorph's ``LoadableModel``), so a checkpoint holds everything needed to rebuild it:

=====================  ==============================================================
key                    content
=====================  ==============================================================
``format``             ``"graphreg-checkpoint"`` and ``format_version`` (int)
``graphreg_version``   version of the library that wrote it
``architecture``       registered name of the network class (e.g. ``"voxelmorph"``)
``model_args``         the constructor's keyword arguments (plain Python values)
``config``             the training configuration (plain dict), or ``{}``
``state_dict``         the network's weights
``step``               optimiser steps done when it was written
``optimizer``          the optimiser's state (training checkpoints only), or None
``rng``                torch CPU random state (training checkpoints only), or None
``history``            recent loss records (training checkpoints only), or ``[]``
=====================  ==============================================================

Files are written atomically and read with ``torch.load(weights_only=True)``, so a checkpoint
cannot run code when it is loaded.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import torch
from torch import nn

from graphreg.errors import ConfigError, GraphregError, InputFileError, is_int_at_least
from graphreg.io.atomic import atomic_output
from graphreg.methods.registry import METHODS
from graphreg.io.resources import asset_path

#: value of the ``format`` key
CHECKPOINT_FORMAT = "graphreg-checkpoint"
#: bumped when the layout above changes incompatibly
FORMAT_VERSION = 1

_ARCHITECTURES: dict[str, type] = {}

#: the shipped weights of each learned method (package data ``graphreg/assets/<name>/model.pt``, its
#: recipe in ``graphreg/assets/<name>/README.md``)
DEFAULT_WEIGHTS = {info.name: asset_path(info.weights, "model.pt") for info in METHODS.values() if info.learned}


def default_weights(method: str) -> Path:
    """The shipped weights of a learned method (a key of :data:`DEFAULT_WEIGHTS`, e.g. ``"voxelmorph"``).

    Raises:
        GraphregError: unknown method, or its weights file is missing (the message says how to train it).
    """
    if method not in DEFAULT_WEIGHTS:
        raise GraphregError(f"method: expected one of {', '.join(DEFAULT_WEIGHTS)}, got {method!r}")
    path = DEFAULT_WEIGHTS[method]
    if not path.is_file():
        recipe = METHODS[method].recipe
        raise GraphregError(f"model: no shipped weights for {method!r} at {path}; train them with "
                            f"'graphreg train --config {recipe} --out runs/{recipe}' and pass "
                            f"model=runs/{recipe}/model.pt")
    return path


#: modules that register architectures when imported; imported before a name is looked up
ARCHITECTURE_MODULES = ["graphreg.methods.cnn", "graphreg.methods.graphregnet"]


class LoadableModel(nn.Module):
    """A network whose constructor arguments are recorded in :attr:`model_args`.

    Subclasses call ``super().__init__()`` as usual; after the most-derived constructor returns,
    ``self.model_args`` holds every constructor argument by name (defaults filled in), with
    tuples turned into lists so that the record survives a YAML/JSON round trip. Arguments must
    be plain values (numbers, strings, booleans, None, lists, dicts).
    """

    architecture: ClassVar[str] = ""
    model_args: dict

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            if type(self) is cls:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                recorded = dict(bound.arguments)
                recorded.pop("self")
                self.model_args = {name: _plain(value, name) for name, value in recorded.items()}

        cls.__init__ = recording_init


def _plain(value: Any, name: str) -> Any:
    """``value`` with tuples as lists; raises for anything that is not a plain value."""
    if isinstance(value, (tuple, list)):
        return [_plain(item, name) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item, name) for key, item in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(f"{name}: constructor arguments of a LoadableModel must be plain values, "
                      f"got {type(value).__name__}")


def register_architecture(name: str):
    """Class decorator: make a :class:`LoadableModel` subclass loadable under ``name``."""
    def decorate(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, LoadableModel)):
            raise ConfigError(f"{name}: expected a LoadableModel subclass, got {cls!r}")
        if name in _ARCHITECTURES and _ARCHITECTURES[name] is not cls:
            raise ConfigError(f"architecture {name!r} is already registered by {_ARCHITECTURES[name].__name__}")
        cls.architecture = name
        _ARCHITECTURES[name] = cls
        return cls

    return decorate


def _import_architecture_modules() -> None:
    for module in ARCHITECTURE_MODULES:
        importlib.import_module(module)


def architectures() -> dict[str, type]:
    """``{name: class}`` of every registered architecture (those of :data:`ARCHITECTURE_MODULES` included)."""
    _import_architecture_modules()
    return dict(_ARCHITECTURES)


def build_model(architecture: str, model_args: Optional[dict] = None) -> LoadableModel:
    """A fresh network of a registered ``architecture`` built from ``model_args``.

    Raises:
        ConfigError: unknown architecture or constructor arguments it does not take.
    """
    _import_architecture_modules()
    if architecture not in _ARCHITECTURES:
        raise ConfigError(f"architecture: expected one of {sorted(_ARCHITECTURES)}, got {architecture!r}")
    cls = _ARCHITECTURES[architecture]
    try:
        return cls(**(model_args or {}))
    except TypeError as error:
        raise ConfigError(f"model ({architecture}): {error}") from None


def save_checkpoint(path: Union[str, Path], model: LoadableModel, *, config: Optional[dict] = None,
                    step: int = 0, optimizer: Optional[torch.optim.Optimizer] = None,
                    rng_state: Optional[torch.Tensor] = None, history: Optional[list] = None) -> Path:
    """Write ``model`` (and optionally the training state) to ``path`` atomically.

    Raises:
        GraphregError: ``model`` is not a registered :class:`LoadableModel`.
    """
    from graphreg import __version__

    architecture = getattr(model, "architecture", "")
    if not isinstance(model, LoadableModel) or architecture not in _ARCHITECTURES:
        raise GraphregError(f"model: expected a network registered with register_architecture, "
                            f"got {type(model).__name__}")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "graphreg_version": __version__,
        "architecture": architecture,
        "model_args": model.model_args,
        "config": dict(config or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "step": int(step),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "rng": rng_state,
        "history": list(history or []),
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: Union[str, Path]) -> dict:
    """The raw checkpoint dict (see the module docstring), validated.

    Raises:
        InputFileError: missing, unreadable or not a graphreg checkpoint, or a newer format.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"checkpoint {path}: not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files (pickle, zip, EOF)
        raise InputFileError(f"checkpoint {path}: not a readable checkpoint file ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else 'no detail'})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputFileError(f"checkpoint {path}: expected a graphreg checkpoint, got a file without "
                             f"format={CHECKPOINT_FORMAT!r}")
    version = payload.get("format_version")
    if not is_int_at_least(version, 1):
        raise InputFileError(f"checkpoint {path}: expected an integer format_version >= 1, got {version!r}")
    if version > FORMAT_VERSION:
        raise InputFileError(f"checkpoint {path}: format version {version!r} is newer than this graphreg "
                             f"reads ({FORMAT_VERSION}); upgrade graphreg")
    missing = [key for key in ("architecture", "model_args", "state_dict") if key not in payload]
    if missing:
        raise InputFileError(f"checkpoint {path}: incomplete, missing {', '.join(missing)}")
    return payload


def load_model(path: Union[str, Path], architecture: Optional[str] = None, device=None) -> LoadableModel:
    """Rebuild the network stored in a checkpoint, weights loaded, in eval mode.

    Args:
        path: a file written by :func:`save_checkpoint` (or by the training loop).
        architecture: when given, the architecture the caller expects; a checkpoint of another
            architecture is refused.
        device: where to put the network (default CPU).

    Raises:
        InputFileError: not a (readable) checkpoint.
        GraphregError: another architecture than ``architecture``, an architecture this install
            does not know, or weights that do not fit the recorded constructor arguments.
    """
    payload = read_checkpoint(path)
    found = payload["architecture"]
    if architecture is not None and found != architecture:
        raise GraphregError(f"checkpoint {path}: expected a {architecture!r} network, got a {found!r} network")
    _import_architecture_modules()
    if found not in _ARCHITECTURES:
        raise GraphregError(f"checkpoint {path}: architecture {found!r} is unknown here "
                            f"(known: {', '.join(sorted(_ARCHITECTURES))})")
    model = build_model(found, payload["model_args"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise GraphregError(f"checkpoint {path}: weights do not fit the {found!r} network "
                            f"({str(error).splitlines()[0]})") from None
    return model.to(device or "cpu").eval()


__all__ = ["CHECKPOINT_FORMAT", "DEFAULT_WEIGHTS", "FORMAT_VERSION", "LoadableModel", "architectures", "build_model", "default_weights",
           "load_model", "read_checkpoint", "register_architecture", "save_checkpoint"]
