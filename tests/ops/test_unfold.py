"""Local fold repair: removes the folds, leaves the rest of the field as it was."""

import pytest
import torch

from graphreg.errors import ShapeError
from graphreg.ops.metrics import jacobian_determinant
from graphreg.ops.unfold import FOLD_FLOOR, repair_folds


def _folded_field(shape=(30, 40, 50)) -> torch.Tensor:
    """A smooth field with one local fold: a steep sigmoid step in x displacement, confined in (z, y)."""
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    field = torch.zeros((1, 3) + shape)
    field[0, 2] = -3.0 * torch.exp(-((z - 15) ** 2 + (y - 20) ** 2) / 20) * torch.tanh((x - 25) / 1.0)
    field[0, 0] = 0.05 * z  # a gentle expansion everywhere, untouched by the repair
    return field


def test_repair_removes_every_fold_and_changes_only_their_surroundings():
    field = _folded_field()
    assert (jacobian_determinant(field) <= 0).sum() > 50
    repaired, report = repair_folds(field)
    determinant = jacobian_determinant(repaired)
    assert determinant.min() >= FOLD_FLOOR and report["voxels_below_after"] == 0
    changed = (repaired != field).any(dim=1)[0]
    assert int(changed.sum()) <= report["voxels_changed"] < 0.02 * changed.numel()
    zs, ys, xs = changed.nonzero().T
    assert zs.min() >= 5 and zs.max() <= 25 and xs.min() >= 15 and xs.max() <= 35  # near the fold only
    assert report["voxels_below_before"] > 0 and report["passes"] >= 1


def test_repair_leaves_a_field_without_folds_bit_identical():
    field = torch.zeros((1, 3, 12, 14, 16))
    field[0, 1] = 0.1 * torch.arange(14.0).view(1, 14, 1)
    repaired, report = repair_folds(field)
    assert torch.equal(repaired, field) and report == {"passes": 0, "voxels_below_before": 0,
                                                       "voxels_below_after": 0, "voxels_changed": 0}


def test_repair_rejects_a_batch_or_a_scalar_field():
    with pytest.raises(ShapeError, match="displacement"):
        repair_folds(torch.zeros((2, 3, 8, 8, 8)))


def test_repair_unfolds_a_converging_motion_and_keeps_it_elsewhere():
    """Content converging on a plane: the exactly matched pull field folds there (as exhale -> inhale
    did at the lung base); the repair removes the fold and keeps the motion away from the plane."""
    shape = (24, 16, 16)
    z = torch.arange(shape[0], dtype=torch.float32).view(-1, 1, 1).expand(shape)
    field = torch.zeros((1, 3) + shape)
    field[0, 0] = 2.0 * torch.tanh((12.0 - z) / 0.8)  # +2 before the plane, -2 after: J < 0 near it
    assert (jacobian_determinant(field) <= 0).any()
    repaired, report = repair_folds(field)
    assert float(jacobian_determinant(repaired).min()) >= FOLD_FLOOR and report["voxels_below_after"] == 0
    far = (z - 12.0).abs() > 6
    assert torch.equal(repaired[0, 0][far], field[0, 0][far])
