"""Whole 4D-CT registration (graphreg.analysis.fourd, graphreg 4d): the formulas against analytic answers,
the synthetic breathing cycle's truth, bad input, and one end-to-end run on the demo pair."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from graphreg.datasets.breathing4d import cycle_weights
from graphreg.apps.demo import DEMO_PAIR
from graphreg.errors import GraphregError, InputFileError
from graphreg.core.field import DisplacementField
from graphreg.analysis.fourd import (
    composed_field,
    midposition_image,
    read_phases,
    registration_order,
    trajectories,
    trajectory_rows,
)
from graphreg.core.geometry import Grid
from graphreg.io.images import write_image
from graphreg.core.volume import Volume


@pytest.fixture
def grid() -> Grid:
    return Grid((12, 14, 16), (2.0, 1.5, 2.5), (-10.0, 5.0, 20.0))


def _world(grid: Grid) -> np.ndarray:
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in grid.shape], indexing="ij"), axis=-1)
    return grid.voxel_to_world(index.reshape(-1, 3)).reshape(grid.shape + (3,))


def _field(grid: Grid, mm_of_world) -> DisplacementField:
    """The field whose displacement (world mm) at world point x is ``mm_of_world(x)``."""
    return DisplacementField.from_mm_array(mm_of_world(_world(grid)), grid, dtype=torch.float64)


def _translation(grid: Grid, shift_mm) -> DisplacementField:
    return _field(grid, lambda x: np.broadcast_to(np.asarray(shift_mm, np.float64), x.shape).copy())


def test_registration_order_walks_away_from_the_reference_both_ways():
    assert registration_order(10, 0) == [(1, 0), (9, 0), (2, 1), (8, 9), (3, 2), (7, 8), (4, 3), (6, 7), (5, 4)]
    assert registration_order(5, 2) == [(3, 2), (1, 2), (4, 3), (0, 1)]
    assert registration_order(2, 1) == [(0, 1)]
    for count in range(2, 12):
        for reference in range(count):
            order = registration_order(count, reference)
            done = {reference}
            for phase, neighbour in order:
                assert neighbour in done and abs((phase - neighbour + 1) % count - 1) <= 1
                done.add(phase)
            assert done == set(range(count))
    with pytest.raises(GraphregError, match="reference: expected a phase index 0..3, got 4"):
        registration_order(4, 4)


def test_composition_of_translation_and_scaling_is_exact(grid):
    centre = _world(grid).reshape(-1, 3).mean(axis=0)
    shift = np.array([1.5, -2.0, 0.75])
    residual = _translation(grid, shift)  # T_r(x) = x + a
    neighbour = _field(grid, lambda x: 0.1 * (x - centre))  # T_n(x) = x + 0.1 (x - c)
    composed = composed_field(grid, residual, neighbour)
    x = _world(grid)
    expected = x + shift + 0.1 * (x + shift - centre) - x  # T_n(T_r(x)) - x
    inner = (slice(2, -2),) * 3  # T_r moves the border voxels off the grid, where u_n is extended flat
    assert np.allclose(composed.to_mm_array()[inner], expected[inner], atol=1e-5)
    twice = composed_field(grid, residual, residual)
    assert np.allclose(twice.to_mm_array(), 2 * shift, atol=1e-5)
    larger = Grid((16, 20, 20), (2.0, 1.5, 2.5), (-15.0, -1.0, 14.0))  # not the grid: through world points
    through_world = composed_field(grid, residual, _field(larger, lambda x: 0.1 * (x - centre)))
    assert np.allclose(through_world.to_mm_array(), expected, atol=1e-5)


def test_trajectories_of_uniform_translations_are_exact(grid):
    shifts = [np.zeros(3), np.array([0.0, 1.0, 4.0]), np.array([1.0, 2.0, 8.0]), np.array([0.5, 1.0, 3.0])]
    fields = [None] + [_translation(grid, s) for s in shifts[1:]]
    points = np.array([[0.0, 15.0, 30.0], [5.0, 20.0, 40.0]])
    positions = trajectories(fields, points)
    assert positions.shape == (2, 4, 3)
    assert np.allclose(positions, points[:, None] + np.array(shifts)[None], atol=1e-9)
    rows = trajectory_rows(["a", "b", "c", "d"], positions, reference=0)
    assert len(rows) == 8 and rows[2]["phase"] == "c" and rows[2]["dz"] == pytest.approx(8.0)
    with pytest.raises(GraphregError, match=r"points_mm: expected shape \(P, 3\), got \(3,\)"):
        trajectories(fields, np.zeros(3))


def test_midposition_of_a_symmetric_sinusoid_is_the_reference_shifted_by_the_mean():
    grid = Grid((16, 16, 16), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    count, amplitude = 6, np.array([0.0, 2.0, 6.0])  # mm, along y and z
    shifts = [amplitude * 0.5 * (1 - np.cos(2 * np.pi * i / count)) for i in range(count)]
    mean = np.mean(shifts, axis=0)
    assert np.allclose(mean, amplitude / 2)
    slope = np.array([3.0, -5.0, 7.0])  # a linear image: linear interpolation reproduces it exactly

    def image(shift):  # the reference point p lies at p + shift in this phase
        return Volume((( _world(grid) - shift) @ slope).astype(np.float64), grid)

    phases = [image(s) for s in shifts]
    fields = [None] + [_translation(grid, s) for s in shifts[1:]]
    mid, mean_field = midposition_image(phases, fields, grid)
    assert np.allclose(mean_field.to_mm_array(), mean, atol=1e-5)
    expected = image(mean).array
    inner = (slice(4, -4),) * 3  # away from the border, where shifted samples leave the grid
    assert np.allclose(mid.array[inner], expected[inner], atol=1e-3)
    with pytest.raises(GraphregError, match="fields: expected one per phase"):
        midposition_image(phases, fields[:-1], grid)


def test_cycle_weights_give_hysteresis():
    weights = cycle_weights(8, hysteresis=0.6)
    assert np.allclose(weights[0], 0.0)
    a, b = weights[:, 0], weights[:, 1]
    for i in range(1, 4):  # same diaphragm amplitude at t and 1 - t, different chest position
        assert a[i] == pytest.approx(a[8 - i])
        assert b[i] - b[8 - i] == pytest.approx(0.6 * np.sin(2 * np.pi * i / 8))
    assert np.allclose(cycle_weights(8, 0.0)[:, 0], cycle_weights(8, 0.0)[:, 1])


def _phase_files(tmp_path, grid, count=3):
    paths = []
    rng = np.random.default_rng(0)
    for i in range(count):
        paths.append(write_image(Volume(rng.normal(-500, 200, grid.shape).astype(np.int16), grid),
                                 tmp_path / f"ph{i}.nii.gz"))
    return paths


def test_read_phases_from_files_folder_and_4d_image(tmp_path, grid):
    paths = _phase_files(tmp_path / "folder", grid)
    volumes, names, sources = read_phases(paths)
    assert names == ["ph0", "ph1", "ph2"] and sources == paths
    assert read_phases([tmp_path / "folder"])[1] == names
    stack = sitk.JoinSeries([v.to_sitk() for v in volumes])
    sitk.WriteImage(stack, str(tmp_path / "cine.nii.gz"))
    four, four_names, four_sources = read_phases([tmp_path / "cine.nii.gz"])
    assert four_names == ["phase_00", "phase_01", "phase_02"] and four_sources == [None] * 3
    for a, b in zip(four, volumes):
        assert np.array_equal(a.array, b.array) and a.grid.same_as(b.grid)
    with pytest.raises(InputFileError, match="expected at least 2 phases, got 1"):
        read_phases(paths[:1])
    with pytest.raises(InputFileError, match="phase image not found"):
        read_phases([paths[0], tmp_path / "missing.nii.gz"])


def test_command_bad_input_is_one_line_and_writes_nothing(run_cli, tmp_path, grid):
    paths = _phase_files(tmp_path, grid)
    other = write_image(Volume(np.full((12, 14, 17), -500, np.int16), Grid((12, 14, 17), (2.0, 1.5, 2.5))),
                        tmp_path / "other.nii.gz")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    outside = tmp_path / "points.csv"
    outside.write_text("x,y,z\n1000,0,0\n")
    out = tmp_path / "out"
    cases = [([paths[0], paths[1], other], "phases: expected every phase on the grid of ph0"),
             ([paths[0], broken, paths[1]], "broken.nii.gz"),
             ([*paths, "--points", outside], "points: expected points inside the reference image"),
             ([*paths, "--reference", "7"], "reference: expected a phase index 0..2 or a phase name")]
    for args, message in cases:
        code, _, stderr = run_cli(["4d", *args, "--out", out])
        assert code == 2, stderr
        assert stderr.startswith("error: ") and message in stderr and len(stderr.strip().splitlines()) == 1
        assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.slow
def test_command_end_to_end_on_the_demo_pair(run_cli, tmp_path):
    """Phases fixed, moving, moving, moving (3 mm working grid, short Adam stage, for speed): phase 2
    is warm-started from phase 1, phases 1 and 3 are registered cold; all must follow the demo's
    true landmark motion."""
    fixed, moving = DEMO_PAIR / "fixed.nii.gz", DEMO_PAIR / "moving.nii.gz"
    points = np.loadtxt(DEMO_PAIR / "fixed_landmarks.csv", delimiter=",", skiprows=1)[:12]
    truth = np.loadtxt(DEMO_PAIR / "moving_landmarks.csv", delimiter=",", skiprows=1)[:12]
    csv = tmp_path / "points.csv"
    csv.write_text("x,y,z\n" + "\n".join(",".join(f"{v:.4f}" for v in p) for p in points) + "\n")
    (tmp_path / "fast.yaml").write_text("preprocess:\n  spacing_mm: 3.0\n"
                                        "instance_opt:\n  iterations: 10\n  refine:\n    iterations: 0\n")
    out = tmp_path / "out"
    code, _, stderr = run_cli(["4d", fixed, moving, moving, moving, "--out", out, "--points", csv,
                                    "--midposition", "--ventilation", "--inhale", "fixed", "--config", tmp_path / "fast.yaml",
                                    "--threads", "2", "--outputs", "field,jacobian"])
    assert code is None or code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warm_start"] and summary["phases"] == ["phase_00", "phase_01", "phase_02", "phase_03"]
    assert summary["neighbours"] == {"phase_01": "phase_00", "phase_03": "phase_00", "phase_02": "phase_01"}
    rows = np.genfromtxt(out / "trajectories.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    positions = np.stack([rows["x"], rows["y"], rows["z"]], axis=1).reshape(12, 4, 3)
    before = np.linalg.norm(truth - points, axis=1).mean()
    for phase in (1, 2, 3):
        assert np.linalg.norm(positions[:, phase] - truth, axis=1).mean() < 0.3 * before
    for name in ("trajectories.png", "midposition.nii.gz", "midposition.png", "reference_lungs.nii.gz"):
        assert (out / name).is_file()
    assert len(list(out.glob("phase_0[123]/ventilation/ventilation.json"))) == 3


def test_warm_start_needs_a_keypoint_method_and_the_instance_optimisation(grid):
    from graphreg.analysis.fourd import register_4d

    phases = [Volume(np.full(grid.shape, -500, np.int16), grid)] * 2
    with pytest.raises(GraphregError, match="warm: the warm start runs the keypoint methods' instance optimisation"):
        register_4d(phases, method="demons")
    with pytest.raises(GraphregError, match="warm: the warm start is the instance optimisation"):
        register_4d(phases, config={"instance_opt": {"enabled": False}})
