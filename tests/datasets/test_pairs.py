"""Pair folder format: exact round trip, lazy ground truth, errors."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from graphreg.datasets.pairs import FILES, PairData, dense_field, read_pair, write_pair
from graphreg.errors import InputFileError, ShapeError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.core.volume import Volume


def _pair(with_field=True):
    rng = np.random.default_rng(0)
    grid = Grid((8, 10, 12), (1.5, 1.25, 2.0), (-5.0, 3.0, 10.0))
    moving_grid = Grid((6, 10, 12), (1.5, 1.25, 2.5), (-5.0, 3.0, 10.0))
    fixed = Volume(rng.integers(-1000, 500, grid.shape).astype(np.int16), grid)
    moving = Volume(rng.integers(-1000, 500, moving_grid.shape).astype(np.int16), moving_grid)
    mask = Volume((rng.uniform(size=grid.shape) > 0.5).astype(np.uint8), grid)
    moving_mask = Volume((rng.uniform(size=moving_grid.shape) > 0.5).astype(np.uint8), moving_grid)
    field = DisplacementField(torch.from_numpy(rng.normal(size=(1, 3, *grid.shape))).float(), grid)
    fixed_mm = grid.voxel_to_world(rng.uniform(0, 7, size=(5, 3)))
    moving_mm = field.transform_points(fixed_mm)
    return PairData(name="p", fixed=fixed, moving=moving, fixed_mask=mask, moving_mask=moving_mask,
                    fixed_landmarks_mm=fixed_mm, moving_landmarks_mm=moving_mm,
                    meta={"seed": np.int64(3), "tre": {"mean_mm": np.float32(1.5)}},
                    gt_field=field if with_field else None)


def test_roundtrip_exact(tmp_path):
    pair = _pair()
    write_pair(pair, tmp_path / "p")
    assert sorted(f.name for f in (tmp_path / "p").iterdir()) == sorted(FILES.values())
    back = read_pair(tmp_path / "p")
    for name in ("fixed", "moving", "fixed_mask", "moving_mask"):
        a, b = getattr(pair, name), getattr(back, name)
        assert a.array.dtype == b.array.dtype and np.array_equal(a.array, b.array)
        assert b.grid.same_as(a.grid)
    assert np.array_equal(back.fixed_landmarks_mm, pair.fixed_landmarks_mm)
    assert np.array_equal(back.moving_landmarks_mm, pair.moving_landmarks_mm)
    assert back.meta == {"seed": 3, "tre": {"mean_mm": 1.5}}
    assert back.gt_field is None  # lazy
    field = back.load_gt_field()
    assert back.gt_field is field
    assert torch.allclose(field.displacement, pair.gt_field.displacement, atol=1e-5)
    mapped = back.dense_gt_field().transform_points(back.fixed_landmarks_mm)
    assert np.abs(mapped - back.moving_landmarks_mm).max() < 1e-4


def test_rewrite_from_lazy_pair(tmp_path):
    write_pair(_pair(), tmp_path / "a")
    lazy = read_pair(tmp_path / "a")
    write_pair(lazy, tmp_path / "b")
    assert (tmp_path / "b" / FILES["gt_field"]).read_bytes() == (tmp_path / "a" / FILES["gt_field"]).read_bytes()


def test_dense_field_matches_itk(tmp_path):
    """The stored field means what ITK's DisplacementFieldTransform makes of it."""
    grid = Grid((12, 14, 16), (1.0, 1.0, 1.5), (2.0, -3.0, 4.0))
    control = Grid((4, 5, 6), (3.0, 3.25, 5.5), (2.0, -3.0, 4.0))
    values = np.random.default_rng(1).normal(size=(1, 3, *control.shape))
    field = DisplacementField(torch.from_numpy(values), control)
    dense = dense_field(field, grid)
    transform = sitk.DisplacementFieldTransform(field.to_sitk())
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in grid.shape], indexing="ij"),
                     axis=-1).reshape(-1, 3)
    world = grid.voxel_to_world(index)
    itk = np.array([transform.TransformPoint(tuple(p)) for p in world]) - world
    ours = dense.to_mm_array().reshape(-1, 3)
    assert np.abs(itk - ours).max() < 1e-4


def test_exception(tmp_path):
    pair = _pair(with_field=False)
    with pytest.raises(InputFileError, match="no ground-truth field"):
        pair.load_gt_field()
    with pytest.raises(InputFileError, match="pair folder not found"):
        read_pair(tmp_path / "missing")
    write_pair(_pair(), tmp_path / "p")
    (tmp_path / "p" / FILES["moving_mask"]).unlink()
    with pytest.raises(InputFileError, match="moving_mask.nii.gz"):
        read_pair(tmp_path / "p")
    with pytest.raises(ShapeError, match=r"fixed_landmarks_mm: expected shape \(N, 3\)"):
        PairData(name="x", fixed=pair.fixed, moving=pair.moving, fixed_mask=pair.fixed_mask,
                 moving_mask=pair.moving_mask, fixed_landmarks_mm=np.zeros((4, 2)),
                 moving_landmarks_mm=np.zeros((4, 3)), meta={})
    with pytest.raises(ValueError, match="equal size"):
        PairData(name="x", fixed=pair.fixed, moving=pair.moving, fixed_mask=pair.fixed_mask,
                 moving_mask=pair.moving_mask, fixed_landmarks_mm=np.zeros((4, 3)),
                 moving_landmarks_mm=np.zeros((5, 3)), meta={})
    (tmp_path / "q").mkdir()
    write_pair(_pair(), tmp_path / "q")
    (tmp_path / "q" / FILES["meta"]).write_text("{not json")
    with pytest.raises(InputFileError, match="JSON"):
        read_pair(tmp_path / "q")
    json.loads((tmp_path / "p" / FILES["meta"]).read_text())
