"""Cohort batch registration: table checks, failure isolation, resume, the CLI, a Dask LocalCluster."""

import csv
import json
import shutil

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from graphreg.apps.batch import (SUMMARY_COLUMNS, read_complete_report, read_pairs_csv, result_is_complete,
                            run_batch)
from graphreg.apps.cli import app
from graphreg.errors import GraphregError, InputFileError
from graphreg.core.geometry import Grid
from graphreg.io import write_image
from graphreg.io.fields import read_itk_field
from graphreg.io.landmarks import Landmarks, write_landmarks
from graphreg.runtime.threads import available_cores
from graphreg.core.volume import Volume

SPACING = 3.0
SIZE = 32
#: a fast setting for 32^3 phantoms at 3 mm: one fine search level, no instance optimisation
FAST = {"preprocess": {"spacing_mm": 3.0, "crop_margin_mm": 6.0},
        "keypoints": {"num_points": 96, "nms_size": 3, "sigma": 1.0, "erode_mask": 0},
        "levels": [{"radius": 3, "step": 1.0}], "instance_opt": {"enabled": False}}


def phantom_pair(shift_zyx, seed, margin=4):
    """Lung-like phantom with textured lungs and its copy moved by whole voxels: moving(x + s) = fixed(x)."""
    n = SIZE + 2 * margin
    z, y, x = (np.indices((n, n, n)) - (n - 1) / 2) * SPACING
    body = (x / 46) ** 2 + (y / 44) ** 2 + (z / 46) ** 2 < 1
    lung = ((np.abs(x) - 22) / 20) ** 2 + (y / 34) ** 2 + (z / 36) ** 2 < 1
    texture = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal((n, n, n)), 1.0)
    image = np.where(lung, -850.0 + 600.0 * texture / texture.std(), np.where(body, 40.0, -1000.0))
    grid = Grid((SIZE,) * 3, (SPACING,) * 3, (0.0, 0.0, 0.0))

    def crop(array, shift):
        return array[tuple(slice(margin - s, margin - s + SIZE) for s in shift)]

    fixed, fixed_mask = Volume(crop(image, (0, 0, 0)).astype(np.int16), grid), crop(lung, (0, 0, 0))
    moving = Volume(crop(image, shift_zyx).astype(np.int16), grid)
    points = grid.voxel_to_world(np.argwhere(ndimage.binary_erosion(fixed_mask, iterations=3))[::40].astype(float))
    shift_mm = np.asarray(shift_zyx[::-1], float) * SPACING
    masks = [Volume(mask.astype(np.uint8), grid) for mask in (fixed_mask, crop(lung, shift_zyx))]
    return fixed, moving, masks, points, points + shift_mm


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """pairs.csv with three rows: two good pairs (masks, landmarks) and one whose moving image is missing."""
    root = tmp_path_factory.mktemp("cohort")
    rows = []
    for index, shift in enumerate([(1, -1, 2), (0, 2, -1)]):
        fixed, moving, masks, fixed_mm, moving_mm = phantom_pair(shift, seed=index)
        folder = root / "images" / f"case{index}"
        write_image(fixed, folder / "fixed.nii.gz")
        write_image(moving, folder / "moving.nii.gz")
        write_image(masks[0], folder / "fixed_mask.nii.gz")
        write_image(masks[1], folder / "moving_mask.nii.gz")
        write_landmarks(Landmarks(fixed_mm, "world"), folder / "fixed_lm.csv", fmt="world")
        write_landmarks(Landmarks(moving_mm, "world"), folder / "moving_lm.csv", fmt="world")
        rows.append([f"case{index}", f"images/case{index}/fixed.nii.gz", f"images/case{index}/moving.nii.gz",
                     f"images/case{index}/fixed_mask.nii.gz", f"images/case{index}/moving_mask.nii.gz",
                     f"images/case{index}/fixed_lm.csv",
                     f"images/case{index}/moving_lm.csv"])
    rows.insert(1, ["broken", "images/case0/fixed.nii.gz", "images/missing.nii.gz", "", "", "", ""])
    table = root / "pairs.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "fixed", "moving", "fixed_mask", "moving_mask", "landmarks", "moving_landmarks"])
        writer.writerows(rows)
    return table


