"""Input and output in physical space: images, DIR-Lab data, landmark files, atomic writes.

Convention:
    Images come back as :class:`~graphreg.core.volume.Volume` (array ``(z, y, x)``, geometry in
    ``(x, y, z)``); landmarks as :class:`~graphreg.io.landmarks.Landmarks` (voxel ``(z, y, x)``
    0-based or world ``(x, y, z)`` mm). Every writer is atomic (:mod:`graphreg.io.atomic`).
"""

from graphreg.io.atomic import atomic_output, atomic_write_text
from graphreg.io.dirlab import (DIRLAB_CASES, DirlabCase, dirlab_case, dirlab_case_from_filename,
                     read_dirlab_raw, write_dirlab_raw)
from graphreg.io.fields import (nifti_affine, read_itk_field, read_itk_transform, read_l2r_displacement, write_itk_field,
                     write_itk_transform, write_l2r_displacement)
from graphreg.io.images import image_info, read_image, write_image
from graphreg.io.landmarks import Landmarks, check_pairs, read_landmarks, write_landmarks

__all__ = [
    "DIRLAB_CASES",
    "DirlabCase",
    "Landmarks",
    "atomic_output",
    "atomic_write_text",
    "check_pairs",
    "dirlab_case",
    "dirlab_case_from_filename",
    "image_info",
    "nifti_affine",
    "read_dirlab_raw",
    "read_itk_field",
    "read_itk_transform",
    "read_l2r_displacement",
    "read_image",
    "read_landmarks",
    "write_dirlab_raw",
    "write_image",
    "write_itk_field",
    "write_itk_transform",
    "write_l2r_displacement",
    "write_landmarks",
]
