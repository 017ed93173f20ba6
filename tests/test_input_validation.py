"""Input validation at the API and command-line boundary (issue #8, part 1).

Covered here: odd but valid geometry that must be *handled* (left-handed and axis-permuted
directions, sheared directions, extreme anisotropy, images far apart in world space), and bad
input that must be *refused* with a one-line message naming the file or argument (all-ones and
misplaced masks, points outside the image, bad preprocessing values, foreign checkpoints, and the
command-line exit code for bad files and configs). Checks that live elsewhere:
test_io_images (missing/corrupt/truncated/2D/4D/NaN files), test_io_landmarks and test_cli (junk
and mismatched landmark files), test_config (unknown keys, wrong types), test_pipeline_e2e
(empty masks, constant and NaN arrays, images that do not overlap without pre-alignment, masks
on another grid), test_training (checkpoints of another architecture, corrupt checkpoints).

Registrations run on a 40 x 44 x 50 crop of the bundled demo pair with a fast configuration,
single-threaded (about a second each), without instance optimisation unless a test needs it.
"""

import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from graphreg.api import register
from graphreg.apps.cli import main
from graphreg.datasets.pairs import read_pair
from graphreg.apps.demo import DEMO_PAIR
from graphreg.errors import ConfigError, GeometryError, GraphregError, InputFileError, ShapeError
from graphreg.core.geometry import Grid
from graphreg.io.fields import read_itk_field, write_itk_field
from graphreg.io.images import nifti_can_store, write_image
from graphreg.ops.metrics import landmark_errors
from graphreg.core.volume import Volume

FAST = {"preprocess": {"spacing_mm": 3.0}, "keypoints": {"num_points": 300, "nms_size": 3},
        "levels": [{"radius": 4, "step": 2.0}], "instance_opt": {"enabled": False}}