@pytest.fixture(scope="module")
def serial_run(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "out"
    return out, run_batch(cohort, out, config=FAST, device="cpu", outputs="field,l2r,jacobian")


def _summary(out):
    with open(out / "summary.csv", newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


# ---------------------------------------------------------------------- the table
def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, expected", [
    ("fixed,moving\n", "has a header but no pairs"),
    ("fixed\na.nii.gz\n", "missing column 'moving'"),
    ("fixed,moving,mask\na,b,c\n", "line 1, column 'mask': unknown column"),
    ("fixed,moving,fixed\na,b,c\n", "column 'fixed': appears twice"),
    ("fixed,moving\na,b\n,c\n", "line 3, column 'fixed': empty"),
    ("fixed,moving\na,b,c\n", "line 2: 3 cells for 2 columns"),
    ("id,fixed,moving\nx,a,b\n\nx,c,d\n", "line 4, column 'id': 'x' is also the id of line 2"),
    ("id,fixed,moving\n../up,a,b\n", "line 2, column 'id': expected letters"),
    ("fixed,moving,moving_landmarks\na,b,c\n", "line 2, column 'moving_landmarks': given without 'landmarks'"),
    ("", "is empty"),
])
def test_exception_table(tmp_path, text, expected):
    with pytest.raises(InputFileError, match=expected.replace("(", r"\(")):
        read_pairs_csv(_write(tmp_path / "pairs.csv", text))


def test_exception_arguments(tmp_path):
    table = _write(tmp_path / "pairs.csv", "fixed,moving\na,b\n")
    with pytest.raises(InputFileError, match="not found"):
        read_pairs_csv(tmp_path / "nope.csv")
    for kwargs, expected in [({"workers": 0}, "workers: expected an integer >= 1"),
                             ({"scheduler": "ray"}, "scheduler: expected one of"),
                             ({"scheduler": "dask"}, "needs the address"),
                             ({"scheduler": "local", "workers": 2}, "one pair at a time"),
                             ({"scheduler_address": "tcp://h:1", "scheduler": "processes"}, "used only with 'dask'"),
                             ({"method": "magic"}, "method: expected one of")]:
        with pytest.raises(GraphregError, match=expected):
            run_batch(table, tmp_path / "out", **kwargs)


def test_region_is_checked_before_anything_runs(tmp_path, run_cli):
    table = _write(tmp_path / "pairs.csv", "fixed,moving\na,b\n")
    with pytest.raises(GraphregError, match="region: 'body' is available for the keypoint methods"):
        run_batch(table, tmp_path / "out", method="demons", region="body")
    with pytest.raises(GraphregError, match="region.mode"):
        run_batch(table, tmp_path / "out", region="chest")
    assert not (tmp_path / "out").exists()
    code, out, _ = run_cli(["batch", "--help"])
    assert code in (0, None) and "--region" in out


def test_table_paths_and_default_ids(tmp_path):
    (tmp_path / "sub").mkdir()
    table = _write(tmp_path / "sub" / "pairs.csv", "fixed,moving,id\nimg/case_1.nii.gz,img/b.nii.gz,\n/abs/c d.mha,e.mha,mine\n")
    first, second = read_pairs_csv(table)
    assert first.id == "0001_case_1" and first.fixed == tmp_path / "sub" / "img" / "case_1.nii.gz"
    assert first.line == 2 and first.fixed_mask is None
    assert second.id == "mine" and str(second.fixed) == "/abs/c d.mha"


# ---------------------------------------------------------------------- a batch
def test_failure_is_isolated_and_summarised(serial_run):
    out, result = serial_run
    assert [row["id"] for row in result.rows] == ["case0", "broken", "case1"]
    assert result.counts == {"ok": 2, "skipped": 0, "failed": 1}
    summary = _summary(out)
    assert list(next(iter(summary.values()))) == list(SUMMARY_COLUMNS)
    assert summary["broken"]["status"] == "failed"
    assert "pairs.csv line 3, column 'moving'" in summary["broken"]["error"]
    assert "InputFileError" in (out / "broken.error.txt").read_text()
    assert not (out / "broken").exists()
    for pair_id in ("case0", "case1"):
        row = summary[pair_id]
        assert row["status"] == "ok" and row["error"] == ""
        report = read_complete_report(out / pair_id)
        assert row["quality"] == report["quality"]["status"] and row["quality"] in ("ok", "suspect", "failed")
        # the whole-voxel shift is recovered: TRE drops from the shift length to a fraction of a voxel
        assert float(row["tre_after_mm"]) < 0.3 * float(row["tre_before_mm"])
        report = read_complete_report(out / pair_id)
        assert report["batch"]["id"] == pair_id and report["inputs"]["fixed_mask"].endswith("fixed_mask.nii.gz")
        assert sorted(report["files"]) == sorted(p.name for p in (out / pair_id).iterdir()) \
            == ["disp_l2r.nii.gz", "field.nii.gz", "landmarks_moved.csv", "report.json"]
        assert report["outputs"] == ["field", "l2r", "jacobian"] and float(row["folding_percent"]) >= 0


