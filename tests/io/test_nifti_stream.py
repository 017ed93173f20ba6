"""Tests of graphreg.io.nifti_stream: NIfTI files byte-equal (uncompressed) to SimpleITK's own."""

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.core.volume import Volume
from graphreg.errors import GeometryError, ShapeError
from graphreg.io.fields import write_itk_field
from graphreg.io.images import write_image
from graphreg.io.nifti_stream import nifti_header, write_nifti_chunks

ROTATION = np.array([[0.0, 0.6, 0.8], [0.0, -0.8, 0.6], [-1.0, 0.0, 0.0]])


@pytest.fixture(params=["identity", "rotated"])
def grid(request) -> Grid:
    direction = np.eye(3) if request.param == "identity" else ROTATION
    return Grid((5, 6, 7), spacing=(0.7, 1.3, 2.5), origin=(-20.5, 3.25, 101.0), direction=tuple(direction.ravel()))


def _sitk_bytes(image: sitk.Image, tmp_path) -> bytes:
    path = tmp_path / "sitk.nii"
    sitk.WriteImage(image, str(path), useCompression=False)
    return path.read_bytes()


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64])
def test_image_decompresses_to_the_bytes_simpleitk_writes(tmp_path, grid, dtype):
    array = (np.random.default_rng(0).normal(size=grid.shape) * 50).astype(dtype)
    volume = Volume(array, grid)
    path = write_image(volume, tmp_path / "image.nii.gz")
    assert gzip.decompress(path.read_bytes()) == _sitk_bytes(volume.to_sitk(), tmp_path)
    back = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)
    assert Grid.from_sitk(back).same_as(grid)
    assert write_image(volume, tmp_path / "plain.nii").read_bytes() == _sitk_bytes(volume.to_sitk(), tmp_path)


def test_equal_images_give_equal_compressed_files(tmp_path, grid, monkeypatch):
    import time

    volume = Volume(np.arange(np.prod(grid.shape), dtype=np.int16).reshape(grid.shape), grid)
    first = write_image(volume, tmp_path / "a" / "image.nii.gz").read_bytes()
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 3600.0)  # an hour later: the gzip header holds no time
    assert write_image(volume, tmp_path / "b" / "image.nii.gz").read_bytes() == first


def test_field_decompresses_to_the_bytes_simpleitk_writes(tmp_path, grid):
    """Vector images: ITK's 5D layout (component by component) and header, values of to_mm_array."""
    disp = torch.randn((1, 3, *grid.shape), generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    field = DisplacementField(3.0 * disp, grid)
    path = write_itk_field(field, tmp_path / "field.nii.gz")
    image = sitk.GetImageFromArray(field.to_mm_array(np.float32), isVector=True)
    grid.apply_to_sitk(image)
    expected, written = _sitk_bytes(image, tmp_path), gzip.decompress(path.read_bytes())
    offset = len(nifti_header(grid, np.float32, 3))
    assert written[:offset] == expected[:offset]
    np.testing.assert_allclose(np.frombuffer(written[offset:], np.float32),  # float32 products, not float64
                               np.frombuffer(expected[offset:], np.float32), rtol=1e-6, atol=1e-6)
    loaded = nib.load(str(path))  # any gzip reader: nibabel sees ITK's (X, Y, Z, 1, 3) vector intent
    assert loaded.shape == (*grid.size_xyz, 1, 3) and loaded.header.get_intent()[0] == "vector"


def test_header_is_simpleitks_for_a_big_grid(tmp_path):
    """Only the sizes differ from the one-voxel image's header; ITK's own header for a full-size
    image is the same."""
    grid = Grid((40, 300, 70), spacing=(2.0, 0.9765625, 0.9765625), origin=(-250.0, -250.0, -300.0))
    image = sitk.Image(list(grid.size_xyz), sitk.sitkInt16)
    grid.apply_to_sitk(image)
    data = _sitk_bytes(image, tmp_path)
    header = nifti_header(grid, np.int16)
    assert data[:len(header)] == header and len(data) == len(header) + 2 * 40 * 300 * 70


def test_wrong_chunks_write_nothing(tmp_path, grid):
    target = tmp_path / "x.nii.gz"
    with pytest.raises(ShapeError, match="expected 210 values, got 209"):
        write_nifti_chunks(target, grid, np.float32, 1, [np.zeros(209, np.float32)])
    with pytest.raises(ShapeError, match="expected chunks of float32, got float64"):
        write_nifti_chunks(target, grid, np.float32, 1, [np.zeros(210, np.float64)])
    assert list(tmp_path.iterdir()) == []


def test_sizes_beyond_nifti1_are_refused():
    with pytest.raises(GeometryError, match="at most 32767"):
        nifti_header(Grid((2, 2, 40000)), np.uint8)
