"""Configuration of the registration pipeline: dataclasses with documented defaults, loaded from YAML.

Every field has a default that is the recommended setting for inhale/exhale lung CT; a YAML file
(a shipped preset in ``graphreg/configs/``, see :mod:`graphreg.io.resources`) overrides any subset of them. Unknown keys and values of the wrong type are
rejected with :class:`graphreg.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Union

from graphreg.errors import ConfigError


@dataclass
class PreprocessConfig:
    """Working grid and intensities."""

    spacing_mm: float = 2.0  #: isotropic working voxel size (mm)
    hu_min: float = -1000.0  #: intensities are clipped to [hu_min, hu_max] and scaled to [0, 1]
    hu_max: float = 1500.0
    crop_margin_mm: float = 12.0  #: margin around the fixed lung bounding box (mm)
    prealign: bool = True  #: first translate the moving lungs' centre of mass onto the fixed one's (whole working voxels)
    #: low-pass filter each image along the axes it is downsampled on (Volume.antialiased) before resampling it
    antialias: bool = True


@dataclass
class KeypointConfig:
    """Förstner keypoints in the fixed lungs."""

    sigma: float = 1.4  #: Gaussian sigma of the structure tensor (working voxels)
    nms_size: int = 5  #: side of the non-maximum-suppression cube (working voxels, odd)
    #: at most this many keypoints kept by farthest-point thinning; the non-maximum suppression usually
    #: leaves fewer (450-600 on 2 mm lung CT, docs/defaults_realistic.md), and then all are kept
    num_points: int = 2000
    erode_mask: int = 1  #: erosion of the fixed lung mask before detection (voxels)


@dataclass
class MindConfig:
    """MIND-SSC descriptors."""

    radius: int = 1  #: patch radius of the box filter (voxels)
    dilation: int = 2  #: distance of the six-neighbourhood samples (voxels)


@dataclass
class SearchLevel:
    """One level of the discrete correlation search and its graph regularisation."""

    radius: int = 8  #: number of candidate steps on each side, per axis
    step: float = 2.0  #: distance between candidates (working voxels); keep <= 2 (MIND aliasing)
    alpha: float = 0.01  #: weight of the quadratic pairwise penalty (cost units per voxel^2)
    gamma: float = 10.0  #: inverse temperature of the soft correspondences (per cost unit)


def _default_levels() -> list:
    return [SearchLevel(radius=8, step=2.0), SearchLevel(radius=4, step=1.0)]


@dataclass
class RegulariserConfig:
    """Graph regulariser shared by all levels."""

    k: int = 8  #: neighbours in the keypoint graph
    symmetric: bool = False  #: combine forward and backward estimates (twice the search time)
    inference: str = "sum-product"  #: tree belief propagation: ``"sum-product"`` or ``"min-sum"``
    #: GraphRegNet only: also run the classical regulariser at the first level and, per keypoint, take
    #: ``"choose"`` the one of lower calibrated predicted error or ``"mean"`` their inverse-variance
    #: mean (``result.uncertainty.SCALES``); ``"none"`` the network alone
    blend: str = "none"


@dataclass
class DensifyConfig:
    """Sparse-to-dense interpolation of the keypoint displacements."""

    method: str = "tps"  #: ``"tps"`` (thin-plate spline) or ``"bspline"``
    #: TPS: regularisation lambda in mm (the kernel's unit), the same spline at any working spacing;
    #: B-spline: weight of the control grid's bending energy (``methods.keypoint.densify.densify_options``)
    smoothing: float = 0.2
    grid_step: int = 3  #: TPS evaluated every ``grid_step`` voxels, then upsampled
    #: TPS only: each keypoint's smoothing is ``smoothing * (spread / median spread)^2`` (its search
    #: level's spread), so uncertain keypoints pull the field less (``densify.confidence_smoothing``)
    confidence_weighting: bool = False
    control_spacing: int = 4  #: B-spline control-point spacing (working voxels)


@dataclass
class RefineConfig:
    """Second Adam stage of the instance optimisation, at the full working resolution.

    It starts from the coarse stage's field; the parameter grid and the MIND similarity are both on
    the working grid (``grid_factor`` = ``similarity_factor`` = 1), with the similarity evaluated
    at a random ``sample_fraction`` of the masked voxels each step to keep the cost down.
    """

    #: Adam steps; 0 skips the stage (a step costs about five coarse-stage steps; docs/instance_opt.md)
    iterations: int = 5
    lr: float = 0.4  #: Adam learning rate (working voxels)
    lambda_diffusion: float = 0.3  #: weight of the diffusion energy (see InstanceOptConfig.lambda_diffusion)
    smoothing_passes: int = 2  #: 3x3x3 average pools applied to the parameter each step
    sample_fraction: float = 0.5  #: fraction of the masked voxels drawn for each step's similarity


@dataclass
class InstanceOptConfig:
    """Adam instance optimisation of the dense field: a coarse stage, then :class:`RefineConfig`."""

    enabled: bool = True
    iterations: int = 26  #: Adam steps of the coarse stage (see RefineConfig.iterations)
    #: Adam learning rate (voxels of the parameter grid); values were chosen together with
    #: ``lambda_diffusion`` and ``refine.sample_fraction`` on the benchmark (docs/instance_opt.md)
    lr: float = 0.3
    #: weight of the diffusion energy (losses.diffusion_loss of the field in voxels of its own grid): the
    #: mean over the working box of |du/dx|^2, the displacement gradient in mm per mm, so one value means
    #: one smoothness at any working spacing and grid factor
    lambda_diffusion: float = 0.2
    grid_factor: int = 2  #: the parameter lives at 1 / grid_factor resolution
    smoothing_passes: int = 3  #: 3x3x3 average pools applied to the parameter each step
    similarity_factor: int = 2  #: the MIND similarity is evaluated at 1 / similarity_factor resolution
    sample_fraction: float = 0.5  #: fraction of the masked voxels drawn at random for each step's similarity
    #: MIND-SSC dilation (working voxels) of the features both stages compare; the search's own
    #: features (``mind.dilation``) are reused when it is the same. 1 beat 2 on the 2 mm benchmark.
    mind_dilation: int = 1
    #: weight (0..1) of the diffusion penalty outside the fixed lung mask, in both stages; below 1
    #: the field may fall off steeply there, as breathing motion does at the pleura. 0.1 beat 1
    #: (uniform) on the 2 mm benchmark
    outside_diffusion: float = 0.1
    #: weight of the folding penalty (pipeline.instance_opt.fold_loss) in both stages; 0 (off) by
    #: default for now: 10 removed the exhale -> inhale folds of the demo pair but cost ~1.9x its
    #: time and hid a failed registration from the folding check (docs/directions.md)
    fold_penalty: float = 0.0
    #: after the last step, smooth the field locally wherever its Jacobian determinant is below
    #: 0.1 (graphreg.ops.unfold.repair_folds) until none is; fields that do not fold are unchanged
    repair_folds: bool = True
    refine: RefineConfig = field(default_factory=RefineConfig)  #: full-resolution second stage

    def runs(self) -> bool:
        """Whether any Adam step runs: enabled, with steps in the coarse stage or the refinement."""
        return self.enabled and (self.iterations > 0 or self.refine.iterations > 0)


@dataclass
class RegionConfig:
    """Where the field is registered and trusted (:mod:`graphreg.methods.region`, ``docs/region.md``)."""

    #: ``"lungs"``: the registered field within ``margin_mm`` of the fixed lungs, decaying beyond it
    #: to the translation of the body's centre of mass; ``"body"``: a second registration of the body outside the
    #: lungs, joined to the lung field at the lung boundary (sliding allowed there), for dose warping
    mode: str = "lungs"
    #: ``"lungs"``: distance from the fixed lungs within which the field is kept (at most
    #: ``preprocess.crop_margin_mm`` is used: the field is estimated only that far)
    margin_mm: float = 10.0
    decay_mm: float = 30.0  #: ``"lungs"``: width of the raised-cosine decay to the global motion beyond it


@dataclass
class RegistrationConfig:
    """Everything ``graphreg.register`` needs besides the images."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)
    mind: MindConfig = field(default_factory=MindConfig)
    levels: list = field(default_factory=_default_levels)
    regulariser: RegulariserConfig = field(default_factory=RegulariserConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    instance_opt: InstanceOptConfig = field(default_factory=InstanceOptConfig)
    region: RegionConfig = field(default_factory=RegionConfig)
    seed: int = 0

    def to_dict(self) -> dict:
        """Plain nested dict (JSON/YAML serialisable)."""
        return dataclasses.asdict(self)


_LIST_ITEM_TYPES = {("RegistrationConfig", "levels"): SearchLevel}


@dataclass(frozen=True)
class Rule:
    """The allowed values of one config key: ``test(value)`` holds; ``expected`` says it in words."""

    test: Callable[[Any], bool]
    expected: str


def _at_least(low: float) -> Rule:
    return Rule(lambda value: math.isfinite(value) and value >= low, f"a finite value >= {low}")


_POSITIVE = Rule(lambda value: math.isfinite(value) and value > 0, "a finite value > 0")
_FRACTION = Rule(lambda value: 0 < value <= 1, "in (0, 1]")
_WEIGHT = Rule(lambda value: 0 <= value <= 1, "in [0, 1]")
_ODD = Rule(lambda value: value >= 1 and value % 2 == 1, "an odd integer >= 1")


def _one_of(*choices: str) -> Rule:
    return Rule(lambda value: value in choices, f"one of {', '.join(map(repr, choices))}")


#: allowed values per config section and key; every config is checked against them once, when built
#: (:func:`validate_config`), so an error names the full key path
RULES: dict[type, dict[str, Rule]] = {
    PreprocessConfig: {"spacing_mm": _POSITIVE, "crop_margin_mm": _at_least(0)},
    KeypointConfig: {"sigma": _POSITIVE, "nms_size": _ODD, "num_points": _at_least(1), "erode_mask": _at_least(0)},
    MindConfig: {"radius": _at_least(0), "dilation": _at_least(1)},
    SearchLevel: {"radius": _at_least(0), "step": _POSITIVE, "alpha": _at_least(0), "gamma": _POSITIVE},
    RegulariserConfig: {"k": _at_least(1), "inference": _one_of("sum-product", "min-sum"),
                        "blend": _one_of("none", "choose", "mean")},
    DensifyConfig: {"method": _one_of("tps", "bspline"), "smoothing": _at_least(0), "grid_step": _at_least(1),
                    "control_spacing": _at_least(1)},
    RefineConfig: {"iterations": _at_least(0), "lr": _POSITIVE, "lambda_diffusion": _at_least(0),
                   "smoothing_passes": _at_least(0), "sample_fraction": _FRACTION},
    InstanceOptConfig: {"iterations": _at_least(0), "lr": _POSITIVE, "lambda_diffusion": _at_least(0),
                        "grid_factor": _at_least(1), "smoothing_passes": _at_least(0),
                        "similarity_factor": _at_least(1), "sample_fraction": _FRACTION, "mind_dilation": _at_least(1),
                        "outside_diffusion": _WEIGHT, "fold_penalty": _at_least(0)},
    RegionConfig: {"mode": _one_of("lungs", "body"), "margin_mm": _at_least(0), "decay_mm": _POSITIVE},
    RegistrationConfig: {"seed": _at_least(0)},
}


def validate_config(config: Any, prefix: str = "") -> Any:
    """Check every key of a config dataclass (nested sections and lists included) against :data:`RULES`.

    Returns:
        ``config`` unchanged.

    Raises:
        ConfigError: the first value out of range, named by its full key path
            (``config key 'instance_opt.refine.sample_fraction': expected in (0, 1], got 1.5``).
    """
    rules = RULES.get(type(config), {})
    for item in dataclasses.fields(config):
        value, key = getattr(config, item.name), f"{prefix}{item.name}"
        if dataclasses.is_dataclass(value):
            validate_config(value, f"{key}.")
        elif isinstance(value, list):
            for index, entry in enumerate(value):
                if dataclasses.is_dataclass(entry):
                    validate_config(entry, f"{key}[{index}].")
        elif item.name in rules and not rules[item.name].test(value):
            raise ConfigError(f"config key '{key}': expected {rules[item.name].expected}, got {value!r}")
    if isinstance(config, PreprocessConfig) and not (math.isfinite(config.hu_min) and math.isfinite(config.hu_max)
                                                     and config.hu_min < config.hu_max):
        raise ConfigError(f"config key '{prefix}hu_max': expected a finite value above hu_min {config.hu_min}, "
                          f"got {config.hu_max}")
    if isinstance(config, DensifyConfig) and config.confidence_weighting and config.method != "tps":
        raise ConfigError(f"config key '{prefix}confidence_weighting': expected method 'tps', got {config.method!r}")
    return config


def _coerce(value: Any, expected: Any, key: str) -> Any:
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if expected in (int, str, bool) and type(value) is expected:
        return value
    if expected in (int, float, str, bool):
        raise ConfigError(f"config key '{key}': expected {expected.__name__}, got {type(value).__name__} {value!r}")
    raise ConfigError(f"config key '{key}': unsupported type {expected}")  # pragma: no cover


def from_mapping(cls, data: Mapping[str, Any], prefix: str = ""):
    """Build dataclass ``cls`` from a nested mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise ConfigError(f"config key '{prefix}{unknown[0]}': unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        expected = hints[name]
        item_type = _LIST_ITEM_TYPES.get((cls.__name__, name))
        if item_type is not None:
            if not isinstance(value, list) or not value:
                raise ConfigError(f"config key '{key}': expected a non-empty list, got {value!r}")
            kwargs[name] = [from_mapping(item_type, v, f"{key}[{i}].") for i, v in enumerate(value)]
        elif dataclasses.is_dataclass(expected):
            kwargs[name] = from_mapping(expected, value, f"{key}.")
        else:
            kwargs[name] = _coerce(value, expected, key)
    return cls(**kwargs)


#: deepest ``[ ]`` / ``{ }`` nesting read_yaml accepts (PyYAML's scanner is quadratic in it)
_MAX_FLOW_DEPTH = 64


def _flow_depth(text: str) -> int:
    """Deepest running count of ``[`` / ``{`` over ``]`` / ``}`` in ``text`` (quotes are not parsed,
    so this over-estimates; real configs nest a few levels)."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(depth - 1, 0)
    return deepest


def read_yaml(path: Union[str, Path]) -> Any:
    """The content of a YAML file (``{}`` when empty); ConfigError when missing or malformed."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path}: expected UTF-8 text, got undecodable bytes ({error})") from None
    depth = _flow_depth(text)
    if depth > _MAX_FLOW_DEPTH:
        raise ConfigError(f"config file {path}: expected at most {_MAX_FLOW_DEPTH} nested [ ] / {{ }} levels, "
                          f"found {depth}")
    try:
        return yaml.safe_load(text) or {}
    except (yaml.YAMLError, ValueError, RecursionError) as error:
        # ValueError: a value YAML recognises but cannot build, e.g. the date 2001-13-45;
        # RecursionError: absurdly deep nesting
        detail = str(error) or type(error).__name__
        raise ConfigError(f"config file {path}: not valid YAML ({detail})") from None


def config_label(source: Union[None, str, Path, Mapping[str, Any], RegistrationConfig]) -> str:
    """How a :func:`load_config` source is named in logs and reports: ``"corrfield (default)"``,
    a preset's name, a YAML file's path, ``"overrides of the defaults"`` or ``"a RegistrationConfig"``."""
    if source is None:
        return "corrfield (default)"
    if isinstance(source, RegistrationConfig):
        return "a RegistrationConfig"
    if isinstance(source, (str, Path)):
        return str(source)
    return "overrides of the defaults"


def load_config(source: Union[None, str, Path, Mapping[str, Any], RegistrationConfig] = None) -> RegistrationConfig:
    """A :class:`RegistrationConfig` from defaults, a YAML file, a preset name, a mapping, or an existing config.

    A string or path without a suffix that names no existing file is a shipped preset
    (:func:`graphreg.io.resources.preset_names`, e.g. ``"accurate"``).

    Raises:
        ConfigError: unknown preset, unreadable YAML, unknown keys, wrong types, values out of range
            (the key is named by its full path).
    """
    if source is None:
        return RegistrationConfig()
    if isinstance(source, RegistrationConfig):
        return validate_config(source)
    if isinstance(source, (str, Path)):
        from graphreg.io.resources import preset_names, shipped_or_path

        source = read_yaml(shipped_or_path(source, preset_names(), "preset"))
    return validate_config(from_mapping(RegistrationConfig, source))


__all__ = [
    "PreprocessConfig", "KeypointConfig", "MindConfig", "SearchLevel", "RegulariserConfig",
    "DensifyConfig", "InstanceOptConfig", "RegionConfig", "RegistrationConfig", "RULES", "config_label", "load_config", "validate_config", "read_yaml",
    "from_mapping",
]
