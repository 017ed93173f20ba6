"""Reading and writing displacement fields in the formats other tools exchange.

Formats:
    - ITK (3D Slicer, ANTs, elastix, SimpleITK): a 3-component vector image on the fixed grid,
      displacement in world mm along the LPS axes ``(x, y, z)``, written by SimpleITK
      (``.nii.gz``/``.nii`` as a NIfTI vector image, intent code 1007; ``.mha``/``.mhd``/
      ``.nrrd``/``.nhdr``), float32 by default; NIfTI files are written by
      :mod:`graphreg.io.nifti_stream` (ITK's header and layout, a faster gzip).
      ``sitk.DisplacementFieldTransform(sitk.ReadImage(path, sitk.sitkVectorFloat64))`` maps a
      fixed world point to its moving world point (the transform takes float64 fields only).
    - ITK transform file (``.h5``, ITK's HDF5 transform format): a ``DisplacementFieldTransform``
      holding the same field in float64, for ``sitk.ReadTransform``, ANTs' ``antsApplyTransforms
      -t`` and 3D Slicer. ITK's transform convention is graphreg's field direction: it maps points of
      the transform's (fixed) domain to the other image (moving), and resampling pulls through it.
      Outside its grid ITK's field gives zero displacement (graphreg's readers extend the border).
    - Learn2Reg (``disp_XXXX_YYYY.nii.gz``): a NIfTI array ``(X, Y, Z, 3)`` in the fixed
      image's nibabel array order (ITK index order ``i, j, k = x, y, z``), voxel units,
      components in that index order, fixed -> moving; the header carries the fixed image's
      affine (LPS turned into NIfTI's RAS).

Convention:
    Every writer is atomic (:func:`graphreg.io.atomic.atomic_output`); every reader returns a
    :class:`~graphreg.core.field.DisplacementField`.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch

from graphreg.errors import GeometryError, InputFileError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.io.atomic import atomic_output
from graphreg.io.images import SITK_SUFFIXES, nifti_can_store, scan_nifti, write_sitk_image
from graphreg.io.nifti_stream import write_nifti_chunks

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_PRECISIONS = {"float64": np.float64, "float32": np.float32}


def _suffix(path: Path, allowed: tuple[str, ...], what: str) -> str:
    name = path.name.lower()
    for suffix in allowed:
        if name.endswith(suffix):
            return suffix
    raise InputFileError(f"{path}: cannot {what} this file type; expected one of {', '.join(allowed)}")


def _precision(precision: str):
    if precision not in _PRECISIONS:
        raise InputFileError(f"precision: expected one of {sorted(_PRECISIONS)}, got {precision!r}")
    return _PRECISIONS[precision]


def _check_finite_file(path: Path, data: np.ndarray) -> None:
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise InputFileError(f"{path}: expected finite displacements, found {bad} NaN/Inf values")


def nifti_affine(grid: Grid) -> np.ndarray:
    """The ``(4, 4)`` NIfTI (RAS) affine of ``grid`` for nibabel arrays indexed ``(i, j, k) = (x, y, z)``.

    ``sitk.ReadImage`` of a NIfTI file with this affine reports ``grid``'s spacing, origin and
    direction.
    """
    zyx = grid.voxel_to_world_matrix
    affine = zyx.copy()
    affine[:, :3] = zyx[:, [2, 1, 0]]  # columns in index order (x, y, z)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS


# ---------------------------------------------------------------------- ITK
def write_itk_field(field: DisplacementField, path: str | os.PathLike, precision: str = "float32") -> Path:
    """Write ``field`` as an ITK displacement field (world mm, LPS) on its grid, atomically.

    Args:
        field: the displacement field.
        path: ``.nii.gz``, ``.nii``, ``.mha``, ``.mhd``, ``.nrrd`` or ``.nhdr`` (``.mha`` and
            ``.nrrd`` compressed).
        precision: ``"float32"`` (default: what ITK and ANTs write; read it with
            ``sitk.ReadImage(path, sitk.sitkVectorFloat64)`` to build a
            ``sitk.DisplacementFieldTransform``, which takes float64 only) or ``"float64"`` (twice
            the size, slower to write).

    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    suffix = _suffix(path, SITK_SUFFIXES, "write a displacement field to")
    dtype = _precision(precision)
    if suffix in _NIFTI_SUFFIXES and nifti_can_store(field.grid):  # ITK's layout, fast gzip
        return write_nifti_chunks(path, field.grid, dtype, 3, field.mm_component_slabs(dtype), "field")
    image = sitk.GetImageFromArray(field.to_mm_array(dtype), isVector=True)
    field.grid.apply_to_sitk(image)
    return write_sitk_image(image, path, "field")


