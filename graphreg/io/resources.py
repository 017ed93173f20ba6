"""Files shipped inside the package: configuration presets, the demo pair and trained weights.

They are package data (``graphreg/configs``, ``graphreg/assets``), found through
:mod:`importlib.resources`, so they are there in an editable checkout and in an installed wheel
alike. The repository's top-level ``configs/`` and ``assets/`` are links to these folders.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Sequence, Union

from graphreg.errors import ConfigError

#: configuration files that are training recipes (``graphreg train``), not registration presets
TRAINING_RECIPES = ("bspline_cnn", "graphregnet", "linear_deformable", "voxelmorph")


def package_dir(name: str) -> Path:
    """A folder of package data (``"assets"`` or ``"configs"``) as a filesystem path."""
    return Path(str(files("graphreg") / name))


def asset_path(*parts: str) -> Path:
    """A path under the shipped ``assets`` folder, e.g. ``asset_path("demo")``."""
    return package_dir("assets").joinpath(*parts)


def config_path(name: str) -> Path:
    """The shipped YAML file ``configs/<name>.yaml`` (a preset or a training recipe)."""
    return package_dir("configs") / f"{name}.yaml"


def preset_names() -> list[str]:
    """Names of the registration presets (``configs/*.yaml`` less the training recipes), sorted."""
    return sorted(path.stem for path in package_dir("configs").glob("*.yaml") if path.stem not in TRAINING_RECIPES)


def preset_path(name: str) -> Path:
    """The YAML file of the registration preset ``name`` (e.g. ``"accurate"``).

    Raises:
        ConfigError: no preset of that name (the message lists the presets).
    """
    return shipped_or_path(name, preset_names(), "preset")


def shipped_or_path(source: Union[str, os.PathLike], names: Sequence[str], kind: str) -> Path:
    """``source`` as a YAML path, or the shipped ``configs/<source>.yaml`` when ``source`` is one of
    ``names`` (a bare name: no suffix, and no file of that name exists).

    Raises:
        ConfigError: a bare name that is not one of ``names`` (the message lists them).
    """
    path = Path(source)
    if path.suffix or path.exists():
        return path
    if str(source) not in names:
        raise ConfigError(f"config: expected a YAML file or a {kind} name ({', '.join(names)}), got {str(source)!r}")
    return config_path(str(source))
