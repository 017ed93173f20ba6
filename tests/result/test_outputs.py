"""Result folders appear whole or not at all; fields resample between grids in physical space."""

import numpy as np
import pytest
import torch

from graphreg.errors import GraphregError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.io.outputs import ResultDirectory
from graphreg.result.registration import resample_field


def test_result_directory_publishes_on_success(tmp_path):
    out = tmp_path / "result"
    with ResultDirectory(out) as staging:
        (staging / "report.json").write_text("{}")
        assert not out.exists()
    assert (out / "report.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["result"]


def test_result_directory_interrupted_leaves_nothing(tmp_path):
    out = tmp_path / "result"
    with pytest.raises(KeyboardInterrupt):
        with ResultDirectory(out) as staging:
            (staging / "field.nii.gz").write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_result_directory_refuses_to_overwrite(tmp_path):
    out = tmp_path / "result"
    out.mkdir()
    (out / "report.json").write_text("old")
    with pytest.raises(GraphregError, match="overwrite"):
        with ResultDirectory(out):
            pass
    assert (out / "report.json").read_text() == "old"
    with ResultDirectory(out, overwrite=True) as staging:
        (staging / "report.json").write_text("new")
    assert (out / "report.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_resample_field_keeps_physical_displacement():
    source_grid = Grid((12, 14, 16), (2.0, 2.0, 2.0), (-10.0, -5.0, 3.0))
    target_grid = Grid((30, 9, 30), (0.7, 3.0, 1.0), (-8.0, 20.0, 5.0),
                       (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    # an affine world displacement u(p) = B p + c is reproduced exactly by trilinear sampling
    matrix = np.eye(4)
    matrix[:3, :3] += np.array([[0.02, 0.01, 0.0], [0.0, -0.03, 0.01], [0.01, 0.0, 0.02]])
    matrix[:3, 3] = [1.5, -2.0, 0.5]
    source = DisplacementField.from_affine(matrix, source_grid, dtype=torch.float64)
    resampled = resample_field(source, target_grid)
    points = np.array([[0.0, 5.0, 10.0], [5.0, 10.0, 15.0], [-2.0, 12.0, 14.0]])  # deep inside both grids
    expected = points @ matrix[:3, :3].T + matrix[:3, 3]
    np.testing.assert_allclose(resampled.transform_points(points), expected, atol=1e-9)


# ---------------------------------------------------------------------- output kinds of Registration.save
import json  # noqa: E402

import nibabel as nib  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from graphreg.result.output_kinds import DEFAULT_OUTPUTS, OUTPUT_KINDS, parse_outputs  # noqa: E402
from graphreg.result.registration import Registration  # noqa: E402
from graphreg.core.spatial import sample_points  # noqa: E402
from graphreg.core.volume import Volume  # noqa: E402


def _registration() -> Registration:
    """A small registration: a smooth working field inside a larger, finer fixed grid."""
    fixed_grid = Grid((14, 16, 18), (1.5, 1.25, 2.0), origin=(-10.0, 5.0, 2.0))
    working_grid = Grid((9, 10, 9), (2.0, 2.0, 2.0), origin=(-7.0, 8.0, 4.0))
    z, y, x = torch.meshgrid(*[torch.linspace(0, 1, n) for n in working_grid.shape], indexing="ij")
    disp = torch.stack([0.5 * torch.sin(3 * x), 0.3 * y * z, -0.4 * torch.cos(2 * z)])[None]
    rng = np.random.default_rng(0)
    moving = Volume(rng.normal(size=fixed_grid.shape).astype(np.float32), fixed_grid)
    points = fixed_grid.voxel_to_world(rng.uniform(2, 8, size=(5, 3)))
    return Registration(DisplacementField(disp, working_grid), fixed_grid, moving, "corrfield", {"seed": 0},
                        {"total": 1.0}, keypoints_mm=points, keypoint_displacements_mm=np.zeros((5, 3)),
                        keypoint_uncertainty_mm=np.ones(5))


def test_parse_outputs_table():
    assert parse_outputs(None) == DEFAULT_OUTPUTS == ("field", "warped", "jacobian", "valid_mask", "keypoints")
    assert parse_outputs("all") == tuple(OUTPUT_KINDS)
    assert parse_outputs("keypoints, field,field") == ("field", "keypoints")
    assert parse_outputs(["l2r"]) == ("l2r",)


@pytest.mark.parametrize("bad, message", [("field,warp", "got 'warp'"), ("", "at least one"), ([3], "names from")])
def test_parse_outputs_exception(bad, message):
    with pytest.raises(GraphregError, match=message):
        parse_outputs(bad)


def test_save_writes_the_chosen_outputs_in_float32(tmp_path):
    result = _registration()
    out = result.save(tmp_path / "all", outputs="all", started=0.0)
    report = json.loads((out / "report.json").read_text())
    names = ["disp_l2r.nii.gz", "field.nii.gz", "field_fixed_grid.nii.gz", "inverse_transform.h5", "keypoints.csv",
             "report.json", "transform.h5", "uncertainty.nii.gz", "warped.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == names and report["files"] == names
    assert report["outputs"] == list(OUTPUT_KINDS) == list(report["write_s"])
    assert sitk.ReadImage(str(out / "field.nii.gz")).GetPixelID() == sitk.sitkVectorFloat32
    assert sitk.ReadImage(str(out / "field_fixed_grid.nii.gz")).GetPixelID() == sitk.sitkVectorFloat32
    assert nib.load(str(out / "disp_l2r.nii.gz")).get_data_dtype() == np.float32
    assert report["jacobian"]["grid"] == "working" and report["jacobian"]["shape_zyx"] == [9, 10, 9]
    assert report["seconds_wall"] >= report["timings_s"]["write"] > 0
    only = result.save(tmp_path / "some", outputs=["keypoints"])
    report = json.loads((only / "report.json").read_text())
    assert sorted(p.name for p in only.iterdir()) == ["keypoints.csv", "report.json"]
    assert "jacobian" not in report and "seconds_wall" not in report


def test_save_exception_writes_nothing(tmp_path, monkeypatch):
    result = _registration()
    with pytest.raises(GraphregError, match="got 'warp'"):
        result.save(tmp_path / "bad", outputs="field,warp")
    assert list(tmp_path.iterdir()) == []

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setitem(OUTPUT_KINDS, "keypoints", OUTPUT_KINDS["keypoints"].__class__("keypoints", True, "", broken))
    with pytest.raises(OSError, match="disk full"):
        result.save(tmp_path / "half", outputs="field,keypoints")
    assert list(tmp_path.iterdir()) == []  # field.nii.gz was written, then removed with its staging folder


def test_resample_field_axis_by_axis_equals_trilinear_sampling():
    """Parallel grids take the per-axis path; it equals sampling every target voxel (border-clamped)."""
    result = _registration()
    source, target = result.working_field, result.fixed_grid
    fast = resample_field(source, target).displacement
    offset, steps = target.voxel_map_to(source.grid)
    assert np.allclose(steps, np.diag(np.diag(steps)))
    voxels = torch.as_tensor(target.world_to_voxel(target.voxel_to_world(
        np.stack(np.meshgrid(*[np.arange(n) for n in target.shape], indexing="ij"), -1).reshape(-1, 3))))
    points = torch.as_tensor(offset) + voxels @ torch.as_tensor(steps)
    vectors = torch.as_tensor(target.mm_vectors_to_voxel(source.grid.voxel_vectors_to_mm(np.eye(3))))
    expected = (sample_points(source.displacement.double(), points)[0].T @ vectors).T.reshape(fast.shape)
    torch.testing.assert_close(fast.double(), expected, atol=1e-5, rtol=0)


def test_warp_in_slabs_equals_one_slab(monkeypatch):
    import graphreg.core.field as field_module

    result = _registration()
    field = result.field
    whole = field.warp(result.moving, default=-5.0).array
    monkeypatch.setattr(field_module, "_WARP_CHUNK_VOXELS", 300)
    np.testing.assert_array_equal(field.warp(result.moving, default=-5.0).array, whole)
    assert (whole == -5.0).any() and (whole != -5.0).any()


def test_field_file_is_the_working_lattice_covering_the_fixed_image(tmp_path):
    """field.nii.gz holds the working voxels (no resampling) on a lattice covering the fixed image; ITK
    interpolating it maps points as the registration does, and at the fixed voxels it equals the
    fixed-grid field."""
    from graphreg.io.fields import read_itk_field

    result = _registration()
    out = result.save(tmp_path / "out", outputs="field,field_fixed_grid")
    lattice = read_itk_field(out / "field.nii.gz")
    on_fixed = read_itk_field(out / "field_fixed_grid.nii.gz")
    assert lattice.grid.spacing == result.working_field.grid.spacing
    assert lattice.grid.same_as(result.working_field.grid.extended_to_cover(result.fixed_grid), tol_mm=1e-4)
    assert on_fixed.grid.same_as(result.fixed_grid, tol_mm=1e-4)
    rng = np.random.default_rng(1)
    points = result.fixed_grid.voxel_to_world(rng.uniform(0, 13, size=(50, 3)))
    transform = sitk.DisplacementFieldTransform(sitk.ReadImage(str(out / "field.nii.gz"), sitk.sitkVectorFloat64))
    by_itk = np.array([transform.TransformPoint(tuple(p)) for p in points])
    np.testing.assert_allclose(by_itk, result.transform_points(points), atol=1e-5)
    voxels = result.fixed_grid.voxel_to_world(np.argwhere(np.ones(result.fixed_grid.shape))[::7].astype(float))
    np.testing.assert_allclose(lattice.transform_points(voxels), on_fixed.transform_points(voxels), atol=1e-5)


def test_extend_field_copies_voxels_and_replicates_borders():
    from graphreg.errors import GeometryError
    from graphreg.result.registration import extend_field

    result = _registration()
    source = result.working_field
    grid = source.grid.extended_to_cover(result.fixed_grid)
    extended = extend_field(source, grid)
    assert extended.grid is grid and torch.equal(extended.displacement, resample_field(source, grid).displacement)
    assert extend_field(source, source.grid) is source
    shifted = Grid(grid.shape, grid.spacing, tuple(np.add(grid.origin, 0.5)), grid.direction)
    with pytest.raises(GeometryError, match="lattice grown by whole voxels"):
        extend_field(source, shifted)


def test_uncertainty_output_is_the_map_on_the_fixed_grid(tmp_path):
    result = _registration()
    result.keypoints_mm = result.working_field.grid.voxel_to_world(
        np.random.default_rng(1).uniform(1, 7, size=(12, 3)))  # inside the working grid, not coplanar
    result.keypoint_displacements_mm, result.keypoint_uncertainty_mm = np.zeros((12, 3)), np.linspace(1, 3, 12)
    out = result.save(tmp_path / "unc", outputs="uncertainty")
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "uncertainty.nii.gz"]
    image = sitk.ReadImage(str(out / "uncertainty.nii.gz"))
    assert image.GetPixelID() == sitk.sitkFloat32
    written = Volume.from_sitk(image)
    assert written.grid.same_as(result.fixed_grid)
    error_map = result.uncertainty_map()
    expected = error_map.resampled(result.fixed_grid, "linear", extrapolate=True).array
    np.testing.assert_allclose(written.array, expected, atol=1e-5)
    assert written.array.min() >= 0 and (written.array > 0).all()  # extrapolated beyond the working grid
    report = json.loads((out / "report.json").read_text())
    assert report["uncertainty_map"]["region"] == "working grid"  # no fixed lungs in this result
    assert report["uncertainty_map"]["predicted"]["mean"] == pytest.approx(float(error_map.array.mean()), rel=1e-5)


def test_uncertainty_output_absent_without_keypoints(tmp_path):
    result = _registration()
    result.method, result.keypoints_mm, result.keypoint_displacements_mm, result.keypoint_uncertainty_mm = \
        "demons", None, None, None
    out = result.save(tmp_path / "none", outputs="field,uncertainty")
    assert sorted(p.name for p in out.iterdir()) == ["field.nii.gz", "report.json"]
    assert "uncertainty_map" not in json.loads((out / "report.json").read_text())
