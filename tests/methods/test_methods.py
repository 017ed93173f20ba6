"""The method table is the one list of methods: the CLI help, the benchmark and the API all read it."""

import numpy as np
import pytest
from typer.testing import CliRunner

import graphreg
from graphreg.apps.bench.methods import get_method
from graphreg.apps.cli import app
from graphreg.datasets.pairs import read_pair
from graphreg.apps.demo import DEMO_PAIR
from graphreg.errors import GraphregError
from graphreg.methods.registry import DEFAULT_METHOD, METHODS, method_info, method_names
from graphreg.training.checkpoint import DEFAULT_WEIGHTS


@pytest.mark.parametrize("command", ["register", "demo", "batch"])
def test_every_method_is_in_the_cli_help(command):
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=400)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for name in METHODS:
        assert name in text, f"{command} --help omits {name}"


def test_every_method_is_loadable_by_the_benchmark():
    for name in METHODS:
        assert callable(get_method(name))


def test_learned_methods_have_shipped_weights_and_a_recipe():
    assert set(DEFAULT_WEIGHTS) == {name for name, info in METHODS.items() if info.learned}
    for name, path in DEFAULT_WEIGHTS.items():
        assert path.is_file(), name
        assert METHODS[name].recipe


def test_exception():
    with pytest.raises(GraphregError, match="method: expected one of corrfield"):
        method_info("nope")
    with pytest.raises(GraphregError, match="family"):
        method_names("nope")
    assert DEFAULT_METHOD in METHODS
    assert set(method_names("keypoint") + method_names("classical") + method_names("cnn")) == set(METHODS)


@pytest.fixture(scope="module")
def demo_pair():
    return read_pair(DEMO_PAIR)


#: a quick setting every method reads: the demo's 3 mm grid, no instance optimisation
QUICK = {"preprocess": {"spacing_mm": 3.0}, "instance_opt": {"enabled": False}}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_registers_the_demo_pair(demo_pair, name):
    pair = demo_pair
    result = graphreg.register(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, method=name, config=QUICK)
    before = np.linalg.norm(pair.fixed_landmarks_mm - pair.moving_landmarks_mm, axis=1).mean()
    after = np.linalg.norm(result.transform_points(pair.fixed_landmarks_mm) - pair.moving_landmarks_mm, axis=1).mean()
    assert result.method == name
    assert "working_size_xyz" in result.extras  # wrapped by graphreg.methods.workflow.wrap_registration, as every method
    # the dense CNNs alone remove only part of the motion (docs/benchmark.md); the others most of it
    assert after < (0.95 if METHODS[name].family == "cnn" else 0.5) * before, f"{name}: {before:.2f} -> {after:.2f} mm"
