"""Reproducibility (issue #8, part 3): same inputs, config and seed give bit-identical results on CPU.

Runs the keypoint pipeline with instance optimisation (Adam) on a 40 x 44 x 50 crop of the demo
pair twice, and once more with another number of CPU threads, and compares the dense fields bit
for bit, in memory and in the written ``field.nii.gz``; ``report.json`` records what is needed
to repeat the run (version, config, seed, device, field checksum).
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from graphreg import __version__
from graphreg.api import register
from graphreg.datasets.pairs import read_pair
from graphreg.demo import DEMO_PAIR
from graphreg.registration import array_checksum

CONFIG = {"preprocess": {"spacing_mm": 3.0}, "keypoints": {"num_points": 300, "nms_size": 3},
          "levels": [{"radius": 4, "step": 2.0}],
          "instance_opt": {"iterations": 5}, "seed": 7}
CROP = ((20, 20, 10), (60, 64, 60))


@pytest.fixture(scope="module")
def volumes():
    demo = read_pair(DEMO_PAIR)
    return [v.cropped(*CROP) for v in (demo.fixed, demo.moving, demo.fixed_mask, demo.moving_mask)]


def _register(volumes, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return register(*volumes, config=CONFIG, device="cpu")
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(volumes):
    return _register(volumes, 1), _register(volumes, 1)


def test_same_inputs_give_bit_identical_fields(runs):
    first, second = runs
    a, b = first.field.displacement.numpy(), second.field.displacement.numpy()
    assert np.abs(a).max() > 0.1  # a real deformation, not a trivial zero field
    assert np.array_equal(a, b)
    assert np.array_equal(first.working_field.displacement.numpy(), second.working_field.displacement.numpy())
    assert np.array_equal(first.keypoints_mm, second.keypoints_mm)
    assert np.array_equal(first.keypoint_displacements_mm, second.keypoint_displacements_mm)


def test_thread_count_does_not_change_the_field(volumes, runs):
    other = _register(volumes, 2)
    assert np.array_equal(other.field.displacement.numpy(), runs[0].field.displacement.numpy())


def test_saved_fields_and_reports_are_identical(runs, tmp_path):
    folders = [run.save(tmp_path / f"run{i}") for i, run in enumerate(runs)]
    arrays = [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "field.nii.gz"))) for folder in folders]
    assert np.array_equal(arrays[0], arrays[1])
    reports = [json.loads((folder / "report.json").read_text()) for folder in folders]
    first = reports[0]
    assert first["graphreg_version"] == __version__
    assert first["seed"] == 7 and first["config"]["seed"] == 7
    assert first["device"] == "cpu"
    assert first["config"]["instance_opt"]["iterations"] == 5
    assert {"python", "torch", "numpy", "simpleitk"} <= set(first)
    # the checksum identifies the (working) field bit for bit: equal for both runs; the file holds float32 mm
    assert first["field_sha256"] == reports[1]["field_sha256"] \
        == array_checksum(runs[0].working_field.displacement.numpy())
    assert np.array_equal(arrays[0], runs[0].field.to_mm_array(np.float32))
    for report in reports:  # everything but the wall-clock times is the same
        for key in ("timings_s", "seconds_total"):
            report.pop(key)
    assert reports[0] == reports[1]


def test_array_checksum_tells_arrays_apart():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert array_checksum(array) == array_checksum(array.copy())
    assert array_checksum(array) != array_checksum(array.reshape(4, 3))  # same bytes, other shape
    assert array_checksum(array) != array_checksum(array.astype(np.float64))
    changed = array.copy()
    changed[2, 3] = np.nextafter(changed[2, 3], np.float32(100))  # one ulp
    assert array_checksum(array) != array_checksum(changed)
    assert array_checksum(array.T) == array_checksum(np.ascontiguousarray(array.T))
