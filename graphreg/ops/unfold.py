"""Local repair of a folding displacement field: smooth it only where its map comes near folding."""

from __future__ import annotations

import torch

from graphreg.errors import ShapeError
from graphreg.ops.filters import binary_dilation, box_filter
from graphreg.ops.metrics import jacobian_determinant

#: Jacobian determinant below which a voxel counts as (nearly) folded: the repair target and the
#: folding penalty's floor
FOLD_FLOOR = 0.1


def index_box(points: torch.Tensor, halo: int, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """``(start, stop)`` of the index box around voxel ``points`` grown by ``halo`` voxels and
    clipped to ``shape``.

    Shapes:
        points: ``(K, 3)`` integer voxels ``(z, y, x)``, ``K >= 1``; returns two ``(3,)`` tensors.
    """
    size = torch.tensor(tuple(shape), device=points.device)
    return (points.min(0).values - halo).clamp(min=0), torch.minimum(points.max(0).values + halo + 1, size)


def repair_folds(displacement: torch.Tensor, floor: float = FOLD_FLOOR, radius: int = 1,
                 max_passes: int = 50) -> tuple[torch.Tensor, dict]:
    """Replace the displacement around every voxel whose Jacobian determinant is below ``floor`` by
    its local mean, pass after pass, until no voxel is below it (or ``max_passes`` ran).

    Each pass averages over the cube of side ``2 * radius + 1`` the voxels within ``radius`` of a
    voxel below ``floor``; everything else keeps its value bit for bit. A pass changes the
    determinant only within ``radius + 1`` voxels of the voxels it changed, so after the first
    determinant of the whole grid each pass works on the box around the voxels still below
    ``floor`` (with that halo): fields that do not fold cost one determinant.

    Shapes:
        displacement: ``(1, 3, D, H, W)`` voxels of its own grid ``(z, y, x)``; returns a new
        tensor of that shape and ``{"passes", "voxels_below_before", "voxels_below_after",
        "voxels_changed"}``.
    """
    if displacement.ndim != 5 or tuple(displacement.shape[:2]) != (1, 3):
        raise ShapeError(f"displacement: expected shape (1, 3, D, H, W), got {tuple(displacement.shape)}")
    with torch.no_grad():
        field = displacement.detach().clone()
        below = (jacobian_determinant(field)[0] < floor).nonzero()  # (K, 3) voxels
        report = {"passes": 0, "voxels_below_before": int(len(below)), "voxels_below_after": int(len(below)),
                  "voxels_changed": 0}
        changed = torch.zeros(field.shape[2:], dtype=torch.bool, device=field.device)
        shape = tuple(field.shape[2:])
        while len(below) and report["passes"] < max_passes:
            start, stop = index_box(below, radius + 2, shape)
            box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
            crop = field[(slice(None), slice(None)) + box]
            near = torch.zeros(crop.shape[2:], dtype=torch.bool, device=crop.device)
            near[tuple((below - start).T)] = True
            region = binary_dilation(near[None, None], radius)
            field[(slice(None), slice(None)) + box] = torch.where(region, box_filter(crop, radius), crop)
            changed[box] |= region[0, 0]
            # one-sided differences on the crop's own border are not the field's: look inside it only
            # (or on the grid's border, where the field's are one-sided too)
            determinant = jacobian_determinant(field[(slice(None), slice(None)) + box])[0]
            inside = torch.zeros_like(near)
            inner = tuple(slice(0 if a == 0 else 1, n if b == s else n - 1)
                          for a, b, s, n in zip(start.tolist(), stop.tolist(), shape, near.shape))
            inside[inner] = True
            below = ((determinant < floor) & inside).nonzero() + start
            report["passes"] += 1
        report["voxels_below_after"] = int(len(below))
        report["voxels_changed"] = int(changed.sum())
    return field, report


__all__ = ["FOLD_FLOOR", "index_box", "repair_folds"]