CROP = ((20, 20, 10), (60, 64, 60))


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """graphreg.register and the CLI run with one thread (GRAPHREG_THREADS), torch calls here too."""
    threads, setting = torch.get_num_threads(), os.environ.get("GRAPHREG_THREADS")
    torch.set_num_threads(1)
    os.environ["GRAPHREG_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if setting is None:
        del os.environ["GRAPHREG_THREADS"]
    else:
        os.environ["GRAPHREG_THREADS"] = setting


@pytest.fixture(scope="module")
def pair():
    """Fixed, moving, fixed mask, moving mask (a crop of the demo pair) and the landmark pairs inside it."""
    demo = read_pair(DEMO_PAIR)
    volumes = [v.cropped(*CROP) for v in (demo.fixed, demo.moving, demo.fixed_mask, demo.moving_mask)]
    voxels = volumes[0].grid.world_to_voxel(demo.fixed_landmarks_mm)
    inside = np.all((voxels > 2) & (voxels < np.asarray(volumes[0].grid.shape) - 3), axis=1)
    return volumes, demo.fixed_landmarks_mm[inside], demo.moving_landmarks_mm[inside]


@pytest.fixture(scope="module")
def reference(pair):
    volumes, _, _ = pair
    return register(*volumes, config=FAST, device="cpu")


def _flip_z(volume: Volume) -> Volume:
    """The same physical image stored with the slice axis reversed (a left-handed direction)."""
    grid = volume.grid
    direction = grid.direction_matrix.copy()
    direction[:, 2] *= -1
    origin = grid.voxel_to_world(np.array([[grid.shape[0] - 1, 0.0, 0.0]]))[0]
    return Volume(np.ascontiguousarray(volume.array[::-1]),
                  Grid(grid.shape, grid.spacing, tuple(origin), tuple(direction.ravel())))


def _swap_xy(volume: Volume) -> Volume:
    """The same physical image stored with its x and y axes exchanged (also left-handed)."""
    grid = volume.grid
    direction = grid.direction_matrix[:, [1, 0, 2]]
    sx, sy, sz = grid.spacing
    shape = (grid.shape[0], grid.shape[2], grid.shape[1])
    return Volume(np.ascontiguousarray(volume.array.transpose(0, 2, 1)),
                  Grid(shape, (sy, sx, sz), grid.origin, tuple(direction.ravel())))


def _sheared(volume: Volume) -> Volume:
    """The same voxels on a grid whose x axis leans 11 degrees towards y (non-orthonormal direction)."""
    grid = volume.grid
    return Volume(volume.array, Grid(grid.shape, grid.spacing, grid.origin, (1, 0.2, 0, 0, 1, 0, 0, 0, 1)))


# ------------------------------------------------------------------ geometry that must be handled
def test_convention_left_handed_directions_map_world_points_identically(pair, reference):
    volumes, fixed_mm, _ = pair
    expected = reference.transform_points(fixed_mm)
    for change in (_flip_z, _swap_xy):
        assert np.linalg.det(change(volumes[0]).grid.direction_matrix) == pytest.approx(-1.0)
        both = register(*[change(v) for v in volumes], config=FAST, device="cpu")
        np.testing.assert_allclose(both.transform_points(fixed_mm), expected, atol=1e-3, err_msg=change.__name__)
        moving_only = register(volumes[0], change(volumes[1]), volumes[2], change(volumes[3]), config=FAST,
                               device="cpu")
        np.testing.assert_allclose(moving_only.transform_points(fixed_mm), expected, atol=1e-3,
                                   err_msg=change.__name__)


def test_convention_left_handed_self_registration_is_near_zero(pair, reference):
    volumes, _, _ = pair
    flipped = [_flip_z(volumes[0]), _flip_z(volumes[2])]
    result = register(flipped[0], flipped[0], flipped[1], flipped[1], config=FAST, device="cpu")
    lungs = flipped[1].array > 0
    u_mm = result.field.to_mm_array()[lungs]
    # below half a working voxel (the search steps 2 voxels; the soft correspondences blur a little)
    assert np.linalg.norm(u_mm, axis=1).mean() < 0.5 * FAST["preprocess"]["spacing_mm"]
    # the field is the identity case's, read in the other axis order
    same = register(volumes[0], volumes[0], volumes[2], volumes[2], config=FAST, device="cpu")
    np.testing.assert_allclose(result.field.to_mm_array()[::-1], same.field.to_mm_array(), atol=1e-3)


def test_convention_sheared_direction_is_handled_and_saved_exactly(pair, reference, tmp_path):
    volumes, fixed_mm, _ = pair
    sheared = [_sheared(v) for v in volumes]
    assert not nifti_can_store(sheared[0].grid) and nifti_can_store(volumes[0].grid)
    result = register(*sheared, config=FAST, device="cpu")
    # the working grid keeps the fixed direction, so in voxel terms it is the unsheared problem
    voxels = volumes[0].grid.world_to_voxel(fixed_mm)
    moved_ref = volumes[1].grid.world_to_voxel(reference.transform_points(fixed_mm))
    moved = sheared[1].grid.world_to_voxel(result.transform_points(sheared[0].grid.voxel_to_world(voxels)))
    np.testing.assert_allclose(moved, moved_ref, atol=1e-3)
    # NIfTI would silently replace the shear by a rotation: refused, and results go to .mha
    with pytest.raises(GeometryError, match="orthonormal"):
        write_itk_field(result.field, tmp_path / "field.nii.gz")
    with pytest.raises(GeometryError, match="orthonormal"):
        write_image(sheared[0], tmp_path / "fixed.nii.gz")
    out = result.save(tmp_path / "out")
    assert (out / "field.mha").is_file() and (out / "warped.mha").is_file()
    assert not (out / "field.nii.gz").exists()
    field = read_itk_field(out / "field.mha")
    assert field.grid.same_as(sheared[0].grid)
    probe = sheared[0].grid.voxel_to_world(voxels)
    np.testing.assert_allclose(field.transform_points(probe), result.field.transform_points(probe), atol=1e-3)


def test_extreme_anisotropy_is_handled(pair):
    volumes, fixed_mm, moving_mm = pair
    fixed_grid = volumes[0].grid
    thick = Grid((8, 88, 100), (1.5, 1.5, 15.0), fixed_grid.origin)  # 10:1, like 0.5 x 0.5 x 5 mm
    resampled = [v.resampled(Grid(thick.shape, thick.spacing, v.grid.origin), "nearest" if i > 1 else "linear")
                 for i, v in enumerate(volumes)]
    result = register(*resampled, config=FAST, device="cpu")
    assert result.field.grid.same_as(resampled[0].grid)
    before = landmark_errors(fixed_mm, moving_mm).mean()
    after = landmark_errors(result.transform_points(fixed_mm), moving_mm).mean()
    assert after < 0.6 * before, (before, after)


def test_images_far_apart_are_bridged_by_prealignment(pair, reference):
    volumes, fixed_mm, moving_mm = pair
    shift = np.array([249.0, -120.0, 39.0])  # no overlap at all; whole 3 mm working voxels, like the rounded pre-alignment

    def moved(volume):
        grid = volume.grid
        return Volume(volume.array, Grid(grid.shape, grid.spacing, tuple(np.asarray(grid.origin) + shift),
                                         grid.direction))

    result = register(volumes[0], moved(volumes[1]), volumes[2], moved(volumes[3]), config=FAST, device="cpu")
    np.testing.assert_allclose(result.extras["prealign_translation_mm"],
                               np.asarray(reference.extras["prealign_translation_mm"]) + shift, atol=1e-2)
    np.testing.assert_allclose(result.transform_points(fixed_mm) - shift, reference.transform_points(fixed_mm),
                               atol=1e-2)


# ------------------------------------------------------------------ input that must be refused
def test_exception_masks(pair):
    volumes, _, _ = pair
    fixed, moving, fixed_mask, moving_mask = volumes
    ones = Volume(np.ones(fixed.grid.shape, np.uint8), fixed.grid)
    with pytest.raises(GeometryError, match="fixed_mask: .*covers the whole image"):
        register(fixed, moving, ones, moving_mask, config=FAST)
    with pytest.raises(GeometryError, match="moving_mask: .*covers the whole image"):
        register(fixed, moving, fixed_mask, Volume(np.ones(moving.grid.shape, np.uint8), moving.grid), config=FAST)
    # no air in the moving image: the automatic mask fails, the run goes on and the result is judged
    lines = []
    result = register(fixed, Volume(np.maximum(moving.array, 40), moving.grid), fixed_mask, config=FAST,
                      progress=lines.append)
    assert result.extras["masks"]["fallbacks"][0]["mask"] == "moving_mask" and result.status != "ok"
    assert any(line.startswith("warning: moving_mask: the automatic lung mask failed") for line in lines)
    elsewhere = Grid(fixed.grid.shape, fixed.grid.spacing, (1000.0, 0.0, 0.0))
    with pytest.warns(UserWarning, match="resampling"), \
            pytest.raises(GeometryError, match="moving_mask: expected a lung mask overlapping its image"):
        register(fixed, moving, fixed_mask, Volume(moving_mask.array, elsewhere), config=FAST)


def test_exception_mismatched_dimensionality_and_constant_moving(pair):
    volumes, _, _ = pair
    fixed = volumes[0]
    flat = sitk.GetImageFromArray(np.zeros((30, 40), np.float32))
    with pytest.raises(ShapeError, match="moving: expected a 3D image, got a 2D"):
        register(fixed, flat)
    with pytest.raises(GraphregError, match="moving: the image is constant"):
        register(fixed, Volume(np.full(fixed.grid.shape, -1000.0, np.float32), fixed.grid))


@pytest.mark.parametrize("preprocess, key", [
    ({"spacing_mm": 0.0}, "preprocess.spacing_mm"),
    ({"spacing_mm": float("nan")}, "preprocess.spacing_mm"),
    ({"crop_margin_mm": -1.0}, "preprocess.crop_margin_mm"),
    ({"hu_min": 500.0, "hu_max": 100.0}, "preprocess.hu_max"),
])
def test_exception_preprocess_values(pair, preprocess, key):
    volumes, _, _ = pair
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        register(*volumes, config={"preprocess": preprocess})


def test_exception_points_outside_the_image(pair, reference, tmp_path):
    _, fixed_mm, _ = pair
    outside = np.vstack([fixed_mm[:2], [[1e4, 0.0, 0.0]]])
    with pytest.raises(GeometryError, match=r"points_mm: .*got 1 of 3 outside, e.g. point 2"):
        reference.transform_points(outside)
    with pytest.raises(GeometryError, match="points_mm"):
        reference.transform_points(torch.as_tensor(outside))
    with pytest.raises(ShapeError, match=r"points_mm: expected shape \(N, 3\)"):
        reference.transform_points(fixed_mm[:, :2])
    # inside points still map (border voxels included), tensors stay tensors
    corner = reference.fixed_grid.voxel_to_world(np.array([[0.0, 0.0, 0.0]]))
    assert np.isfinite(reference.transform_points(corner)).all()
    assert isinstance(reference.transform_points(torch.as_tensor(fixed_mm)), torch.Tensor)
    # nothing is written when the landmarks to map are bad
    with pytest.raises(GeometryError):
        reference.save(tmp_path / "out", fixed_landmarks_mm=outside)
    assert not (tmp_path / "out").exists() and not any(tmp_path.iterdir())


def test_checkpoint_versions(tmp_path):
    from graphreg.methods.cnn import VoxelMorph
    from graphreg.training import load_model, save_checkpoint

    path = save_checkpoint(tmp_path / "vxm.pt", VoxelMorph(encoder=(4, 4), decoder=(4, 4, 4), integration_steps=0))
    state = torch.load(path, weights_only=True)
    older = dict(state, graphreg_version="0.0.1")  # same layout written by another release: loads
    torch.save(older, tmp_path / "older.pt")
    assert load_model(tmp_path / "older.pt").architecture == "voxelmorph"
    torch.save(dict(state, format_version=99), tmp_path / "newer.pt")
    with pytest.raises(InputFileError, match="format version 99 is newer .* upgrade graphreg"):
        load_model(tmp_path / "newer.pt")
    for bad in (None, "1", True, 0):
        torch.save(dict(state, format_version=bad), tmp_path / "bad.pt")
        with pytest.raises(InputFileError, match="expected an integer format_version"):
            load_model(tmp_path / "bad.pt")


# ------------------------------------------------------------------ the command line
def _run(args, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["graphreg"] + [str(a) for a in args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err


@pytest.fixture(scope="module")
def files(pair, tmp_path_factory):
    """Good and bad input files for `graphreg register`."""
    folder = tmp_path_factory.mktemp("inputs")
    volumes, _, _ = pair
    fixed = volumes[0]
    paths = {"fixed": write_image(fixed, folder / "fixed.nii.gz"),
             "moving": write_image(volumes[1], folder / "moving.nii.gz"),
             "flat": write_image(Volume(np.zeros(fixed.grid.shape, np.int16), fixed.grid), folder / "flat.nii.gz"),
             "ones": write_image(Volume(np.ones(fixed.grid.shape, np.uint8), fixed.grid), folder / "ones.nii.gz")}
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((30, 40), np.float32)), str(folder / "slice.nii.gz"))
    paths["slice"] = folder / "slice.nii.gz"
    paths["truncated"] = folder / "truncated.nii"
    write_image(fixed, paths["truncated"])
    paths["truncated"].write_bytes(paths["truncated"].read_bytes()[:5000])
    nan = fixed.array.astype(np.float32)
    nan[5, 5, 5] = np.nan
    paths["nan"] = folder / "nan.mha"
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(paths["nan"]))
    paths["fixed_mask"] = write_image(volumes[2], folder / "fixed_mask.nii.gz")
    paths["moving_mask"] = write_image(volumes[3], folder / "moving_mask.nii.gz")
    paths["fast"] = folder / "fast.yaml"
    paths["fast"].write_text(yaml.safe_dump(FAST))
    paths["unknown_key"] = folder / "unknown.yaml"
    paths["unknown_key"].write_text("preprocess:\n  spacing: 3\n")
    paths["wrong_type"] = folder / "wrong.yaml"
    paths["wrong_type"].write_text("keypoints:\n  num_points: many\n")
    paths["junk_landmarks"] = folder / "points.csv"
    paths["junk_landmarks"].write_text("x,y,z\n1,2,3\n4,five,6\n")
    paths["outside_landmarks"] = folder / "outside.csv"
    paths["outside_landmarks"].write_text("x,y,z\n10000,0,0\n")
    return paths


