"""The wheel is a working library: built from a copy of the source, installed into a fresh venv
outside the repository, it finds its presets, demo pair and weights and runs the demo and the API."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from graphreg.io.resources import asset_path, config_path, preset_names, preset_path
from graphreg.core.config import load_config
from graphreg.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
IGNORED = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                 ".hypothesis", ".benchmarks", "bench_data", "runs", "out", "graphreg_demo")

#: the environment of the installed copy's commands: no PYTHONPATH that could lead back to a checkout
INSTALLED_ENV = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}

API_EXAMPLE = """
import graphreg
from graphreg.datasets.pairs import read_pair
from graphreg.io.resources import asset_path
pair = read_pair(asset_path("demo"))
result = graphreg.register(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, config="lowres_3mm")
moved = result.transform_points(pair.fixed_landmarks_mm)
print(graphreg.__file__)
print(float(((moved - pair.moving_landmarks_mm) ** 2).sum(1).mean() ** 0.5))
"""


def test_presets_and_assets_are_package_data():
    assert {"corrfield", "accurate", "lowres_3mm"} <= set(preset_names())
    assert "voxelmorph" not in preset_names()  # a training recipe, not a preset
    assert config_path("voxelmorph").is_file()
    assert (asset_path("demo") / "fixed.nii.gz").is_file()
    assert (asset_path("graphregnet") / "model.pt").is_file()
    assert load_config("accurate") == load_config(preset_path("accurate"))
    with pytest.raises(ConfigError, match="preset name"):
        load_config("no_such_preset")


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """A venv (system site packages visible for torch & co.) with graphreg installed from its wheel."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=IGNORED)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(work / "dist"), str(source)], check=True, capture_output=True, text=True)
    wheel = next((work / "dist").glob("graphreg-*.whl"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                    str(wheel)], check=True, capture_output=True, text=True)
    return wheel, venv, work


@pytest.mark.slow
def test_wheel_carries_its_data(installed_wheel):
    wheel, _, _ = installed_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("graphreg/py.typed", "graphreg/configs/corrfield.yaml", "graphreg/assets/demo/fixed.nii.gz",
                     "graphreg/assets/graphregnet/model.pt", "graphreg/assets/voxelmorph/model.pt"):
        assert required in names


@pytest.mark.slow
@pytest.mark.parametrize("method", ["corrfield", "graphregnet"])
def test_installed_demo_runs(installed_wheel, method):
    _, venv, work = installed_wheel
    out = work / f"demo_{method}"
    run = subprocess.run([str(venv / "bin" / "graphreg"), "demo", "--method", method, "--out", str(out)],
                         cwd=work, capture_output=True, text=True, encoding="utf-8", timeout=600, env=INSTALLED_ENV)
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["tre_after_mm"] < 0.5 * report["tre_before_mm"]
    assert run.stdout.strip().endswith("status ok")  # the quality checks' verdict ends the last line


@pytest.mark.slow
def test_installed_api_example(installed_wheel):
    _, venv, work = installed_wheel
    run = subprocess.run([str(venv / "bin" / "python"), "-c", API_EXAMPLE], cwd=work, capture_output=True, encoding="utf-8",
                         text=True, timeout=600, env=INSTALLED_ENV)
    assert run.returncode == 0, run.stderr
    module_path, rms = run.stdout.split()
    assert str(venv) in module_path  # the installed copy, not the checkout
    assert float(rms) < 3.0
