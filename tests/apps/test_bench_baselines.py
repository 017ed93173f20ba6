"""The dense baselines in the benchmark registry and the shipped CNN weights behind them.

The pair is the tiny translated phantom of ``test_bench`` (TRE before ``|s| = 7.5 mm``); every
method pre-aligns the lung centres of mass, so each one must end well below the initial TRE.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_bench import SHIFT_MM, translation_pair

from graphreg.api import register
from graphreg.apps.bench import methods as registry
from graphreg.apps.bench.runner import run_benchmark
from graphreg.apps.bench.sources import open_pairs
from graphreg.datasets.pairs import write_pair
from graphreg.errors import GraphregError
from graphreg.training import checkpoint as checkpoint_module
from graphreg.training.checkpoint import read_checkpoint

CNNS = ("voxelmorph", "bspline-cnn", "linear-deformable")
BASELINES = ("demons", "bspline-ffd") + CNNS + tuple(f"{name}+io" for name in CNNS)


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    write_pair(translation_pair(), root / "pair_01")
    return root


def test_baselines_are_registered():
    listing = registry.available_methods()
    assert set(BASELINES) <= set(listing)
    assert all("not installed" not in listing[name] for name in BASELINES)


@pytest.mark.parametrize("name", CNNS)
def test_shipped_weights_exist_and_match_their_method(name):
    path = checkpoint_module.default_weights(name)
    assert path.stat().st_size < 5 * 2 ** 20
    checkpoint = read_checkpoint(path)
    assert checkpoint["architecture"] == name
    assert checkpoint["config"]["train"]["steps"] == checkpoint["step"]  # a finished run, not a snapshot


def test_missing_weights_name_the_recipe(monkeypatch, tmp_path):
    monkeypatch.setitem(checkpoint_module.DEFAULT_WEIGHTS, "voxelmorph", tmp_path / "voxelmorph" / "model.pt")
    with pytest.raises(GraphregError, match="--config voxelmorph "):
        checkpoint_module.default_weights("voxelmorph")
    with pytest.raises(GraphregError, match="method"):
        checkpoint_module.default_weights("corrfield")


def test_baselines_run_in_the_benchmark(pair_dir):
    rows = run_benchmark(open_pairs(pair_dir), list(BASELINES), isolate=False)
    distance = float(np.linalg.norm(SHIFT_MM))
    for row in rows:
        assert row["status"] == "ok", (row["method"], row["error"])
        assert row["tre_before"]["mean_mm"] == pytest.approx(distance)
        # the phantom is only ~12 voxels wide at the networks' 4 mm grid: a loose bound, but a lost
        # pre-alignment or a flipped direction would leave the full |s| or double it
        assert row["tre"]["mean_mm"] < 0.5 * distance, row["method"]
        assert row["jacobian"]["folding_percent"] < 1.0, row["method"]
    by_name = {row["method"]: row for row in rows}
    for name in CNNS:
        assert "network" in by_name[name]["timings"] and "instance_opt" not in by_name[name]["timings"]
        assert "instance_opt" in by_name[f"{name}+io"]["timings"]
    assert by_name["demons"]["timings"] and by_name["bspline-ffd"]["timings"]


def test_register_defaults_to_the_shipped_weights():
    pair = translation_pair()
    alone = register(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, method="bspline-cnn",
                     config={"instance_opt": {"enabled": False}}, device="cpu")
    refined = register(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, method="bspline-cnn",
                       device="cpu")
    shipped = read_checkpoint(checkpoint_module.default_weights("bspline-cnn"))
    assert alone.method == "bspline-cnn" and refined.method == "bspline-cnn+io"
    assert alone.extras["model_args"] == shipped["model_args"]
    assert not torch.equal(alone.working_field.displacement, refined.working_field.displacement)
    trained = shipped["config"]["data"]["spacing_mm"]  # config overrides keep the trained working grid ...
    assert alone.working_field.grid.spacing == refined.working_field.grid.spacing == (trained,) * 3
    finer = register(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, method="bspline-cnn",
                     config={"preprocess": {"spacing_mm": 3.0}, "instance_opt": {"enabled": False}}, device="cpu")
    assert finer.working_field.grid.spacing == (3.0,) * 3  # ... unless they set it
