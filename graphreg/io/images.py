"""Reading and writing 3D images with their physical geometry.

Formats: NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mha``, ``.mhd``), NRRD (``.nrrd``,
``.nhdr``), a folder holding a DICOM series, and DIR-Lab's headerless ``.img``. All but the last
go through SimpleITK, so spacing, origin and direction are those ITK reports.

Convention:
    The returned :class:`~graphreg.core.volume.Volume` holds the voxels as ``(z, y, x)`` in the file's
    own pixel type and the geometry in ``(x, y, z)`` order, world axes LPS (ITK). Every image that
    enters the library is checked here: 3D, scalar, at least two voxels along each axis, all values
    finite.
"""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from graphreg.errors import GeometryError, InputFileError
from graphreg.core.geometry import Grid
from graphreg.core.volume import Volume
from graphreg.io.atomic import atomic_output
from graphreg.io.dirlab import DirlabCase, read_dirlab_raw, write_dirlab_raw
from graphreg.io.nifti_stream import write_nifti_chunks

#: File name endings read and written through SimpleITK.
SITK_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
#: File name ending of DIR-Lab raw images.
DIRLAB_SUFFIX = ".img"


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in SITK_SUFFIXES + (DIRLAB_SUFFIX,):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _unsupported(path: Path, what: str) -> InputFileError:
    known = ", ".join(SITK_SUFFIXES + (DIRLAB_SUFFIX,))
    return InputFileError(f"{path}: cannot {what} {_suffix(path) or 'files without extension'}; "
                          f"expected one of {known} or a DICOM series folder")


def scan_nifti(path: Path, what: str = "intensities") -> None:
    """Check a NIfTI file's voxel data before ITK reads it (``what`` names the values in errors).

    ITK's NIfTI reader hides two defects instead of failing: it fills the missing part of a
    truncated file with zeros, and it replaces NaN/Inf voxels by 0. So the voxel bytes are counted
    here against the header, float voxels are checked for NaN/Inf, and a ``.nii.gz`` stream is
    decompressed to its end (which also verifies its checksum). One pass; integer ``.nii`` files
    only need their size compared.
    """
    import nibabel as nib

    try:
        proxy = nib.load(str(path)).dataobj  # header only; the voxels are not read
        offset, dtype = int(proxy.offset), np.dtype(proxy.dtype)
        expected = int(np.prod(proxy.shape, dtype=np.int64)) * dtype.itemsize
    except Exception as error:  # nibabel raises many types for a bad header
        raise InputFileError(f"{path}: unreadable, corrupt or truncated NIfTI file ({error})") from error
    compressed = path.name.lower().endswith(".gz")
    floating = dtype.kind == "f"
    if not compressed and not floating:
        actual = path.stat().st_size - offset
        bad = 0
    else:
        actual, bad, pending = 0, 0, b""
        try:
            with (gzip.open(path, "rb") if compressed else open(path, "rb")) as stream:
                stream.seek(offset)
                while actual < expected and (chunk := stream.read(min(1 << 22, expected - actual))):
                    actual += len(chunk)
                    if floating:
                        data = pending + chunk
                        usable = len(data) - len(data) % dtype.itemsize
                        values = np.frombuffer(data[:usable], dtype)
                        bad += values.size - int(np.count_nonzero(np.isfinite(values)))
                        pending = data[usable:]
                while compressed and stream.read(1 << 22):
                    pass
        except (OSError, EOFError, zlib.error) as error:
            kind = "gzip data" if compressed else "voxel data"
            raise InputFileError(f"{path}: corrupt or truncated {kind} ({error})") from error
    if actual < expected:
        raise InputFileError(f"{path}: truncated NIfTI file, expected {expected} bytes of voxel "
                             f"data after the {offset}-byte header, got {max(actual, 0)}")
    if bad:
        raise InputFileError(f"{path}: expected finite {what}, found {bad} NaN/Inf voxels")


def _read_dicom_series(folder: Path) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputFileError(f"{folder}: folder holds no DICOM series")
    files = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series}
    chosen = max(series, key=lambda sid: len(files[sid]))
    if len(series) > 1:
        counts = ", ".join(f"{sid} ({len(files[sid])} files)" for sid in series)
        warnings.warn(f"{folder}: {len(series)} DICOM series found: {counts}; reading the largest, "
                      f"{chosen}", UserWarning, stacklevel=3)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files[chosen])
    return reader.Execute()


def _validate(image: sitk.Image, source: Path) -> Volume:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputFileError(f"{source}: expected a scalar image, got "
                             f"{image.GetNumberOfComponentsPerPixel()} components per voxel")
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise InputFileError(f"{source}: expected a 3D volume with at least 2 voxels per axis, "
                             f"got a {image.GetDimension()}D image of size {image.GetSize()}")
    volume = Volume.from_sitk(image)
    _check_values(volume.array, source)
    return volume


def _check_values(array: np.ndarray, source: Path) -> None:
    if array.dtype.kind in "fc":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise InputFileError(f"{source}: expected finite intensities, found {bad} NaN/Inf voxels")


