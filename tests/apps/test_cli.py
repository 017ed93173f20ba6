"""The command line: help texts, `evaluate` end to end on DIR-Lab landmarks, clear errors."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from graphreg.apps.cli import app

runner = CliRunner()
SUBCOMMANDS = ["info", "evaluate", "register", "apply", "train", "viz", "bench", "demo"]


def test_console_script_help():
    # rich draws the help with box characters: read them as the UTF-8 the child is told to write
    result = subprocess.run([sys.executable, "-m", "graphreg.apps.cli", "--help"], capture_output=True,
                            encoding="utf-8", env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_evaluate_dirlab_json(dirlab_dir):
    case = dirlab_dir / "4dct" / "case4"
    result = runner.invoke(app, ["evaluate", "--fixed-landmarks", str(case / "Case4_300_T00_xyz.txt"),
                                 "--moving-landmarks", str(case / "Case4_300_T50_xyz.txt"),
                                 "--dirlab-case", "4dct4", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_points"] == 300
    assert abs(report["tre_mean_mm"] - 9.83) < 0.01
    for key in ("tre_std_mm", "tre_p75_mm", "tre_max_mm", "tre_before_mean_mm"):
        assert key in report


def test_evaluate_with_moved_landmarks_and_text_table(dirlab_dir, tmp_path):
    case = dirlab_dir / "4dct" / "case1"
    moving = case / "Case1_300_T50_xyz.txt"
    result = runner.invoke(app, ["evaluate", "--fixed-landmarks", str(case / "Case1_300_T00_xyz.txt"),
                                 "--moving-landmarks", str(moving), "--moved-landmarks", str(moving),
                                 "--spacing", "0.97,0.97,2.5"])
    assert result.exit_code == 0, result.output
    assert "TRE before" in result.output and "TRE after" in result.output
    after_line = [line for line in result.output.splitlines() if line.strip().startswith("TRE after")][0]
    assert float(after_line.split()[3]) == 0.0  # mean after mapping onto the targets themselves


def test_evaluate_errors_are_one_line(run_cli, dirlab_dir, tmp_path, monkeypatch, capsys):
    case = dirlab_dir / "4dct" / "case1"
    fixed = case / "Case1_300_T00_xyz.txt"
    short = tmp_path / "short.txt"
    short.write_text("1 2 3\n4 5 6\n")
    cases = [
        (["--moving-landmarks", str(short), "--dirlab-case", "4dct1"], "300"),
        (["--moving-landmarks", str(tmp_path / "nope.txt"), "--dirlab-case", "4dct1"], "nope.txt"),
        (["--moving-landmarks", str(case / "Case1_300_T50_xyz.txt")], "--dirlab-case"),
        (["--moving-landmarks", str(case / "Case1_300_T50_xyz.txt"), "--spacing", "1,x,2"], "--spacing"),
        (["--moving-landmarks", str(case / "Case1_300_T50_xyz.txt"), "--dirlab-case", "4dct99"], "4dct99"),
    ]
    for extra, needle in cases:
        code, _, err = run_cli(["evaluate", "--fixed-landmarks", str(fixed)] + extra)
        assert code == 2, (extra, err)
        assert err.startswith("error: ") and needle in err, err
        assert "Traceback" not in err


def test_register_writes_the_documented_outputs(run_cli, tmp_path, monkeypatch, capsys):
    from graphreg.apps.demo import DEMO_PAIR
    from graphreg.io.resources import preset_path

    config = tmp_path / "fast.yaml"
    config.write_text(preset_path("lowres_3mm").read_text() + "instance_opt:\n  enabled: false\n")
    out = tmp_path / "out"
    args = ["register", str(DEMO_PAIR / "fixed.nii.gz"), str(DEMO_PAIR / "moving.nii.gz"),
            "--fixed-mask", str(DEMO_PAIR / "fixed_mask.nii.gz"), "--moving-mask", str(DEMO_PAIR / "moving_mask.nii.gz"),
            "--config", str(config), "--landmarks", str(DEMO_PAIR / "fixed_landmarks.csv"), "--out", str(out),
            "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].endswith("status ok")
    assert sorted(p.name for p in out.iterdir()) == ["field.nii.gz", "keypoints.csv", "landmarks_moved.csv",
                                                    "report.json", "valid_mask.nii.gz",
                                                    "warped.nii.gz"]
    report = json.loads((out / "report.json").read_text())
    assert report["region"]["mode"] == "lungs" and report["region"]["summary"] in result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"wrote {re.escape(str(out))}: pipeline [0-9.]+ s, total [0-9.]+ s; status (ok|suspect|failed)", last), last
    assert report["seconds_wall"] > report["seconds_total"] >= report["timings_s"]["read"] > 0
    assert report["config"]["instance_opt"]["enabled"] is False
    assert set(report["input_sha256"]) == {"fixed", "moving", "fixed_mask", "moving_mask"}
    # the mapped landmarks are far closer to the true moving landmarks than the unmapped ones
    from graphreg.io.landmarks import read_landmarks
    from graphreg.ops.metrics import landmark_errors

    moved = read_landmarks(out / "landmarks_moved.csv").points
    target = read_landmarks(DEMO_PAIR / "moving_landmarks.csv").points
    fixed = read_landmarks(DEMO_PAIR / "fixed_landmarks.csv").points
    assert landmark_errors(moved, target).mean() < 0.35 * landmark_errors(fixed, target).mean()
    # a second run into the same folder is refused without --overwrite
    code, _, err = run_cli(args)
    assert code == 2 and "--overwrite" in err


@pytest.mark.slow
def test_register_outputs_uncertainty_and_viz_draws_it(run_cli, tmp_path):
    """``--outputs ...,uncertainty`` writes the map on the fixed grid and its report entry; ``graphreg
    viz`` adds its slice panel."""
    from graphreg.apps.demo import DEMO_PAIR
    from graphreg.io import read_image
    from graphreg.io.resources import preset_path

    config = tmp_path / "fast.yaml"
    config.write_text(preset_path("lowres_3mm").read_text() + "instance_opt:\n  enabled: false\n")
    out = tmp_path / "out"
    code, _, err = run_cli(["register", DEMO_PAIR / "fixed.nii.gz", DEMO_PAIR / "moving.nii.gz",
                            "--fixed-mask", DEMO_PAIR / "fixed_mask.nii.gz", "--moving-mask",
                            DEMO_PAIR / "moving_mask.nii.gz", "--config", config, "--out", out, "--device", "cpu",
                            "--outputs", "field,uncertainty", "--threads", "1"])
    assert code in (0, None), err
    assert sorted(p.name for p in out.iterdir()) == ["field.nii.gz", "report.json", "uncertainty.nii.gz"]
    error_map = read_image(out / "uncertainty.nii.gz")
    assert error_map.grid.same_as(read_image(DEMO_PAIR / "fixed.nii.gz").grid)
    entry = json.loads((out / "report.json").read_text())["uncertainty_map"]
    assert entry["region"] == "fixed lungs" and "not the error of the final field" in entry["predicts"]
    assert 0 < entry["predicted"]["p50"] <= entry["predicted"]["p90"] < entry["p90_bound"]["p90"]
    code, stdout, err = run_cli(["viz", out, "--fixed", DEMO_PAIR / "fixed.nii.gz", "--moving",
                                 DEMO_PAIR / "moving.nii.gz", "--fixed-mask", DEMO_PAIR / "fixed_mask.nii.gz",
                                 "--no-3d", "--threads", "1", "--out", tmp_path / "viz"])
    assert code in (0, None), err
    assert (tmp_path / "viz" / "figures" / "uncertainty.png").is_file()


def test_register_exit_code_follows_the_quality_status(tmp_path, monkeypatch):
    import graphreg.api

    class Result:  # what graphreg.api.register returns, reduced to what the command reads
        timings = {"total": 1.0}
        extras: dict = {}

        def __init__(self, status):
            self.status = status

        def save(self, out, **kwargs):
            Path(out).mkdir(parents=True, exist_ok=True)

    from graphreg.apps.cli import EXIT_FAILED_CHECKS

    inputs = [tmp_path / "f.nii.gz", tmp_path / "m.nii.gz"]
    for path in inputs:
        path.write_bytes(b"")  # checksummed only: register itself is replaced
    for status, code in (("ok", 0), ("suspect", 0), ("failed", EXIT_FAILED_CHECKS)):
        monkeypatch.setattr(graphreg.api, "register", lambda *a, status=status, **k: Result(status))
        result = runner.invoke(app, ["register", *map(str, inputs), "--out", str(tmp_path / status)])
        assert result.exit_code == code, result.output
        assert result.output.strip().splitlines()[-1].endswith(f"status {status}")


def test_outputs_option_exception_before_any_work(run_cli, tmp_path, monkeypatch, capsys):
    """A bad --outputs name stops register / batch / demo at once (exit 2), before reading any image."""
    out = tmp_path / "out"
    for args in (["register", "missing_fixed.nii.gz", "missing_moving.nii.gz", "--out", str(out)],
                 ["batch", "missing.csv", "--out", str(out)], ["demo", "--out", str(out)]):
        code, _, err = run_cli(args + ["--outputs", "field,wraped"])
        assert code == 2 and err.startswith("error: --outputs: expected names from field, warped") \
            and "'wraped'" in err, err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_field_computes_jacobian_only_when_asked(tmp_path):
    import torch

    from graphreg.core.field import DisplacementField
    from graphreg.core.geometry import Grid
    from graphreg.io.fields import write_itk_field

    grid = Grid((12, 10, 8), (1.5, 1.5, 2.0))
    field = DisplacementField(0.2 * torch.ones((1, 3, *grid.shape)), grid)
    write_itk_field(field, tmp_path / "field.nii.gz")
    points = grid.voxel_to_world(np.array([[2.0, 3.0, 4.0], [5.0, 5.0, 5.0]]))
    for name, values in (("fixed.csv", points), ("moving.csv", field.transform_points(points))):
        (tmp_path / name).write_text("x,y,z\n" + "\n".join(",".join(map(str, row)) for row in values) + "\n")
    args = ["evaluate", "--fixed-landmarks", str(tmp_path / "fixed.csv"), "--moving-landmarks",
            str(tmp_path / "moving.csv"), "--field", str(tmp_path / "field.nii.gz"), "--json"]
    plain = json.loads(runner.invoke(app, args).stdout)
    assert plain["registered"] and plain["tre_mean_mm"] < 1e-4 and "std_log_jacobian" not in plain
    with_jacobian = json.loads(runner.invoke(app, args + ["--jacobian"]).stdout)
    assert with_jacobian["folding_percent"] == 0.0 and abs(with_jacobian["jacobian_min"] - 1.0) < 1e-5
