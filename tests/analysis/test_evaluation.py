"""Landmark TRE from files: voxel landmarks get the fixed image's geometry, not the field's grid."""

import json

import numpy as np
import torch

from graphreg.analysis.evaluation import evaluate_landmarks
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.io.fields import write_itk_field
from graphreg.result.registration import grid_dict


def _write_voxels(path, voxels_zyx):
    rows = "\n".join(" ".join(str(int(v)) for v in voxel[::-1]) for voxel in voxels_zyx)  # x y z per line
    path.write_text(rows + "\n")


def test_voxel_landmarks_use_the_fixed_grid_of_the_report_beside_the_field(tmp_path):
    fixed_grid = Grid((10, 12, 14), (1.0, 1.0, 1.5), origin=(4.0, -3.0, 2.0))
    lattice = Grid((8, 9, 10), (2.0, 2.0, 2.0), origin=(0.0, -6.0, -1.0))  # a coarser grid covering it
    shift = np.array([1.0, -2.0, 3.0])  # mm (x, y, z): whole fixed voxels
    matrix = np.eye(4)
    matrix[:3, 3] = shift
    field = DisplacementField.from_affine(matrix, lattice, dtype=torch.float64)
    fixed_voxels = np.array([[2, 3, 4], [5, 6, 7], [8, 10, 12]])
    moving_voxels = np.rint(fixed_grid.world_to_voxel(fixed_grid.voxel_to_world(fixed_voxels.astype(float))
                                                      + shift)).astype(int)
    _write_voxels(tmp_path / "fixed.txt", fixed_voxels)
    _write_voxels(tmp_path / "moving.txt", moving_voxels)
    write_itk_field(field, tmp_path / "field.nii.gz")
    (tmp_path / "report.json").write_text(json.dumps({"fixed_grid": grid_dict(fixed_grid)}))
    result = evaluate_landmarks(tmp_path / "fixed.txt", tmp_path / "moving.txt", field_path=tmp_path / "field.nii.gz")
    assert result["tre_before_mean_mm"] > 1.0 and result["tre_mean_mm"] < 1e-4