def read_image(path: str | os.PathLike, *, dirlab_case: str | DirlabCase | None = None,
               dims_xyz: Sequence[int] | None = None,
               spacing_xyz: Sequence[float] | None = None) -> Volume:
    """Read a 3D scalar image with its geometry.

    Args:
        path: an image file (``.nii``, ``.nii.gz``, ``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``,
            DIR-Lab ``.img``) or a folder with a DICOM series. A folder with several series is read
            as its largest series, with a warning. An ``.img`` file with an Analyze ``.hdr`` next
            to it is read by SimpleITK unless DIR-Lab geometry is passed.
        dirlab_case, dims_xyz, spacing_xyz: geometry of a DIR-Lab ``.img`` file (see
            :func:`graphreg.io.dirlab.read_dirlab_raw`); ignored for other formats. Without them
            the case is taken from the file name.

    Shapes:
        returns: :class:`~graphreg.core.volume.Volume` with array ``(z, y, x)`` in the file's pixel type.

    Raises:
        InputFileError: the path is missing, of an unknown format, unreadable, corrupt or
            truncated, not a 3D scalar volume (2D, 4D, vector images), or holds NaN/Inf voxels.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: image file or DICOM folder not found")
    if path.is_dir():
        try:
            image = _read_dicom_series(path)
        except RuntimeError as error:
            raise InputFileError(f"{path}: cannot read the DICOM series ({error})") from error
        return _validate(image, path)
    suffix = _suffix(path)
    if suffix == DIRLAB_SUFFIX:
        analyze_header = path.with_suffix(".hdr").is_file()
        if not analyze_header or dirlab_case is not None or dims_xyz is not None:
            return read_dirlab_raw(path, dirlab_case, dims_xyz, spacing_xyz)
    elif suffix not in SITK_SUFFIXES:
        raise _unsupported(path, "read")
    if suffix in (".nii", ".nii.gz"):
        scan_nifti(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputFileError(f"{path}: unreadable, corrupt or truncated image ({error})") from error
    return _validate(image, path)


def write_image(volume: Volume, path: str | os.PathLike) -> Path:
    """Write ``volume`` with its geometry, atomically (a temporary file is renamed at the end).

    The format follows the extension: ``.nii``, ``.nii.gz``, ``.mha``, ``.mhd`` (+ ``.raw``),
    ``.nrrd``, ``.nhdr`` through SimpleITK (``.mha`` and ``.nrrd`` compressed; NIfTI with SimpleITK's
    header and layout but a faster gzip, :mod:`graphreg.io.nifti_stream`), or DIR-Lab ``.img``
    (voxels only, as ``int16``; see :func:`graphreg.io.dirlab.write_dirlab_raw`).

    Returns:
        ``Path(path)``.

    Raises:
        InputFileError: the extension is not one of the above.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix == DIRLAB_SUFFIX:
        return write_dirlab_raw(volume, path)
    if suffix not in SITK_SUFFIXES:
        raise _unsupported(path, "write")
    if suffix in (".nii", ".nii.gz") and nifti_can_store(volume.grid):  # ITK's layout, fast gzip
        return write_nifti_chunks(path, volume.grid, volume.array.dtype, 1, [volume.array])
    return write_sitk_image(volume.to_sitk(), path, "image")


#: largest deviation of ``D^T D`` from the identity that NIfTI stores without changing the direction
_ORTHONORMAL_TOLERANCE = 1e-4


def nifti_can_store(grid: Grid) -> bool:
    """Whether NIfTI keeps ``grid``'s direction exactly: only orthonormal directions (rotations and
    reflections) fit its header. ITK silently replaces any other direction (a shear, e.g. from a tilted
    CT gantry, or non-unit columns) by a nearby rotation; such grids must be written as ``.mha`` /
    ``.nrrd``, which store any invertible direction."""
    direction = grid.direction_matrix
    return bool(np.abs(direction.T @ direction - np.eye(3)).max() <= _ORTHONORMAL_TOLERANCE)


def write_sitk_image(image: sitk.Image, path: Path, what: str) -> Path:
    """Write a SimpleITK image atomically (compressed for ``.mha`` / ``.nrrd``); errors name ``path``.

    Raises:
        GeometryError: a NIfTI file is asked for an image whose direction is not orthonormal
            (see :func:`nifti_can_store`).
        InputFileError: SimpleITK cannot write the file.
    """
    if _suffix(path) in (".nii", ".nii.gz") and image.GetDimension() == 3 \
            and not nifti_can_store(Grid.from_sitk(image)):
        raise GeometryError(f"{path}: NIfTI stores only orthonormal directions, the {what} has direction "
                            f"{tuple(round(d, 6) for d in image.GetDirection())}; write .mha or .nrrd instead")
    compress = _suffix(path) in (".mha", ".nrrd")
    with atomic_output(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        except RuntimeError as error:
            raise InputFileError(f"{path}: SimpleITK could not write the {what} ({error})") from error
    return path


def image_info(volume: Volume) -> dict:
    """A JSON-ready summary of ``volume`` (for ``graphreg info``).

    Returns:
        ``{"size": [x, y, z], "shape_zyx": [z, y, x], "spacing": [mm x3], "origin": [mm x3],
        "direction": [9 floats, row-major], "dtype": str, "min": float, "max": float,
        "mean": float}`` with geometry in SimpleITK's ``(x, y, z)`` order.
    """
    grid: Grid = volume.grid
    array = volume.array
    return {
        "size": list(grid.size_xyz),
        "shape_zyx": list(grid.shape),
        "spacing": list(grid.spacing),
        "origin": list(grid.origin),
        "direction": list(grid.direction),
        "dtype": str(array.dtype),
        "min": float(array.min()),
        "max": float(array.max()),
        "mean": float(array.mean(dtype=np.float64)),
    }
