"""Image reading/writing in physical space, input checks, DICOM series and atomic writes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import SimpleITK as sitk

from graphreg.errors import InputFileError
from graphreg.core.geometry import Grid
from graphreg.io import atomic_output, image_info, read_image, write_image
from graphreg.core.volume import Volume


def _rotation_z(degrees: float) -> tuple[float, ...]:
    a = np.deg2rad(degrees)
    return tuple(np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]).ravel())


def _oblique_volume(dtype=np.float32) -> Volume:
    direction = np.array([[0.0, 0.0, 1.0], [np.cos(0.3), -np.sin(0.3), 0.0], [np.sin(0.3), np.cos(0.3), 0.0]])
    grid = Grid((5, 6, 7), spacing=(0.7, 1.3, 2.5), origin=(-12.5, 3.25, 100.0), direction=tuple(direction.ravel()))
    array = np.random.default_rng(1).normal(size=grid.shape).astype(dtype)
    return Volume(array, grid)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".mhd", ".nrrd"])
def test_roundtrip_keeps_geometry(tmp_path, suffix):
    volume = _oblique_volume()
    assert not np.allclose(volume.grid.direction_matrix, np.eye(3))
    path = write_image(volume, tmp_path / f"image{suffix}")
    back = read_image(path)
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.array.dtype == np.float32
    np.testing.assert_allclose(back.grid.spacing, volume.grid.spacing, atol=1e-5)
    np.testing.assert_allclose(back.grid.origin, volume.grid.origin, atol=1e-4)
    np.testing.assert_allclose(back.grid.direction, volume.grid.direction, atol=1e-5)
    assert back.grid.same_as(volume.grid)
    # no temporary files left behind; .mhd keeps its data file next to it
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == (["image.mhd", "image.raw"] if suffix == ".mhd" else [f"image{suffix}"])


def test_roundtrip_integer_type(tmp_path):
    array = np.random.default_rng(2).integers(-1024, 2000, size=(4, 5, 6), dtype=np.int16)
    volume = Volume(array, Grid(array.shape, spacing=(0.9766, 0.9766, 2.0), origin=(-250.0, -164.0, -164.5)))
    back = read_image(write_image(volume, tmp_path / "ct.nii.gz"))
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, array)
    # the same voxel is at the same world position after the round trip
    np.testing.assert_allclose(back.grid.voxel_to_world(np.array([3.0, 4.0, 5.0])), [-250 + 5 * 0.9766, -164 + 4 * 0.9766, -164.5 + 3 * 2.0], atol=1e-4)


def test_dicom_series(tmp_path):
    array = np.random.default_rng(3).integers(-1000, 1000, size=(4, 6, 5), dtype=np.int16)
    spacing, origin, direction = (0.8, 0.9, 2.5), (-20.0, 10.0, 33.0), _rotation_z(30.0)
    _write_dicom_series(tmp_path / "dicom", array, spacing, origin, direction, series_uid="1.2.826.0.1.3680043.2.1125.1")
    volume = read_image(tmp_path / "dicom")
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.grid.spacing, spacing, atol=1e-4)
    np.testing.assert_allclose(volume.grid.origin, origin, atol=1e-3)
    np.testing.assert_allclose(volume.grid.direction, direction, atol=1e-4)


def test_dicom_folder_with_two_series_reads_largest(tmp_path):
    folder = tmp_path / "dicom"
    small = np.zeros((3, 4, 4), dtype=np.int16)
    large = np.full((5, 4, 4), 7, dtype=np.int16)
    _write_dicom_series(folder, small, (1, 1, 1), (0, 0, 0), _rotation_z(0), "1.2.3.4.1", prefix="a")
    _write_dicom_series(folder, large, (1, 1, 2), (0, 0, 0), _rotation_z(0), "1.2.3.4.2", prefix="b")
    with pytest.warns(UserWarning, match="2 DICOM series.*largest, 1.2.3.4.2"):
        volume = read_image(folder)
    assert volume.array.shape == (5, 4, 4)
    assert (volume.array == 7).all()


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing")
    with pytest.raises(InputFileError, match="no DICOM series"):
        read_image(tmp_path)


def _write_dicom_series(folder, array, spacing, origin, direction, series_uid, prefix="slice"):
    folder.mkdir(exist_ok=True)
    d = np.reshape(direction, (3, 3))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    orientation = "\\".join(f"{v:.6f}" for v in (*d[:, 0], *d[:, 1]))
    for k, plane in enumerate(array):
        image = sitk.GetImageFromArray(plane)
        image.SetSpacing(spacing[:2])
        position = np.asarray(origin) + d[:, 2] * spacing[2] * k
        for tag, value in [
            ("0008|0060", "CT"), ("0020|000d", "1.2.3"), ("0020|000e", series_uid),
            ("0020|0037", orientation), ("0020|0032", "\\".join(f"{p:.6f}" for p in position)),
            ("0020|0013", str(k + 1)), ("0018|0050", str(spacing[2])),
            ("0008|0018", f"{series_uid}.{k + 1}"),
        ]:
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(image)


# ---------------------------------------------------------------------- exceptions
def test_missing_file(tmp_path):
    with pytest.raises(InputFileError, match=r"missing\.nii\.gz.*not found"):
        read_image(tmp_path / "missing.nii.gz")


def test_unknown_extension(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(InputFileError, match=r"image\.png.*expected one of"):
        read_image(path)
    with pytest.raises(InputFileError, match="cannot write .png"):
        write_image(_oblique_volume(), path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".nrrd"])
def test_truncated_file(tmp_path, suffix):
    path = write_image(_oblique_volume(), tmp_path / f"image{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(InputFileError, match=re.escape(f"image{suffix}: ") + "(unreadable, corrupt or )?(corrupt or )?truncated"):
        read_image(path)


def test_junk_file(tmp_path):
    for name in ("junk.nii", "junk.mha"):
        (tmp_path / name).write_bytes(b"not an image at all")
        with pytest.raises(InputFileError, match=re.escape(name)):
            read_image(tmp_path / name)


def test_corrupt_gzip(tmp_path):
    path = write_image(_oblique_volume(), tmp_path / "image.nii.gz")
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # the CRC of the gzip trailer
    path.write_bytes(bytes(data))
    with pytest.raises(InputFileError, match="corrupt or truncated gzip"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(tmp_path, bad, suffix):
    # ITK's NIfTI reader silently turns NaN/Inf into 0; the reader must still refuse the file
    array = np.zeros((3, 4, 5), dtype=np.float64)
    array[1, 2, 3] = bad
    array[2, 3, 4] = bad
    path = tmp_path / f"bad{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(InputFileError, match=re.escape(f"bad{suffix}: expected finite intensities, found 2 NaN/Inf")):
        read_image(path)


def test_2d_image(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 7), np.float32)), str(tmp_path / "slice.nii.gz"))
    with pytest.raises(InputFileError, match=r"slice\.nii\.gz: expected a 3D volume.*2D image of size \(7, 6\)"):
        read_image(tmp_path / "slice.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 6, 7), np.float32)), str(tmp_path / "thin.mha"))
    with pytest.raises(InputFileError, match=r"at least 2 voxels per axis.*\(7, 6, 1\)"):
        read_image(tmp_path / "thin.mha")


def test_4d_image(tmp_path):
    sitk.WriteImage(sitk.Image([4, 4, 4, 3], sitk.sitkFloat32), str(tmp_path / "phases.nii.gz"))
    with pytest.raises(InputFileError, match="4D image"):
        read_image(tmp_path / "phases.nii.gz")


def test_vector_image(tmp_path):
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3), str(tmp_path / "field.mha"))
    with pytest.raises(InputFileError, match="expected a scalar image, got 3 components"):
        read_image(tmp_path / "field.mha")


# ---------------------------------------------------------------------- atomic writes, info
def test_failed_write_leaves_target_untouched(tmp_path):
    target = tmp_path / "out.nii.gz"
    target.write_bytes(b"previous content")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]


def test_write_creates_parent_and_replaces(tmp_path):
    volume = _oblique_volume()
    path = tmp_path / "a" / "b" / "image.mha"
    write_image(volume, path)
    write_image(Volume(volume.array * 2, volume.grid), path)
    np.testing.assert_array_equal(read_image(path).array, volume.array * 2)
    assert [p.name for p in path.parent.iterdir()] == ["image.mha"]


def test_image_info():
    array = np.array([[[-1000, 0], [500, 1500]], [[0, 0], [0, 100]]], dtype=np.int16)
    volume = Volume(array, Grid((2, 2, 2), spacing=(0.5, 0.75, 2.0), origin=(1.0, 2.0, 3.0)))
    info = image_info(volume)
    assert info == {
        "size": [2, 2, 2], "shape_zyx": [2, 2, 2], "spacing": [0.5, 0.75, 2.0], "origin": [1.0, 2.0, 3.0],
        "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], "dtype": "int16",
        "min": -1000.0, "max": 1500.0, "mean": 1100.0 / 8,
    }
    json.dumps(info)
    assert image_info(_oblique_volume())["size"] == [7, 6, 5]
