"""Writing NIfTI files as ITK writes them, streamed slab by slab through a fast gzip.

SimpleITK's NIfTI writer compresses with zlib at its default level and ignores the compression
level it is given; at native CT resolution that gzip is most of the cost of a result's outputs.
Here ITK still writes the header (of a one-voxel image with the same geometry and pixel type, its
three sizes then set to the real ones), and the voxels follow as ITK lays them out, compressed by
ISA-L's gzip (``isal``, level :data:`GZIP_LEVEL`). The file decompresses to exactly the bytes
SimpleITK writes uncompressed, and any gzip reader (ITK, nibabel, ``gzip``) reads it.

Convention:
    ITK stores a vector image as a 5D NIfTI ``(X, Y, Z, 1, C)``: component by component, each a
    whole ``(z, y, x)`` volume with ``x`` fastest. So the data is given as chunks in that order:
    for component 0 the slabs of ``(z, y, x)`` from the first slice to the last, then component 1,
    and so on; a scalar image is one component.
"""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import SimpleITK as sitk
from isal import igzip

from graphreg.core.geometry import Grid
from graphreg.errors import GeometryError, ShapeError
from graphreg.io.atomic import atomic_output

#: ISA-L gzip level (0-3): level 2 is within ~5 % of zlib's default size at about 10x its speed
GZIP_LEVEL = 2
#: byte offset of NIfTI-1's ``dim[1..3]`` (three int16: the size along x, y, z)
_DIM_OFFSET = 42
#: NIfTI-1 stores the sizes as int16
_MAX_SIZE = 32767


def nifti_header(grid: Grid, dtype: np.dtype, components: int = 1) -> bytes:
    """The header (and the empty extension block, up to ``vox_offset``) ITK writes for an image.

    Shapes:
        grid: any grid whose direction NIfTI can store
        (:func:`graphreg.io.images.nifti_can_store`); ``components``: 1 (scalar) or the vector length.

    Raises:
        GeometryError: a size above NIfTI-1's 32767.
    """
    if max(grid.size_xyz) > _MAX_SIZE:
        raise GeometryError(f"grid: expected sizes of at most {_MAX_SIZE} (NIfTI-1), got {grid.size_xyz}")
    shape = (1, 1, 1, components) if components > 1 else (1, 1, 1)
    tiny = sitk.GetImageFromArray(np.zeros(shape, dtype=dtype), isVector=components > 1)
    Grid((1, 1, 1), grid.spacing, grid.origin, grid.direction).apply_to_sitk(tiny)
    with tempfile.TemporaryDirectory(prefix="graphreg-header-") as folder:
        path = os.path.join(folder, "header.nii")
        sitk.WriteImage(tiny, path, useCompression=False)
        data = Path(path).read_bytes()
    offset = int(struct.unpack("<f", data[108:112])[0])  # vox_offset
    header = bytearray(data[:offset])
    header[_DIM_OFFSET:_DIM_OFFSET + 6] = struct.pack("<3h", *grid.size_xyz)
    return bytes(header)


def write_nifti_chunks(path: str | os.PathLike, grid: Grid, dtype, components: int,
                       chunks: Iterable[np.ndarray], what: str = "image") -> Path:
    """Write a ``.nii.gz`` (ISA-L gzip) or ``.nii`` file from its voxels in chunks, atomically.

    Args:
        path: ``.nii.gz`` or ``.nii``.
        grid: the image's grid; dtype: its pixel type (numpy); components: 1 or the vector length.
        chunks: arrays of ``dtype`` in file order (module docstring), together ``components *
            grid.size`` values.
        what: the image's name in error messages.

    Returns:
        ``Path(path)``.

    Raises:
        ShapeError: the chunks do not hold exactly the image's voxels, or a chunk has another
            dtype (nothing is written then).
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    header = nifti_header(grid, dtype, components)
    expected = components * int(np.prod(grid.shape))
    written = 0
    with atomic_output(path) as tmp:
        # mtime 0 in the gzip header: equal images give equal files
        opener = (lambda: igzip.IGzipFile(tmp, "wb", compresslevel=GZIP_LEVEL, mtime=0)) \
            if path.name.lower().endswith(".gz") else (lambda: open(tmp, "wb"))
        with opener() as handle:
            handle.write(header)
            for chunk in chunks:
                if chunk.dtype != dtype:
                    raise ShapeError(f"{what}: expected chunks of {dtype}, got {chunk.dtype} (writing {path})")
                handle.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
                written += chunk.size
        if written != expected:
            raise ShapeError(f"{what}: expected {expected} values, got {written} (writing {path})")
    return path