@pytest.mark.parametrize("case, needle", [
    ("missing", "missing.nii.gz: image file or DICOM folder not found"),
    ("truncated", "truncated.nii: truncated NIfTI file"),
    ("slice", "slice.nii.gz: expected a 3D volume"),
    ("nan", "nan.mha: expected finite intensities, found 1 NaN/Inf"),
    ("flat", "fixed: the image is constant"),
    ("moving_slice", "slice.nii.gz: expected a 3D volume"),
    ("ones_mask", "fixed_mask: expected a lung mask, got a mask that covers the whole image"),
    ("unknown_key", "config key 'preprocess.spacing': unknown key"),
    ("wrong_type", "config key 'keypoints.num_points': expected int, got str 'many'"),
    ("junk_landmarks", "points.csv, line 3: expected numbers"),
    ("outside_landmarks", "points_mm: expected points inside the fixed image"),
])
def test_cli_register_bad_input_is_one_line_with_exit_code_2(files, tmp_path, monkeypatch, capsys, case, needle):
    fixed, moving, extra = files["fixed"], files["moving"], []
    if case in ("missing", "truncated", "slice", "nan", "flat"):
        fixed = files.get(case, tmp_path / "missing.nii.gz")
    elif case == "moving_slice":
        moving = files["slice"]
    elif case == "ones_mask":
        extra = ["--fixed-mask", files["ones"], "--moving-mask", files["moving_mask"]]
    elif case in ("unknown_key", "wrong_type"):
        extra = ["--config", files[case]]
    elif case == "junk_landmarks":
        extra = ["--landmarks", files[case]]
    else:  # a full registration runs first (the CLI checks the points when it writes the result)
        extra = ["--landmarks", files[case], "--fixed-mask", files["fixed_mask"], "--moving-mask",
                 files["moving_mask"], "--config", files["fast"]]
    out = tmp_path / "out"
    code, err = _run(["register", fixed, moving, "--out", out, "--device", "cpu"] + extra, monkeypatch, capsys)
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], err
    assert "Traceback" not in err
    assert not out.exists()
