"""Adam instance optimisation of a dense displacement field (ConvexAdam / VoxelMorph++ style).

The only parameter is a displacement grid at ``1 / grid_factor`` of the image resolution,
initialised from a given dense field. Every step smooths it by a few 3x3x3 average pools,
upsamples it to full resolution, warps the moving features and minimises the (masked) mean
squared feature difference plus a diffusion penalty.

Convention:
    Features ``(1, C, D, H, W)`` on the fixed grid (e.g. MIND-SSC of both images); displacement
    fields ``(1, 3, D, H, W)`` in voxels ``(z, y, x)`` of that grid, fixed -> moving. The
    parameter grid stores displacements in voxels of the *parameter* grid, so ``lr`` is in
    those voxels (``grid_factor`` full-resolution voxels per unit).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from ..errors import GraphregError, check_shape
from ..geometry import ALIGN_CORNERS
from ..spatial import resize_field, warp
from .filters import box_filter

__all__ = ["InstanceOptResult", "diffusion_loss", "instance_optimise", "smooth_field"]


class InstanceOptResult(NamedTuple):
    """Result of :func:`instance_optimise`.

    Attributes:
        displacement: ``(1, 3, D, H, W)`` voxels, the smoothed, upsampled optimised field.
        losses: total loss per iteration (before that iteration's update).
    """

    displacement: torch.Tensor
    losses: list[float]


def diffusion_loss(field: torch.Tensor) -> torch.Tensor:
    """Diffusion regulariser: mean squared forward difference of every component along every axis.

    ``sum over axes a of mean((u[.., i + 1, ..] - u[.., i, ..])**2)`` (the mean runs over
    batch, components and the valid positions of that axis). Dimensionless when ``u`` is in
    voxels of its own grid (it approximates the mean squared displacement gradient).

    Shapes:
        field: ``(B, 3, D, H, W)``; returns a scalar.
    """
    check_shape("field", field, "(B, 3, D, H, W)", field.ndim == 5 and field.shape[1] == 3)
    total = field.new_zeros(())
    for dim in (2, 3, 4):
        if field.shape[dim] > 1:
            total = total + torch.diff(field, dim=dim).pow(2).mean()
    return total


def smooth_field(field: torch.Tensor, passes: int) -> torch.Tensor:
    """``passes`` 3x3x3 box filters with edge replication (no shrinkage towards zero at the border).

    Shapes:
        field: ``(B, C, D, H, W)``; returns the same shape.
    """
    for _ in range(passes):
        field = box_filter(field, 1)
    return field


def _downsample(volume: torch.Tensor, factor: int, shape) -> torch.Tensor:
    """Box-smooth by ``factor`` (odd width) and resample to ``shape`` (``align_corners`` grid)."""
    smooth = box_filter(volume, factor // 2)
    return F.interpolate(smooth, size=shape, mode="trilinear", align_corners=ALIGN_CORNERS)


def _masked_weight(mask: torch.Tensor | None, shape, dilation: int, like: torch.Tensor):
    if mask is None:
        return None
    check_shape("mask", mask, f"(1, 1, {shape[0]}, {shape[1]}, {shape[2]})",
                mask.ndim == 5 and mask.shape[:2] == (1, 1) and tuple(mask.shape[2:]) == shape)
    weight = (mask > 0).to(like.dtype)
    if dilation > 0:
        weight = F.max_pool3d(weight, 2 * dilation + 1, stride=1, padding=dilation)
    if float(weight.sum()) == 0:
        raise GraphregError("mask: expected at least one foreground voxel, got an empty mask")
    return weight


def instance_optimise(fixed_features: torch.Tensor, moving_features: torch.Tensor,
                      init_displacement: torch.Tensor, mask: torch.Tensor | None = None,
                      iterations: int = 50, lr: float = 1.0, lambda_diffusion: float = 1.0,
                      grid_factor: int = 2, smoothing_passes: int = 3, mask_dilation: int = 3,
                      similarity_factor: int = 1,
                      progress: Callable[[int, float], None] | None = None) -> InstanceOptResult:
    """Refine a dense displacement field by Adam on a low-resolution displacement grid.

    Loss per step, with ``v`` the parameter grid smoothed by ``smoothing_passes`` box filters
    and ``u`` its trilinear upsampling (:func:`graphreg.spatial.resize_field`):
    ``mean_{x in M, c} (F(x) - M_c(x + u(x)))^2 + lambda_diffusion * diffusion_loss(v)``,
    where ``M`` is the fixed mask dilated by ``mask_dilation`` voxels (all voxels when ``mask``
    is ``None``), so the similarity sees the lung boundary but not the chest wall's sliding
    motion far outside it.

    ``similarity_factor > 1`` evaluates the similarity on a grid ``similarity_factor`` times
    coarser (features box-smoothed and resampled once, the field resized to that grid), as
    ConvexAdam does with 2: about ``similarity_factor**3`` times less work per step. The
    returned field is always at full resolution.

    Shapes:
        fixed_features, moving_features: ``(1, C, D, H, W)``;
        init_displacement: ``(1, 3, D, H, W)`` voxels; mask: ``(1, 1, D, H, W)`` or ``None``.
        returns: :class:`InstanceOptResult` with ``displacement`` ``(1, 3, D, H, W)`` voxels
        (detached) and the list of ``iterations`` losses.

    ``progress(iteration, loss)`` is called after every step.
    """
    check_shape("fixed_features", fixed_features, "(1, C, D, H, W)",
                fixed_features.ndim == 5 and fixed_features.shape[0] == 1)
    check_shape("moving_features", moving_features, f"{tuple(fixed_features.shape)}",
                moving_features.shape == fixed_features.shape)
    shape = tuple(fixed_features.shape[2:])
    check_shape("init_displacement", init_displacement,
                f"(1, 3, {shape[0]}, {shape[1]}, {shape[2]})",
                init_displacement.ndim == 5 and init_displacement.shape[:2] == (1, 3)
                and tuple(init_displacement.shape[2:]) == shape)
    if grid_factor < 1:
        raise GraphregError(f"grid_factor: expected an integer >= 1, got {grid_factor}")
    if similarity_factor < 1:
        raise GraphregError(f"similarity_factor: expected an integer >= 1, got "
                            f"{similarity_factor}")
    if iterations < 0 or smoothing_passes < 0 or mask_dilation < 0:
        raise GraphregError("iterations, smoothing_passes, mask_dilation: expected >= 0, got "
                            f"{iterations}, {smoothing_passes}, {mask_dilation}")
    fixed = fixed_features.detach()
    moving = moving_features.detach().to(fixed.dtype)
    weight = _masked_weight(mask, shape, mask_dilation, fixed)
    sim_shape = shape
    if similarity_factor > 1:
        sim_shape = tuple(max(2, round(n / similarity_factor)) if n > 1 else 1 for n in shape)
        fixed = _downsample(fixed, similarity_factor, sim_shape)
        moving = _downsample(moving, similarity_factor, sim_shape)
        if weight is not None:
            weight = F.interpolate(weight, size=sim_shape, mode="trilinear",
                                   align_corners=ALIGN_CORNERS)
    voxels = weight.sum() if weight is not None else fixed.new_tensor(float(fixed[0, 0].numel()))
    denominator = voxels * fixed.shape[1]
    low = tuple(max(2, round(n / grid_factor)) if n > 1 else 1 for n in shape)
    with torch.no_grad():
        start = resize_field(init_displacement.detach().to(fixed.dtype), low)
    param = torch.nn.Parameter(start.clone())
    optimiser = torch.optim.Adam([param], lr=lr)
    losses: list[float] = []
    for step in range(iterations):
        optimiser.zero_grad(set_to_none=True)
        smooth = smooth_field(param, smoothing_passes)
        field = resize_field(smooth, sim_shape)
        residual = (fixed - warp(moving, field)) ** 2
        if weight is not None:
            residual = residual * weight
        loss = residual.sum() / denominator + lambda_diffusion * diffusion_loss(smooth)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    with torch.no_grad():
        field = resize_field(smooth_field(param, smoothing_passes), shape)
    return InstanceOptResult(field.detach(), losses)
