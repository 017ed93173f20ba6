"""Result folders appear whole or not at all; fields resample between grids in physical space."""

import numpy as np
import pytest
import torch

from graphreg.errors import GraphregError
from graphreg.field import DisplacementField
from graphreg.geometry import Grid
from graphreg.io.outputs import ResultDirectory
from graphreg.registration import resample_field


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
