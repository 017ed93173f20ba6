"""Tests of graphreg.apps.bench.scaling (scaling curves: fits, report, a tiny real sweep)."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from graphreg.apps.bench.commands import bench_app
from graphreg.apps.demo import DEMO_PAIR
from graphreg.apps.bench.scaling import (DEFAULT_CURVES, central_crop, fit_curve, format_scaling, loglog_slope,
                                    plot_scaling, run_sweep)
from graphreg.errors import ConfigError, GraphregError
from graphreg.core.geometry import Grid
from graphreg.core.volume import Volume

#: Tiny settings: coarse working grid, few keypoints, small search, one Adam step.
TINY = {"preprocess": {"spacing_mm": 4.0}, "keypoints": {"nms_size": 3}, "levels": [{"radius": 2, "step": 2.0}],
        "instance_opt": {"iterations": 1}}


def synthetic_point(x_key, x, seconds, memory):
    total = sum(seconds.values())
    return {x_key: x, "timings": {**seconds, "end_to_end": total, "end_to_end_cpu": total}, "delta_rss_mb": memory,
            "peak_rss_mb": 300.0 + memory, "baseline_rss_mb": 300.0, "value": x}


@pytest.mark.parametrize("exponent", [0.5, 1.0, 3.0])
def test_loglog_slope_of_a_power_law(exponent):
    x = [10.0, 20.0, 40.0, 80.0]
    assert loglog_slope(x, [2.5 * v ** exponent for v in x]) == pytest.approx(exponent)


def test_loglog_slope_needs_two_distinct_positive_x():
    assert loglog_slope([5.0, 5.0], [1.0, 2.0]) is None
    assert loglog_slope([0.0, 4.0], [1.0, 2.0]) is None


def test_fit_curve_judges_slopes_against_the_expected_range():
    curve = DEFAULT_CURVES["keypoints"]
    def points(search_exponent):
        found = [synthetic_point("n_keypoints", n, {"search_1": 1e-3 * n ** search_exponent,
                                                     "densify": 1e-9 * n ** 3}, 0.01 * n)
                 for n in (500, 1000, 2000, 4000)]
        return found + [{"value": 8000, "error": "TimeoutError: no result"}]  # failures are left out

    fits = fit_curve(curve, points(1.0))
    stages = fits["stages"]
    assert stages["search_1"]["slope"] == pytest.approx(1.0) and stages["search_1"]["consistent"] is True
    assert stages["densify"]["slope"] == pytest.approx(3.0) and stages["densify"]["consistent"] is True
    assert fits["memory"]["slope"] == pytest.approx(1.0)
    quadratic = fit_curve(curve, points(2.0))["stages"]["search_1"]
    assert quadratic["slope"] == pytest.approx(2.0) and quadratic["consistent"] is False


def test_report_and_plots(tmp_path):
    curve = DEFAULT_CURVES["image_size"]
    points = [synthetic_point("working_voxels", v, {s: 1e-6 * v for s in curve.stages}, 1e-4 * v)
              for v in (1e5, 3e5, 1e6)]
    document = {"pair": "p", "threads": 1, "memory_measure": "ru_maxrss",
                "curves": {"image_size": {"varied": curve.varied, "x_key": "working_voxels", "points": points,
                                          "fits": fit_curve(curve, points)}}}
    text = format_scaling(document)
    assert "image_size" in text and "slope mind" in text and "consistent" in text
    paths = plot_scaling(document, tmp_path)
    assert paths["image_size"].stat().st_size > 10_000


def test_central_crop_keeps_the_geometry():
    volume = Volume(np.arange(10 * 8 * 6, dtype=np.float32).reshape(10, 8, 6), Grid((10, 8, 6), (2.0, 1.0, 3.0)))
    crop = central_crop(volume, 0.5)
    assert crop.array.shape == (5, 4, 3)
    np.testing.assert_array_equal(crop.array, volume.array[2:7, 2:6, 1:4])
    np.testing.assert_allclose(crop.grid.voxel_to_world(np.zeros(3)), volume.grid.voxel_to_world(np.array([2, 2, 1.0])))
    with pytest.raises(GraphregError, match="fraction"):
        central_crop(volume, 1.5)


def test_unknown_curve_is_rejected():
    with pytest.raises(ConfigError, match="curves"):
        run_sweep(DEMO_PAIR, ["nonsense"])
    with pytest.raises(ConfigError, match="curves"):
        run_sweep(DEMO_PAIR, ["keypoints"], values={"nonsense": [1]})


def test_tiny_sweep_in_fresh_processes():
    """Real runs, each in its own process: the whole pipeline on two crops, the keypoint stages
    for one keypoint count; time and memory are measured."""
    document = run_sweep(DEMO_PAIR, ["image_size", "keypoints"], base_overrides=TINY,
                         values={"image_size": [0.8, 1.0], "keypoints": [50]})
    sizes = document["curves"]["image_size"]["points"]
    assert [p.get("error") for p in sizes] == [None, None]
    assert sizes[0]["working_voxels"] < sizes[1]["working_voxels"]
    for point in sizes:
        assert point["peak_rss_mb"] >= point["baseline_rss_mb"] > 50
        assert point["timings"]["end_to_end"] >= point["timings"]["total"] > 0
        assert point["timings"]["field_resample"] > 0
        assert point["working_voxels"] == int(np.prod(point["working_shape"]))
    counts = document["curves"]["keypoints"]["points"]
    assert [p["n_keypoints"] for p in counts] == [50]
    assert all(p["timings"]["search_1"] > 0 and p["timings"]["densify"] > 0 for p in counts)
    assert document["curves"]["image_size"]["fits"]["stages"]["mind"]["slope"] is not None
    json.dumps(document)  # JSON-ready


def test_command_rejects_a_missing_pair(tmp_path):
    result = CliRunner().invoke(bench_app, ["scaling", "--pair", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--pair" in result.output
