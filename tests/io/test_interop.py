"""Using a result elsewhere: ITK transform files, the inverse, load_result and `graphreg apply`."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from graphreg import load_result
from graphreg.datasets.pairs import read_pair
from graphreg.errors import GeometryError, InputFileError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.io import read_image, read_landmarks, write_image, write_itk_transform, write_landmarks
from graphreg.io.landmarks import Landmarks
from graphreg.result.registration import Registration
from graphreg.core.volume import Volume

from conftest import DEMO_PAIR, grid_centred_on

ROTATION = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
SHIFT_MM = np.array([2.0, -3.0, 4.0])


@pytest.fixture
def fixed_grid() -> Grid:
    return Grid((12, 14, 16), spacing=(1.5, 1.2, 2.0), origin=(10.0, -20.0, 5.0), direction=tuple(ROTATION.ravel()))


@pytest.fixture
def moving_grid(fixed_grid) -> Grid:
    """Another spacing and direction, a bit larger, around the same centre."""
    return grid_centred_on(fixed_grid, (16, 20, 15), (1.6, 1.1, 2.1), (1, 0, 0, 0, 0, -1, 0, 1, 0))


def _image(grid: Grid, function) -> Volume:
    """``function`` of world mm ``(N, 3)`` sampled at every voxel of ``grid``."""
    world = grid.voxel_to_world(np.argwhere(np.ones(grid.shape)).astype(np.float64))
    return Volume(function(world).reshape(grid.shape).astype(np.float32), grid)


def _linear(world):
    return 3.0 * world[:, 0] - 2.0 * world[:, 1] + world[:, 2]


def _registration(field: DisplacementField, moving_grid: Grid) -> Registration:
    moving = _image(moving_grid, _linear)
    return Registration(working_field=field, fixed_grid=field.grid, moving=moving, method="test", config={},
                        timings={"total": 0.0})


@pytest.fixture
def translation(fixed_grid, moving_grid) -> Registration:
    """T(x) = x + SHIFT_MM: analytic in both directions."""
    affine = np.eye(4)
    affine[:3, 3] = SHIFT_MM
    return _registration(DisplacementField.from_affine(affine, fixed_grid, dtype=torch.float64), moving_grid)


@pytest.fixture
def smooth(fixed_grid, moving_grid) -> Registration:
    """A smooth non-linear field (about 1 mm)."""
    generator = torch.Generator().manual_seed(3)
    coarse = 0.5 * torch.randn((1, 3, 3, 4, 4), generator=generator, dtype=torch.float64)
    disp = torch.nn.functional.interpolate(coarse, size=fixed_grid.shape, mode="trilinear", align_corners=True)
    return _registration(DisplacementField(disp, fixed_grid), moving_grid)


def _inner_points(grid: Grid, n: int, seed: int, margin: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return grid.voxel_to_world(rng.uniform(margin, np.array(grid.shape) - 1 - margin, size=(n, 3)))


# ---------------------------------------------------------------------- files
def test_transform_files_map_points_as_transform_points(smooth, tmp_path):
    smooth.save(tmp_path / "out", outputs=("field", "transform", "inverse"))
    forward = sitk.ReadTransform(str(tmp_path / "out" / "transform.h5"))
    inverse = sitk.ReadTransform(str(tmp_path / "out" / "inverse_transform.h5"))
    assert forward.GetName() == inverse.GetName() == "DisplacementFieldTransform"
    points = _inner_points(smooth.fixed_grid, 50, seed=0)
    itk = np.array([forward.TransformPoint(tuple(p)) for p in points])
    assert np.abs(itk - smooth.transform_points(points)).max() < 1e-3
    back = _inner_points(smooth.moving_grid, 50, seed=1)
    itk = np.array([inverse.TransformPoint(tuple(p)) for p in back])
    assert np.abs(itk - smooth.transform_points(back, inverse=True)).max() < 1e-3


def test_transform_file_of_a_coarse_cropped_working_field(fixed_grid, moving_grid, tmp_path):
    """As in the pipeline: the field lives on a coarser working grid cropped to the lungs. ITK maps
    points through transform.h5 as transform_points does, inside the crop and outside it, and
    resamples images as warp does."""
    working = fixed_grid.cropped((2, 3, 3), (10, 12, 13)).with_spacing((2.0, 2.0, 2.0))
    generator = torch.Generator().manual_seed(4)
    disp = torch.randn((1, 3, *working.shape), generator=generator, dtype=torch.float64) * 0.3
    registration = Registration(working_field=DisplacementField(disp, working), fixed_grid=fixed_grid,
                                moving=_image(moving_grid, _linear), method="test", config={}, timings={})
    path = registration.write_transform(tmp_path / "t.h5")
    transform = sitk.ReadTransform(str(path))
    rng = np.random.default_rng(6)
    points = fixed_grid.voxel_to_world(rng.uniform(-0.4, np.array(fixed_grid.shape) - 0.6, size=(300, 3)))
    outside_crop = np.any(np.abs(working.world_to_voxel(points) - (np.array(working.shape) - 1) / 2)
                          > (np.array(working.shape) - 1) / 2, axis=1)
    assert 0.2 < outside_crop.mean() < 0.9
    itk = np.array([transform.TransformPoint(tuple(p)) for p in points])
    assert np.abs(itk - registration.transform_points(points)).max() < 1e-3
    resampled = sitk.Resample(registration.moving.to_sitk(), Volume(np.zeros(fixed_grid.shape), fixed_grid).to_sitk(),
                              transform, sitk.sitkLinear, -1000.0, sitk.sitkFloat64)
    np.testing.assert_allclose(sitk.GetArrayFromImage(resampled), registration.warp(registration.moving).array,
                               atol=1e-3)


def _saved_coarse_registration(fixed_grid, moving_grid, folder):
    """A random working field on a coarse lattice cropped inside ``fixed_grid``, saved with its
    ``field.nii.gz`` into ``folder``; returns the registration and the folder."""
    working = fixed_grid.cropped((2, 3, 3), (10, 12, 13)).with_spacing((2.0, 2.0, 2.0))
    generator = torch.Generator().manual_seed(4)
    disp = torch.randn((1, 3, *working.shape), generator=generator, dtype=torch.float64) * 0.3
    registration = Registration(working_field=DisplacementField(disp, working), fixed_grid=fixed_grid,
                                moving=_image(moving_grid, _linear), method="test", config={}, timings={})
    return registration, registration.save(folder, outputs="field")


def test_ants_reads_the_field_file(fixed_grid, moving_grid, tmp_path):
    """ANTs (antspyx) takes field.nii.gz as a displacement-field transform: images resample as warp,
    points map as transform_points."""
    ants = pytest.importorskip("ants")
    pd = pytest.importorskip("pandas")
    registration, out = _saved_coarse_registration(fixed_grid, moving_grid, tmp_path / "out")
    write_image(registration.moving, tmp_path / "moving.nii.gz")
    write_image(Volume(np.zeros(fixed_grid.shape, np.float32), fixed_grid), tmp_path / "fixed.nii.gz")
    warped = ants.apply_transforms(ants.image_read(str(tmp_path / "fixed.nii.gz")),
                                   ants.image_read(str(tmp_path / "moving.nii.gz")),
                                   transformlist=[str(out / "field.nii.gz")], interpolator="linear", defaultvalue=-1000)
    np.testing.assert_allclose(warped.numpy().transpose(2, 1, 0), registration.warp(registration.moving).array,
                               atol=1e-2)
    points = fixed_grid.voxel_to_world(np.random.default_rng(6).uniform(0, np.array(fixed_grid.shape) - 1, (50, 3)))
    mapped = ants.apply_transforms_to_points(3, pd.DataFrame(points, columns=["x", "y", "z"]),
                                             [str(out / "field.nii.gz")]).to_numpy()
    assert np.abs(mapped - registration.transform_points(points)).max() < 1e-4


def test_transformix_reads_the_field_file(fixed_grid, moving_grid, tmp_path):
    """elastix's transformix takes field.nii.gz (the working lattice covering the fixed image) as a
    DeformationFieldTransform: points map as transform_points, images resample as warp."""
    itk = pytest.importorskip("itk")
    if not hasattr(itk, "TransformixFilter"):
        pytest.skip("itk-elastix is not installed")
    registration, out = _saved_coarse_registration(fixed_grid, moving_grid, tmp_path / "out")
    # elastix lists the direction matrix column by column
    direction = np.asarray(fixed_grid.direction, dtype=np.float64).reshape(3, 3).T.ravel()
    settings = {"Transform": "DeformationFieldTransform", "DeformationFieldFileName": str(out / "field.nii.gz"),
                "DeformationFieldInterpolationOrder": "1", "NumberOfParameters": "0", "FixedImageDimension": "3",
                "MovingImageDimension": "3", "Size": fixed_grid.size_xyz, "Index": (0, 0, 0),
                "Spacing": fixed_grid.spacing, "Origin": fixed_grid.origin, "Direction": direction,
                "UseDirectionCosines": "true", "InitialTransformParametersFileName": "NoInitialTransform",
                "HowToCombineTransforms": "Compose", "ResampleInterpolator": "FinalLinearInterpolator",
                "Resampler": "DefaultResampler", "DefaultPixelValue": "-1000", "FixedInternalImagePixelType": "float",
                "MovingInternalImagePixelType": "float"}
    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap({key: [str(v) for v in np.atleast_1d(value)] for key, value in settings.items()})
    write_image(registration.moving, tmp_path / "moving.nii.gz")
    moving = itk.imread(str(tmp_path / "moving.nii.gz"), itk.F)
    points = fixed_grid.voxel_to_world(np.random.default_rng(6).uniform(0, np.array(fixed_grid.shape) - 1, (50, 3)))
    (tmp_path / "points.txt").write_text(f"point\n{len(points)}\n" + "".join(f"{x} {y} {z}\n" for x, y, z in points))
    transformix = itk.TransformixFilter.New(moving)
    transformix.SetTransformParameterObject(parameters)
    transformix.SetFixedPointSetFileName(str(tmp_path / "points.txt"))
    transformix.SetOutputDirectory(str(tmp_path))
    transformix.SetLogToConsole(False)
    transformix.UpdateLargestPossibleRegion()
    lines = (tmp_path / "outputpoints.txt").read_text().splitlines()
    mapped = np.array([line.split("OutputPoint = [")[1].split("]")[0].split() for line in lines], dtype=float)
    assert np.abs(mapped - registration.transform_points(points)).max() < 1e-4
    np.testing.assert_allclose(itk.array_from_image(transformix.GetOutput()),
                               registration.warp(registration.moving).array, atol=1e-2)

def test_convention_h5_layout_is_itk_displacement_field(smooth, tmp_path):
    """ITK's HDF5 transform: fixed parameters = size, origin, spacing, direction of the field's grid."""
    path = write_itk_transform(smooth.field, tmp_path / "t.h5")
    assert path.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    transform = sitk.DisplacementFieldTransform(sitk.ReadTransform(str(path)))
    grid = smooth.fixed_grid
    expected = (*grid.size_xyz, *grid.origin, *grid.spacing, *grid.direction)
    np.testing.assert_allclose(transform.GetFixedParameters(), expected, atol=1e-9)
    image = transform.GetDisplacementField()
    assert image.GetPixelID() == sitk.sitkVectorFloat64
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), smooth.field.to_mm_array(), atol=1e-12)
    assert smooth.transform_field.grid == grid  # the working grid is the fixed grid here


def test_report_records_moving_grid_and_inverse_accuracy(smooth, tmp_path):
    smooth.save(tmp_path / "out", outputs=("field", "transform", "inverse"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["moving_grid"]["size_xyz"] == list(smooth.moving_grid.size_xyz)
    inverse = report["inverse"]
    assert inverse["solver_max_residual_mm"] < 1e-3
    assert inverse["round_trip_mm"]["region"] == "working grid"
    assert 0 < inverse["round_trip_mm"]["mean"] <= inverse["round_trip_mm"]["max"]
    smooth.save(tmp_path / "plain")
    assert not (tmp_path / "plain" / "inverse_transform.h5").exists()
    assert not (tmp_path / "plain" / "transform.h5").exists()  # opt-in: field.nii.gz is the default copy


def test_load_result_maps_like_the_registration(smooth, tmp_path):
    smooth.save(tmp_path / "out", outputs=("field", "transform", "inverse"))
    result = load_result(tmp_path / "out")
    assert result.fixed_grid.same_as(smooth.fixed_grid) and result.moving_grid.same_as(smooth.moving_grid)
    points = _inner_points(smooth.fixed_grid, 20, seed=2)
    np.testing.assert_allclose(result.transform_points(points), smooth.transform_points(points), atol=1e-4)
    back = _inner_points(smooth.moving_grid, 20, seed=3)
    np.testing.assert_allclose(result.transform_points(back, inverse=True),
                               smooth.transform_points(back, inverse=True), atol=1e-4)
    # without the stored inverse, it is computed on the moving grid of report.json
    (tmp_path / "out" / "inverse_transform.h5").unlink()
    np.testing.assert_allclose(load_result(tmp_path / "out").transform_points(back, inverse=True),
                               smooth.transform_points(back, inverse=True), atol=1e-4)


# ---------------------------------------------------------------------- apply, analytic translation
@pytest.fixture
def translation_dir(translation, tmp_path):
    return translation.save(tmp_path / "result")


@pytest.mark.parametrize("inverse", [False, True])
def test_apply_image_translation(run_cli, translation, translation_dir, tmp_path, monkeypatch, capsys, inverse):
    """Forward: out(x) = M(x + t) on the fixed grid; inverse: out(y) = F(y - t) on the moving grid."""
    source_grid, target_grid = ((translation.fixed_grid, translation.moving_grid) if inverse
                                else (translation.moving_grid, translation.fixed_grid))
    write_image(_image(source_grid, _linear), tmp_path / "in.nii.gz")
    flags = ["--inverse"] if inverse else []
    code, out, err = run_cli(["apply", translation_dir, "--image", tmp_path / "in.nii.gz", "--default", "-5",
                               "--out", tmp_path / "out.nii.gz", *flags])
    assert code == 0, err
    assert ("out(y) = F(y + v(y))" if inverse else "out(x) = M(x + u(x))") in out
    warped = read_image(tmp_path / "out.nii.gz")
    assert warped.grid.same_as(target_grid)
    shift = -SHIFT_MM if inverse else SHIFT_MM
    expected = _image(target_grid, lambda w: _linear(w + shift)).array
    world = target_grid.voxel_to_world(np.argwhere(np.ones(target_grid.shape)).astype(np.float64))
    source = source_grid.world_to_voxel(world + shift).reshape(*target_grid.shape, 3)
    last = np.array(source_grid.shape) - 1
    interior = np.all((source >= 0) & (source <= last), axis=-1)  # linear interpolation is exact there
    outside = np.any((source < -0.5) | (source >= last + 0.5), axis=-1)
    assert 0.2 < interior.mean() and 0.05 < outside.mean()  # both cases are covered
    np.testing.assert_allclose(warped.array[interior], expected[interior], atol=1e-3)
    assert np.all(warped.array[outside] == -5)


@pytest.mark.parametrize("fmt, suffix", [("world", ".csv"), ("dirlab", ".txt"), ("l2r", ".csv")])
@pytest.mark.parametrize("inverse", [False, True])
def test_apply_points_translation(run_cli, translation, translation_dir, tmp_path, monkeypatch, capsys, fmt, suffix,
                                  inverse):
    """Points are pushed: forward p -> p + t (fixed -> moving), inverse q -> q - t; voxel formats
    are read on the grid the points start on and written on the grid they land on."""
    source_grid, target_grid = ((translation.moving_grid, translation.fixed_grid) if inverse
                                else (translation.fixed_grid, translation.moving_grid))
    points = _inner_points(source_grid, 10, seed=4)
    write_landmarks(Landmarks(points, "world"), tmp_path / f"in{suffix}", fmt, grid=source_grid)
    flags = ["--inverse"] if inverse else []
    code, out, err = run_cli(["apply", translation_dir, "--points", tmp_path / f"in{suffix}",
                               "--out", tmp_path / f"out{suffix}", *flags])
    assert code == 0, err
    assert ("q -> q + v(q)" if inverse else "p -> p + u(p)") in out
    moved = read_landmarks(tmp_path / f"out{suffix}", fmt).to_world(target_grid).points
    np.testing.assert_allclose(moved, points + (-SHIFT_MM if inverse else SHIFT_MM), atol=1e-3)


@pytest.mark.parametrize("inverse", [False, True])
def test_apply_labels_no_new_labels(run_cli, translation, translation_dir, tmp_path, monkeypatch, capsys, inverse):
    source_grid = translation.fixed_grid if inverse else translation.moving_grid
    rng = np.random.default_rng(5)
    labels = Volume(rng.choice(np.array([3, 7, 11], dtype=np.uint8), size=source_grid.shape), source_grid)
    write_image(labels, tmp_path / "labels.nii.gz")
    flags = ["--inverse"] if inverse else []
    code, out, err = run_cli(["apply", translation_dir, "--labels", tmp_path / "labels.nii.gz",
                               "--out", tmp_path / "out.nii.gz", *flags])
    assert code == 0, err
    assert "no new labels" in out
    warped = read_image(tmp_path / "out.nii.gz")
    assert warped.array.dtype == np.uint8
    assert set(np.unique(warped.array)) == {0, 3, 7, 11}  # the labels and the outside value, nothing else
    # every warped voxel holds the label of the nearest source voxel to its mapped position
    field = translation.inverse_field() if inverse else translation.field
    centres = warped.grid.voxel_to_world(np.argwhere(warped.array > 0).astype(np.float64))
    position = source_grid.world_to_voxel(field.transform_points(centres))
    clear = np.all(np.abs(position - np.floor(position) - 0.5) > 1e-3, axis=1)  # no ties between two voxels
    assert clear.mean() > 0.5
    source = np.rint(position[clear]).astype(int)
    np.testing.assert_array_equal(labels.array[tuple(source.T)], warped.array[warped.array > 0][clear])


# ---------------------------------------------------------------------- bad input
def test_apply_bad_input_one_line_and_nothing_written(run_cli, translation, translation_dir, tmp_path, monkeypatch,
                                                      capsys):
    write_image(_image(translation.moving_grid, _linear), tmp_path / "in.nii.gz")
    outside = Landmarks(np.array([[1e4, 0.0, 0.0]]), "world")
    write_landmarks(outside, tmp_path / "outside.csv", "world")
    wrong = translation_dir.parent / "wrong"
    translation.save(wrong)
    write_itk_transform(DisplacementField.identity(Grid((5, 5, 5))), wrong / "transform.h5")
    out = tmp_path / "out.nii.gz"
    cases = [
        (["apply", tmp_path / "missing", "--image", tmp_path / "in.nii.gz", "--out", out], "result folder not found"),
        (["apply", wrong, "--image", tmp_path / "in.nii.gz", "--out", out], "covering the fixed grid of report.json"),
        (["apply", translation_dir, "--points", tmp_path / "outside.csv", "--out", tmp_path / "o.csv"],
         "expected points inside the fixed image"),
        (["apply", translation_dir, "--out", out], "expected exactly one of --image, --labels, --points"),
        (["apply", translation_dir, "--image", tmp_path / "in.nii.gz", "--out", tmp_path / "o.png"],
         "expected an image file name"),
        (["apply", translation_dir, "--image", tmp_path / "in.nii.gz", "--interpolation", "cubic", "--out", out],
         "interpolation"),
    ]
    for args, needle in cases:
        code, _, err = run_cli(args)
        assert code == 2, (args, err)
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err
    assert not out.exists() and not (tmp_path / "o.csv").exists() and not (tmp_path / "o.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz", "outside.csv", "result", "wrong"]


def test_load_result_exceptions(translation, tmp_path):
    with pytest.raises(InputFileError, match="no report.json"):
        load_result(tmp_path)
    folder = translation.save(tmp_path / "r", outputs="field,transform")
    for name in ("transform.h5", "field.nii.gz"):
        (folder / name).unlink()
    with pytest.raises(InputFileError, match="no forward field"):
        load_result(folder)
    with pytest.raises(GeometryError, match="expected points inside the moving image"):
        translation.transform_points(np.array([[1e4, 0.0, 0.0]]), inverse=True)


# ---------------------------------------------------------------------- the demo pair
@pytest.mark.slow
def test_demo_motion_round_trip_in_the_lungs():
    """The demo pair's true breathing motion, inverted on the moving grid: round trip in the fixed lungs."""
    pair = read_pair(DEMO_PAIR)
    registration = Registration(working_field=pair.load_gt_field(), fixed_grid=pair.fixed.grid, moving=pair.moving,
                                method="truth", config={}, timings={"total": 0.0}, fixed_lungs=pair.fixed_mask)
    report = registration.inverse_report()
    assert report["round_trip_mm"]["region"] == "fixed lungs"
    assert report["solver_max_residual_mm"] < 1e-3
    assert report["round_trip_mm"]["mean"] < 0.05 and report["round_trip_mm"]["max"] < 2.0
