"""Configuration loading: defaults, YAML overrides, strict keys and types."""

import pytest

from graphreg.core.config import RegistrationConfig, load_config
from graphreg.errors import ConfigError


def test_defaults_are_documented_values():
    config = load_config()
    assert isinstance(config, RegistrationConfig)
    assert config.preprocess.spacing_mm == 2.0
    assert [level.radius for level in config.levels] == [8, 4]


@pytest.mark.parametrize("overrides, key", [
    ({"keypoints": {"num_pointz": 5}}, "keypoints.num_pointz"),
    ({"bogus": 1}, "bogus"),
    ({"keypoints": {"num_points": "many"}}, "keypoints.num_points"),
    ({"instance_opt": {"enabled": 1}}, "instance_opt.enabled"),
    ({"levels": [{"radius": 2}, {"rad": 1}]}, "levels[1].rad"),
    ({"levels": []}, "levels"),
    ({"instance_opt": {"refine": {"lr": "fast"}}}, "instance_opt.refine.lr"),
])
def test_exception_names_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(overrides)


def test_exception_bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("keypoints: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_every_registration_config_in_configs_loads():
    from pathlib import Path

    from graphreg.core.config import load_config

    recipes = {"voxelmorph.yaml", "bspline_cnn.yaml", "linear_deformable.yaml", "graphregnet.yaml"}
    configs = [p for p in (Path(__file__).resolve().parents[2] / "configs").glob("*.yaml") if p.name not in recipes]
    assert {"corrfield.yaml", "lowres_3mm.yaml", "accurate.yaml"} <= {p.name for p in configs}
    for path in configs:
        load_config(path)
    accurate = load_config(Path(__file__).resolve().parents[2] / "configs" / "accurate.yaml").instance_opt
    default = load_config(None).instance_opt
    assert accurate.refine.iterations > default.refine.iterations and accurate.sample_fraction == 1.0


@pytest.mark.parametrize("overrides, message", [
    ({"instance_opt": {"refine": {"sample_fraction": 1.5}}},
     "config key 'instance_opt.refine.sample_fraction': expected in (0, 1], got 1.5"),
    ({"levels": [{"radius": 4}, {"step": 0}]}, "config key 'levels[1].step': expected a finite value > 0, got 0.0"),
    ({"keypoints": {"nms_size": 4}}, "config key 'keypoints.nms_size': expected an odd integer >= 1, got 4"),
    ({"densify": {"method": "rbf"}}, "config key 'densify.method': expected one of 'tps', 'bspline', got 'rbf'"),
    ({"instance_opt": {"outside_diffusion": -0.1}}, "config key 'instance_opt.outside_diffusion'"),
    ({"preprocess": {"hu_min": 100, "hu_max": 0}}, "config key 'preprocess.hu_max': expected a finite value above hu_min 100.0"),
])
def test_ranges_are_checked_with_the_full_key_path(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(overrides)
    assert message in str(error.value)


def test_every_default_and_preset_is_in_range():
    from graphreg.core.config import RULES, validate_config
    from graphreg.io.resources import preset_names

    validate_config(RegistrationConfig())
    for name in preset_names():
        load_config(name)
    broken = RegistrationConfig()
    broken.instance_opt.lr = 0.0  # a config built in code is checked when it is loaded
    with pytest.raises(ConfigError, match="instance_opt.lr"):
        load_config(broken)
    assert all(rules for rules in RULES.values())
