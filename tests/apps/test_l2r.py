"""Learn2Reg task folders: dataset.json checks, submission format, official metrics, run end to end."""

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from graphreg.errors import GeometryError, InputFileError
from graphreg.analysis.evaluation import evaluate_landmarks
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.apps.l2r import (evaluate_submission, pair_id, read_dataset, run_l2r, submission_field,
                          write_example_task)
from graphreg.ops.metrics import dice

FAST = {"preprocess": {"spacing_mm": 4.0}, "instance_opt": {"enabled": False}}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A 3-pair task folder at 4 mm made from the demo pair (read-only for the tests below)."""
    return write_example_task(tmp_path_factory.mktemp("task"), n_pairs=3, spacing_mm=4.0)


def copy_task(task, tmp_path):
    root = tmp_path / "task"
    shutil.copytree(task.parent, root)
    return root / task.name


def write_disp(path, array):
    nib.save(nib.Nifti1Image(np.asarray(array, np.float32), np.eye(4)), str(path))


# ---------------------------------------------------------------------- dataset.json
@pytest.mark.parametrize("fixed, moving, expected", [
    ("./imagesTr/LungCT_0001_0000.nii.gz", "./imagesTr/LungCT_0001_0001.nii.gz", "0001_0001"),
    ("./imagesTr/OASIS_0395_0000.nii.gz", "./imagesTr/OASIS_0396_0000.nii.gz", "0395_0396"),
    ("./imagesTr/AbdomenMRCT_0001_0001.nii.gz", "./imagesTr/AbdomenMRCT_0001_0000.nii.gz", "0001_0001_0001_0000"),
])
def test_convention_pair_id(fixed, moving, expected):
    assert pair_id(fixed, moving) == expected


def test_exception_pair_id_bad_name():
    with pytest.raises(InputFileError, match="CCCC_MMMM"):
        pair_id("./imagesTr/case1_insp.nii.gz", "./imagesTr/LungCT_0001_0001.nii.gz")


def test_read_dataset_pairs_and_companions(task):
    dataset = read_dataset(task, "validation")
    assert dataset.split == "registration_val" and dataset.name == "LungCTdemo"
    assert [p.id for p in dataset.pairs] == ["0001_0001", "0002_0002", "0003_0003"]
    pair = dataset.pairs[0]
    assert pair.disp_name == "disp_0001_0001.nii.gz"
    assert pair.fixed_mask.name == "LungCTdemo_0001_0000.nii.gz" and pair.fixed_mask.parent.name == "masksTr"
    assert pair.moving_keypoints.name == "LungCTdemo_0001_0001.csv"
    assert pair.fixed_labels is None and pair.fixed_landmarks is None
    assert dataset.shape == tuple(nib.load(str(pair.fixed)).shape)
    assert [p.id for p in dataset.select(["0002_0002"])] == ["0002_0002"]


def edit_json(path, change):
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))


@pytest.mark.parametrize("change, error, needle", [
    (lambda i: i["registration_val"][1].update(moving="./imagesTr/LungCTdemo_0009_0001.nii.gz"),
     InputFileError, "registration_val[1].moving: ./imagesTr/LungCTdemo_0009_0001.nii.gz not found"),
    (lambda i: i.pop("registration_val"), InputFileError, "registration_val"),
    (lambda i: i["registration_val"].append(i["registration_val"][0]), InputFileError, "also entry 0"),
    (lambda i: i["registration_val"][0].pop("moving"), InputFileError, "registration_val[0]"),
    (lambda i: i.update(tensorImageShape={"0": [10, 10, 10]}), GeometryError, "tensorImageShape"),
])
def test_exception_bad_dataset(task, tmp_path, change, error, needle):
    path = copy_task(task, tmp_path)
    edit_json(path, change)
    with pytest.raises(error) as info:
        read_dataset(path, "validation")
    assert needle in str(info.value)


def test_bad_input_rejected_before_anything_runs(run_cli, task, tmp_path, monkeypatch, capsys):
    path = copy_task(task, tmp_path)
    out = tmp_path / "out"
    code, _, err = run_cli(["l2r", "run", path, "--out", out, "--pair", "0007_0007"])
    assert code == 2 and err.startswith("error: pair: '0007_0007' is not a pair") and err.count("\n") == 1
    code, _, err = run_cli(["l2r", "run", path, "--out", out, "--split", "later"])
    assert code == 2 and "split" in err
    (path.parent / "imagesTr" / "LungCTdemo_0002_0000.nii.gz").unlink()
    code, _, err = run_cli(["l2r", "run", path, "--out", out])
    assert code == 2 and "registration_val[1].fixed" in err and "not found" in err and err.count("\n") == 1
    assert not out.exists()  # nothing written


def test_evaluate_rejects_wrong_shape_and_missing_files(run_cli, task, tmp_path, monkeypatch, capsys):
    dataset = read_dataset(task)
    submission = tmp_path / "submission"
    submission.mkdir()
    shape = dataset.shape + (3,)
    for pair in dataset.pairs:
        write_disp(submission / pair.disp_name, np.zeros(shape))
    write_disp(submission / "disp_0002_0002.nii.gz", np.zeros(shape[::-1]))
    code, out, err = run_cli(["l2r", "evaluate", task, submission])
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "disp_0002_0002.nii.gz: expected shape (X, Y, Z, 3) = " + str(shape) in err
    (submission / "disp_0003_0003.nii.gz").unlink()
    with pytest.raises(InputFileError, match="disp_0003_0003.nii.gz"):
        evaluate_submission(task, submission, pairs=["0001_0001", "0003_0003"])


# ---------------------------------------------------------------------- official metrics
def test_evaluate_matches_official_definitions(task, tmp_path):
    """A known shift: TRE from the keypoints by hand; zero field: Dice of the masks themselves."""
    path = copy_task(task, tmp_path)
    root = path.parent
    (root / "labelsTr").mkdir()
    for mask in (root / "masksTr").iterdir():
        shutil.copy(mask, root / "labelsTr" / mask.name)
    shutil.copytree(root / "keypointsTr", root / "landmarksTr")
    dataset = read_dataset(path)
    pair = dataset.pairs[0]
    submission = tmp_path / "submission"
    submission.mkdir()
    shift = np.array([1.0, -2.0, 0.5])
    for p in dataset.pairs:
        write_disp(submission / p.disp_name, np.broadcast_to(shift if p is pair else np.zeros(3), dataset.shape + (3,)))
    result = evaluate_submission(path, submission)
    fixed = np.loadtxt(pair.fixed_keypoints, delimiter=",")
    moving = np.loadtxt(pair.moving_keypoints, delimiter=",")
    spacing = nib.load(str(pair.moving)).header.get_zooms()[:3]
    inside = np.all((fixed >= 1) & (fixed <= np.array(dataset.shape) - 2), axis=1)  # cubic spline exact there
    assert inside.all()
    expected = np.linalg.norm((fixed + shift - moving) * spacing, axis=1).mean()
    case, still = result["cases"]["0001_0001"], result["cases"]["0002_0002"]
    assert case["TRE_kp"] == pytest.approx(expected, abs=1e-5)
    assert case["TRE_lm"] == case["TRE_kp"] and case["TRE_lm_initial"] == case["TRE_kp_initial"]
    assert still["TRE_kp"] == pytest.approx(still["TRE_kp_initial"], abs=1e-9)
    assert case["LogJacDetStd"] == pytest.approx(0.0, abs=1e-12) and case["folding_percent"] == 0.0
    labels = [nib.load(str(f)).get_fdata() for f in (pair.fixed_labels, pair.moving_labels)]
    assert still["DSC"] == pytest.approx(dice(labels[0], labels[1], [1])[1], abs=1e-12)
    aggregate = result["aggregates"]["TRE_kp"]
    values = [c["TRE_kp"] for c in result["cases"].values()]
    assert aggregate["mean"] == pytest.approx(np.mean(values)) and aggregate["std"] == pytest.approx(np.std(values))


def test_convention_submission_field_in_moving_voxels():
    """On different fixed and moving grids, fixed voxel + disp = the moving voxel of the mapped point."""
    fixed_grid = Grid((12, 10, 8), (2.0, 1.5, 1.0), (5.0, -3.0, 1.0))
    moving_grid = Grid((12, 10, 8), (1.0, 1.0, 2.0), (2.0, 0.0, -4.0))
    u = torch.randn(1, 3, 12, 10, 8, dtype=torch.float64) * 0.5
    field = DisplacementField(u, fixed_grid)
    disp = submission_field(field, moving_grid).to_l2r_array()  # (X, Y, Z, 3), i j k
    voxels_zyx = np.argwhere(np.ones(fixed_grid.shape)).astype(np.float64)[::37]
    moved_zyx = moving_grid.world_to_voxel(field.transform_points(fixed_grid.voxel_to_world(voxels_zyx)))
    ijk = voxels_zyx[:, ::-1].astype(int)
    assert np.abs(ijk + disp[ijk[:, 0], ijk[:, 1], ijk[:, 2]] - moved_zyx[:, ::-1]).max() < 1e-9
    assert submission_field(field, fixed_grid) is field


# ---------------------------------------------------------------------- run end to end
@pytest.mark.slow
def test_run_resume_failure_and_evaluate(run_cli, task, tmp_path, monkeypatch, capsys):
    """run --pair, then the whole split (one pair broken): finished pair skipped, broken one isolated;
    evaluate reproduces the run's numbers and graphreg's own TRE."""
    path = copy_task(task, tmp_path)
    broken = path.parent / "imagesTr" / "LungCTdemo_0003_0001.nii.gz"
    broken.write_bytes(broken.read_bytes()[:2000])  # the header reads, the image does not
    out = tmp_path / "run"
    first = run_l2r(path, out, config=FAST, pairs=["0001_0001"], keep_results=True)
    assert [r["status"] for r in first.rows] == ["ok"]
    disp = out / "submission" / "disp_0001_0001.nii.gz"
    stamp = disp.stat().st_mtime_ns
    code, stdout, _ = run_cli(["l2r", "run", path, "--out", out, "--config", fast_yaml(tmp_path), "--keep-results"])
    assert code == 1 and "1 registered, 1 skipped, 1 failed" in stdout
    assert disp.stat().st_mtime_ns == stamp
    summary = {row["id"]: row for row in csv.DictReader((out / "summary.csv").open())}
    assert [summary[i]["status"] for i in ("0001_0001", "0002_0002", "0003_0003")] == ["skipped", "ok", "failed"]
    assert (out / "0003_0003.error.txt").is_file() and not (out / "submission" / "disp_0003_0003.nii.gz").exists()

    image = nib.load(str(out / "submission" / "disp_0002_0002.nii.gz"))
    dataset = read_dataset(path)
    assert image.shape == dataset.shape + (3,) and image.get_data_dtype() == np.float32
    code, stdout, _ = run_cli(["l2r", "evaluate", path, out / "submission", "--json", "--pair", "0001_0001",
                                "--pair", "0002_0002"])
    assert code == 0
    result = json.loads(stdout)
    for pair_id_, row in summary.items():
        if row["status"] == "failed":
            continue
        case = result["cases"][pair_id_]
        assert float(row["TRE_kp"]) == pytest.approx(case["TRE_kp"], rel=1e-5)
        assert float(row["LogJacDetStd"]) == pytest.approx(case["LogJacDetStd"], rel=1e-5)
        assert case["TRE_kp"] < 0.5 * case["TRE_kp_initial"]
        pair = dataset.select([pair_id_])[0]
        own = evaluate_landmarks(pair.fixed_keypoints, pair.moving_keypoints,
                                 field_path=out / "results" / pair_id_ / "field.nii.gz")
        assert case["TRE_kp"] == pytest.approx(own["tre_mean_mm"], abs=0.02)
        assert case["TRE_kp_initial"] == pytest.approx(own["tre_before_mean_mm"], abs=1e-9)
    assert float(summary["0002_0002"]["tre_graphreg_mm"]) == pytest.approx(result["cases"]["0002_0002"]["TRE_kp"],
                                                                           abs=0.02)
    code, _, err = run_cli(["l2r", "run", path, "--out", out, "--config", "lowres_3mm"])
    assert code == 2 and "other settings" in err


def fast_yaml(tmp_path):
    path = tmp_path / "fast.yaml"
    path.write_text("preprocess:\n  spacing_mm: 4.0\ninstance_opt:\n  enabled: false\n")
    return path


def test_cli_help_lists_the_l2r_commands(run_cli, monkeypatch, capsys):
    code, out, _ = run_cli(["l2r", "--help"])
    assert code == 0 and all(name in out for name in ("run", "evaluate", "example"))
