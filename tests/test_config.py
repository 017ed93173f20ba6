"""Configuration loading: defaults, YAML overrides, strict keys and types."""

import pytest

from graphreg.config import RegistrationConfig, SearchLevel, load_config
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

    from graphreg.config import load_config

    recipes = {"voxelmorph.yaml", "bspline_cnn.yaml", "linear_deformable.yaml", "graphregnet.yaml"}
    configs = [p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml") if p.name not in recipes]
    assert {"corrfield.yaml", "lowres_3mm.yaml", "accurate.yaml"} <= {p.name for p in configs}
    for path in configs:
        load_config(path)
    accurate = load_config(Path(__file__).resolve().parents[1] / "configs" / "accurate.yaml").instance_opt
    default = load_config(None).instance_opt
    assert accurate.refine.iterations > default.refine.iterations and accurate.sample_fraction == 1.0