def read_itk_field(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                   device=None) -> DisplacementField:
    """Read an ITK displacement field (3-component vector image, world mm, LPS).

    Returns:
        A :class:`~graphreg.core.field.DisplacementField` on the file's grid, in voxels. The file is
        read in ``dtype``'s precision (a float64 file read for a float32 field is cast on reading,
        so memory stays about three times the float32 field).

    Raises:
        InputFileError: missing, unreadable or truncated file, not a 3D image of 3-vectors, or
            NaN/Inf values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: displacement field file not found")
    suffix = _suffix(path, SITK_SUFFIXES, "read a displacement field from")
    if suffix in _NIFTI_SUFFIXES:
        scan_nifti(path, "displacements")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 3:
            raise InputFileError(
                f"{path}: expected a 3D image of 3-component vectors (mm), got a {reader.GetDimension()}D "
                f"image with {reader.GetNumberOfComponents()} components per voxel"
            )
        reader.SetOutputPixelType(sitk.sitkVectorFloat64 if dtype == torch.float64 else sitk.sitkVectorFloat32)
        image = reader.Execute()
    except RuntimeError as error:
        raise InputFileError(f"{path}: unreadable or corrupt displacement field ({error})") from error
    grid = Grid.from_sitk(image)
    array = sitk.GetArrayFromImage(image)
    del image
    _check_finite_file(path, array)
    return DisplacementField.from_mm_array(array, grid, dtype=dtype, device=device)


# ---------------------------------------------------------------------- ITK transform files
#: file endings of ITK transform files written and read here (ITK's HDF5 transform format)
TRANSFORM_SUFFIXES = (".h5", ".hdf5")


def write_itk_transform(field: DisplacementField, path: str | os.PathLike) -> Path:
    """Write ``field`` as an ITK ``DisplacementFieldTransform_double_3_3`` in an HDF5 file, atomically.

    The file stores the grid (size, origin, spacing, direction: ``TransformFixedParameters``) and
    the displacement in world mm, LPS, float64 (``TransformParameters``), uncompressed: 24 bytes
    per voxel of ``field.grid``.

    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    _suffix(path, TRANSFORM_SUFFIXES, "write an ITK transform to")
    transform = sitk.DisplacementFieldTransform(field.to_sitk())
    with atomic_output(path) as tmp:
        try:
            sitk.WriteTransform(transform, str(tmp))
        except RuntimeError as error:
            raise InputFileError(f"{path}: SimpleITK could not write the transform ({error})") from error
    return path


def read_itk_transform(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                       device=None) -> DisplacementField:
    """Read an ITK displacement-field transform file (``.h5``) as a field on its own grid.

    Raises:
        InputFileError: missing or unreadable file, or a transform that is not a 3D displacement
            field (e.g. an affine or a composite transform).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: transform file not found")
    _suffix(path, TRANSFORM_SUFFIXES, "read an ITK transform from")
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError as error:
        raise InputFileError(f"{path}: unreadable or corrupt ITK transform file ({error})") from error
    if transform.GetName() != "DisplacementFieldTransform" or transform.GetDimension() != 3:
        raise InputFileError(f"{path}: expected a 3D DisplacementFieldTransform, got a "
                             f"{transform.GetDimension()}D {transform.GetName()}")
    image = sitk.DisplacementFieldTransform(transform).GetDisplacementField()
    array = sitk.GetArrayFromImage(image)
    _check_finite_file(path, array)
    return DisplacementField.from_mm_array(array, Grid.from_sitk(image), dtype=dtype, device=device)


# ---------------------------------------------------------------------- Learn2Reg
def write_l2r_displacement(field: DisplacementField, path: str | os.PathLike,
                           precision: str = "float32") -> Path:
    """Write ``field`` in the Learn2Reg layout (``disp_XXXX_YYYY.nii.gz``), atomically.

    Shapes:
        file content: ``(X, Y, Z, 3)`` = ``field.grid.size_xyz + (3,)`` voxels, components
        ``(x, y, z)`` index order, fixed -> moving; affine :func:`nifti_affine` of the grid.

    Args:
        precision: ``"float32"`` (default) or ``"float64"``.
    """
    path = Path(path)
    _suffix(path, _NIFTI_SUFFIXES, "write a Learn2Reg displacement to")
    array = field.to_l2r_array(_precision(precision))
    affine = nifti_affine(field.grid)
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_output(path) as tmp:
        nib.save(image, str(tmp))
    return path


def read_l2r_displacement(path: str | os.PathLike, grid: Grid, dtype: torch.dtype = torch.float32,
                          device=None) -> DisplacementField:
    """Read a Learn2Reg displacement file as a field on ``grid`` (the fixed image's grid).

    Only the array shape is checked against ``grid``: Learn2Reg files are defined by their
    array order, and their headers are often not the fixed image's.

    Raises:
        InputFileError: missing or unreadable file, NaN/Inf values.
        GeometryError: the array is not ``grid.size_xyz + (3,)``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: displacement file not found")
    _suffix(path, _NIFTI_SUFFIXES, "read a Learn2Reg displacement from")
    try:
        array = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float64))
    except Exception as error:  # nibabel raises many types for a bad or truncated file
        raise InputFileError(f"{path}: unreadable Learn2Reg displacement ({error})") from error
    expected = (*grid.size_xyz, 3)
    if array.shape != expected:
        raise GeometryError(
            f"{path}: displacement array shape {array.shape} does not match the fixed image: "
            f"expected (X, Y, Z, 3) = {expected} for grid shape (z, y, x) {grid.shape}"
        )
    _check_finite_file(path, array)
    return DisplacementField.from_l2r_array(array, grid, dtype=dtype, device=device)
