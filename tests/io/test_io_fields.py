"""Tests of graphreg.io.fields: files other tools read the same way graphreg does."""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from graphreg.errors import GeometryError, InputFileError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.io.fields import (nifti_affine, read_itk_field, read_l2r_displacement, write_itk_field,
                                write_l2r_displacement)

ROTATION = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
    [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


@pytest.fixture
def grid() -> Grid:
    return Grid((7, 8, 9), spacing=(0.75, 1.25, 2.5), origin=(-31.0, 12.5, 140.0),
                direction=tuple(ROTATION.ravel()))


@pytest.fixture
def field(grid) -> DisplacementField:
    generator = torch.Generator().manual_seed(0)
    disp = 2.0 * torch.randn((1, 3, *grid.shape), generator=generator, dtype=torch.float64)
    return DisplacementField(disp, grid)


def _inside_points(grid: Grid, n: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    return grid.voxel_to_world(rng.uniform(0.3, 0.9, size=(n, 3)) * (np.array(grid.shape) - 1))


# ---------------------------------------------------------------------- ITK
@pytest.mark.parametrize("name, precision, atol_mm", [("field.mha", "float64", 1e-10),
                                                       ("field.nii.gz", "float64", 1e-4),
                                                       ("field.mha", None, 1e-5), ("field.nii.gz", None, 1e-4)])
def test_itk_file_maps_points_like_graphreg(tmp_path, field, name, precision, atol_mm):
    """SimpleITK reading the file and graphreg agree on where fixed points go; files are float32
    unless asked otherwise, and ``sitk.DisplacementFieldTransform`` takes them read as float64.

    NIfTI stores spacing and direction in float32, hence the looser tolerance for ``.nii.gz``.
    """
    path = write_itk_field(field, tmp_path / name, **({} if precision is None else {"precision": precision}))
    image = sitk.ReadImage(str(path))
    expected_type = sitk.sitkVectorFloat64 if precision == "float64" else sitk.sitkVectorFloat32
    assert image.GetPixelID() == expected_type and image.GetNumberOfComponentsPerPixel() == 3
    transform = sitk.DisplacementFieldTransform(sitk.ReadImage(str(path), sitk.sitkVectorFloat64))
    points = _inside_points(field.grid, 30)
    expected = np.array([transform.TransformPoint(tuple(p)) for p in points])
    np.testing.assert_allclose(field.transform_points(points), expected, atol=atol_mm)
    back = read_itk_field(path, dtype=torch.float64)
    assert back.grid.same_as(field.grid)
    np.testing.assert_allclose(back.transform_points(points), expected, atol=1e-9)


def test_itk_float32_precision(tmp_path, field):
    path = write_itk_field(field, tmp_path / "field.mha", precision="float32")
    assert sitk.ReadImage(str(path)).GetPixelID() == sitk.sitkVectorFloat32
    back = read_itk_field(path)
    assert back.dtype == torch.float32
    np.testing.assert_allclose(back.to_mm_array(), field.to_mm_array(), atol=1e-5)


def test_itk_exception(tmp_path, field, grid):
    with pytest.raises(InputFileError, match="not found"):
        read_itk_field(tmp_path / "missing.nii.gz")
    with pytest.raises(InputFileError, match="expected one of"):
        write_itk_field(field, tmp_path / "field.txt")
    scalar = sitk.Image(list(grid.size_xyz), sitk.sitkFloat32)
    sitk.WriteImage(scalar, str(tmp_path / "scalar.mha"))
    with pytest.raises(InputFileError, match="3-component vectors"):
        read_itk_field(tmp_path / "scalar.mha")
    bad = field.to_sitk()
    bad.SetPixel(1, 2, 3, (float("nan"), 0.0, 0.0))
    sitk.WriteImage(bad, str(tmp_path / "nan.mha"))
    with pytest.raises(InputFileError, match="1 NaN/Inf"):
        read_itk_field(tmp_path / "nan.mha")
    sitk.WriteImage(bad, str(tmp_path / "nan.nii.gz"))  # ITK alone would read the NaN as 0
    with pytest.raises(InputFileError, match="1 NaN/Inf"):
        read_itk_field(tmp_path / "nan.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(InputFileError, match="broken.nii.gz"):
        read_itk_field(tmp_path / "broken.nii.gz")


@pytest.mark.parametrize("name", ["field.nii", "field.nii.gz"])
def test_truncated_nifti_is_refused(tmp_path, field, name):
    path = write_itk_field(field, tmp_path / name)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) * 2 // 3])
    with pytest.raises(InputFileError, match="truncated"):
        read_itk_field(path)
    l2r = write_l2r_displacement(field, tmp_path / ("disp_" + name))
    content = l2r.read_bytes()
    l2r.write_bytes(content[: len(content) * 2 // 3])
    with pytest.raises(InputFileError, match="truncated"):
        read_l2r_displacement(l2r, field.grid)


# ---------------------------------------------------------------------- Learn2Reg
def test_l2r_round_trip_and_layout(tmp_path, field):
    path = write_l2r_displacement(field, tmp_path / "disp_0001_0001.nii.gz", precision="float64")
    image = nib.load(str(path))
    assert image.shape == (*field.grid.size_xyz, 3)
    data = image.get_fdata()
    disp = field.displacement[0].numpy()
    # index (i, j, k) = (x, y, z); component 0 = x = the last tensor component
    assert data[6, 1, 4, 0] == disp[2, 4, 1, 6] and data[6, 1, 4, 2] == disp[0, 4, 1, 6]
    back = read_l2r_displacement(path, field.grid, dtype=torch.float64)
    torch.testing.assert_close(back.displacement, field.displacement, atol=0, rtol=0)
    single = read_l2r_displacement(write_l2r_displacement(field, tmp_path / "disp_32.nii.gz"), field.grid)
    torch.testing.assert_close(single.displacement, field.displacement.float(), atol=1e-6, rtol=0)


def test_l2r_affine_is_the_fixed_image_geometry(tmp_path, field):
    """SimpleITK reading a NIfTI file with the written affine reports the field's grid (LPS <-> RAS)."""
    path = write_l2r_displacement(field, tmp_path / "disp.nii.gz")
    affine = nib.load(str(path)).affine
    np.testing.assert_allclose(affine, nifti_affine(field.grid), atol=1e-5)
    scalar = nib.Nifti1Image(np.zeros(field.grid.size_xyz, dtype=np.float32), affine)
    scalar.set_qform(affine, code=1)
    scalar.set_sform(affine, code=1)
    nib.save(scalar, str(tmp_path / "scalar.nii.gz"))
    assert Grid.from_sitk(sitk.ReadImage(str(tmp_path / "scalar.nii.gz"))).same_as(field.grid)


def test_l2r_exception(tmp_path, field):
    path = write_l2r_displacement(field, tmp_path / "disp.nii.gz")
    other = Grid((7, 8, 10))
    with pytest.raises(GeometryError, match=r"\(9, 8, 7, 3\).*\(10, 8, 7, 3\)"):
        read_l2r_displacement(path, other)
    with pytest.raises(InputFileError, match="not found"):
        read_l2r_displacement(tmp_path / "none.nii.gz", field.grid)
    with pytest.raises(InputFileError, match="expected one of"):
        write_l2r_displacement(field, tmp_path / "disp.mha")
    nan = np.zeros((*field.grid.size_xyz, 3), dtype=np.float32)
    nan[0, 0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    with pytest.raises(InputFileError, match="NaN"):
        read_l2r_displacement(tmp_path / "nan.nii.gz", field.grid)