def test_command_exit_code_and_resume(cohort, serial_run, tmp_path):
    out, _ = serial_run
    resumed = tmp_path / "out"
    shutil.copytree(out, resumed)
    # a half-written result (no report) and a truncated report are not finished results
    (resumed / "case1" / "report.json").unlink()
    assert not result_is_complete(resumed / "case1")
    (tmp_path / "truncated").mkdir()
    shutil.copy(out / "case0" / "field.nii.gz", tmp_path / "truncated" / "field.nii.gz")
    (tmp_path / "truncated" / "report.json").write_text((out / "case0" / "report.json").read_text()[:200])
    assert not result_is_complete(tmp_path / "truncated") and result_is_complete(out / "case0")
    # a complete report whose listed files are not all there is not a finished result either
    (tmp_path / "no_field").mkdir()
    shutil.copy(out / "case0" / "report.json", tmp_path / "no_field" / "report.json")
    assert "field.nii.gz" in read_complete_report(out / "case0")["files"]
    assert not result_is_complete(tmp_path / "no_field")
    config = tmp_path / "fast.yaml"
    config.write_text(json.dumps(FAST))  # JSON is YAML
    result = CliRunner().invoke(app, ["batch", str(cohort), "--out", str(resumed), "--config", str(config),
                                      "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert "1 registered, 1 skipped, 1 failed" in result.output
    summary = _summary(resumed)
    assert [summary[i]["status"] for i in ("case0", "broken", "case1")] == ["skipped", "failed", "ok"]
    assert summary["case0"]["tre_after_mm"] == _summary(out)["case0"]["tre_after_mm"]
    assert result_is_complete(resumed / "case1")
    # the skipped result was not touched
    assert (resumed / "case0" / "report.json").read_text() == (out / "case0" / "report.json").read_text()


def test_method_mismatch_is_refused(cohort, serial_run, tmp_path):
    out, _ = serial_run
    other = tmp_path / "out"
    shutil.copytree(out, other)
    result = run_batch(cohort, other, method="demons", config=FAST, device="cpu")
    assert result.rows[0]["status"] == "failed" and "holds a 'corrfield' result" in result.rows[0]["error"]
    assert result_is_complete(other / "case0")


def test_dask_local_cluster_gives_the_same_results(cohort, serial_run, tmp_path):
    dask = pytest.importorskip("dask")
    pytest.importorskip("distributed")
    out, _ = serial_run
    parallel = tmp_path / "out"
    # workers forked from this process skip re-importing torch (spawn, Dask's default, works the same, slower)
    with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}):
        result = run_batch(cohort, parallel, config=FAST, workers=2, scheduler="processes")
    assert result.counts == {"ok": 2, "skipped": 0, "failed": 1}
    summary = _summary(parallel)
    assert {summary[i]["worker"] for i in ("case0", "case1")} <= {"0", "1"}
    for pair_id in ("case0", "case1"):
        serial_field = read_itk_field(out / pair_id / "field.nii.gz").to_mm_array()
        dask_field = read_itk_field(parallel / pair_id / "field.nii.gz").to_mm_array()
        np.testing.assert_allclose(dask_field, serial_field, atol=1e-3)
        assert summary[pair_id]["tre_after_mm"] == _summary(out)[pair_id]["tre_after_mm"]
        # each of the two workers registered with its share of the cores, the serial run with all
        assert json.loads((parallel / pair_id / "report.json").read_text())["threads"] == max(1, available_cores() // 2)
        assert json.loads((out / pair_id / "report.json").read_text())["threads"] == available_cores()
