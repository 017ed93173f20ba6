"""Reproducibility: same inputs, config, seed and thread count give bit-identical results on CPU;
another thread count changes the field by at most a measured bound (docs/reproducibility.md).

Runs the keypoint pipeline with instance optimisation (Adam) on a 40 x 44 x 50 crop of the demo
pair twice with one thread and twice with two, and compares the dense fields bit for bit, in
memory and in the written ``field.nii.gz``; ``report.json`` records what is needed to repeat the
run (version, config, seed, device, threads, field checksum). The bound across thread counts is
checked on the whole demo pair at 3 mm, where one and two threads do give different bits.
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from graphreg import __version__
from graphreg.api import register
from graphreg.datasets.pairs import read_pair
from graphreg.apps.demo import DEMO_PAIR
from graphreg.ops.metrics import landmark_errors
from graphreg.result.registration import array_checksum

CONFIG = {"preprocess": {"spacing_mm": 3.0}, "keypoints": {"num_points": 300, "nms_size": 3},
          "levels": [{"radius": 4, "step": 2.0}],
          "instance_opt": {"iterations": 5}, "seed": 7}
CROP = ((20, 20, 10), (60, 64, 60))


@pytest.fixture(scope="module")
def volumes():
    demo = read_pair(DEMO_PAIR)
    return [v.cropped(*CROP) for v in (demo.fixed, demo.moving, demo.fixed_mask, demo.moving_mask)]


def _register(volumes, threads, config=CONFIG):
    return register(*volumes, config=config, device="cpu", threads=threads)


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


def test_two_threads_give_bit_identical_fields_too(volumes):
    first, second = _register(volumes, 2), _register(volumes, 2)
    assert first.extras["threads"] == second.extras["threads"] == 2
    assert np.array_equal(first.field.displacement.numpy(), second.field.displacement.numpy())


#: the whole demo pair at 3 mm with instance optimisation: one and two threads differ in the last bits
THREE_MM = {"preprocess": {"spacing_mm": 3.0}, "keypoints": {"nms_size": 3}, "levels": [{"radius": 6, "step": 2.0}],
            "instance_opt": {"iterations": 5}}
#: largest field difference (mm) between thread counts allowed here: measured 2.9e-6 mm (1 vs 2
#: threads) for THREE_MM; graphreg's 2 mm default on the demo pair: 0.076 mm (docs/reproducibility.md)
THREAD_BOUND_MM = 1e-4


@pytest.mark.slow
def test_thread_count_changes_the_field_within_the_measured_bound():
    demo = read_pair(DEMO_PAIR)
    volumes = (demo.fixed, demo.moving, demo.fixed_mask, demo.moving_mask)
    one, two = (_register(volumes, threads, THREE_MM) for threads in (1, 2))
    difference = np.abs(one.field.to_mm_array() - two.field.to_mm_array()).max()
    assert difference <= THREAD_BOUND_MM
    tre = [landmark_errors(run.transform_points(demo.fixed_landmarks_mm), demo.moving_landmarks_mm).mean()
           for run in (one, two)]
    assert abs(tre[0] - tre[1]) <= THREAD_BOUND_MM


def test_saved_fields_and_reports_are_identical(runs, tmp_path):
    folders = [run.save(tmp_path / f"run{i}") for i, run in enumerate(runs)]
    arrays = [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "field.nii.gz"))) for folder in folders]
    assert np.array_equal(arrays[0], arrays[1])
    reports = [json.loads((folder / "report.json").read_text()) for folder in folders]
    first = reports[0]
    assert first["graphreg_version"] == __version__
    assert first["seed"] == 7 and first["config"]["seed"] == 7
    assert first["device"] == "cpu"
    assert first["threads"] == 1 and first["openmp_wait_policy"]
    assert first["config"]["instance_opt"]["iterations"] == 5
    assert {"python", "torch", "numpy", "simpleitk"} <= set(first)
    # the checksum identifies the (working) field bit for bit: equal for both runs; the file holds float32 mm
    assert first["field_sha256"] == reports[1]["field_sha256"] \
        == array_checksum(runs[0].working_field.displacement.numpy())
    assert np.array_equal(arrays[0], runs[0].field.to_mm_array(np.float32))
    for report in reports:  # everything but the wall-clock times is the same
        for key in ("timings_s", "seconds_total", "write_s"):
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
