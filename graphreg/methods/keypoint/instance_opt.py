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

import math
import time
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch
import torch.nn.functional as F

from graphreg.errors import ConfigError, GraphregError, check_shape, is_int_at_least
from graphreg.core.geometry import ALIGN_CORNERS
from graphreg.ops.losses import diffusion_loss
from graphreg.ops.metrics import jacobian_determinant
from graphreg.core.spatial import identity_grid, resize_field, sample_points, voxel_scale
from graphreg.ops.filters import binary_dilation, filter_axis, repeated_box_filter
from graphreg.ops.mind import mind_ssc
from graphreg.ops.unfold import FOLD_FLOOR, index_box

if TYPE_CHECKING:
    from graphreg.core.config import InstanceOptConfig

__all__ = ["FOLD_FLOOR", "InstanceOptResult", "fold_loss", "instance_features", "instance_optimise",
           "optimise_with_config", "smooth_field"]


class InstanceOptResult(NamedTuple):
    """Result of :func:`instance_optimise`.

    Attributes:
        displacement: ``(1, 3, D, H, W)`` voxels, the smoothed, upsampled optimised field.
        losses: total loss per iteration (before that iteration's update).
    """

    displacement: torch.Tensor
    losses: list[float]


class _SymmetricSmooth(torch.autograd.Function):
    """:func:`smooth_field` with a hand-written backward.

    The 3-tap box filter with edge replication is a symmetric matrix along each axis (the border
    row ``(2/3, 1/3)`` equals the border column), filters along different axes commute, so the
    whole smoothing ``S`` is self-adjoint: the gradient is ``S`` applied to the incoming
    gradient. This is several times cheaper than letting autograd record the many in-place
    slice additions of :func:`~graphreg.ops.filters.filter_axis`.
    """

    @staticmethod
    def forward(ctx, field: torch.Tensor, passes: int) -> torch.Tensor:
        ctx.passes = passes
        return repeated_box_filter(field, passes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return repeated_box_filter(grad, ctx.passes), None


def smooth_field(field: torch.Tensor, passes: int) -> torch.Tensor:
    """``passes`` 3x3x3 box filters with edge replication (no shrinkage towards zero at the border).

    Differentiable; the backward pass applies the same (self-adjoint) smoothing to the gradient.

    Shapes:
        field: ``(B, C, D, H, W)``; returns the same shape.
    """
    if field.requires_grad and torch.is_grad_enabled():
        return _SymmetricSmooth.apply(field, passes)
    return repeated_box_filter(field, passes)


def _resize_axis(volume: torch.Tensor, size: int, axis: int) -> torch.Tensor:
    """Linear resampling of one spatial axis to ``size`` voxels (``align_corners`` grid).

    The volume is viewed with as few dimensions as keep ``axis`` apart (``x``: 1D lines, ``y``:
    2D slices, ``z``: ``(D, H*W)`` planes whose second axis keeps its size), so ``F.interpolate``
    runs its linear or bilinear kernel instead of the trilinear one: the same values (up to the
    last bit), two to three times faster on 12-channel volumes on CPU.

    Shapes:
        volume: ``(B, C, D, H, W)``; returns it with dimension ``axis + 2`` of length ``size``.
    """
    batch, channels, depth, height, width = volume.shape
    if axis == 2:
        lines = volume.reshape(batch, channels * depth * height, width)
        return F.interpolate(lines, size=(size,), mode="linear",
                             align_corners=ALIGN_CORNERS).view(batch, channels, depth, height, size)
    if axis == 1:
        slices = volume.reshape(batch, channels * depth, height, width)
        return F.interpolate(slices, size=(size, width), mode="bilinear",
                             align_corners=ALIGN_CORNERS).view(batch, channels, depth, size, width)
    planes = volume.reshape(batch, channels, depth, height * width)
    return F.interpolate(planes, size=(size, height * width), mode="bilinear",
                         align_corners=ALIGN_CORNERS).view(batch, channels, size, height, width)


def _downsample(volume: torch.Tensor, factor: int, shape) -> torch.Tensor:
    """Box-smooth by ``factor`` (odd width) and resample to ``shape`` (``align_corners`` grid).

    Both the box filter and trilinear resampling are separable, so they are applied one axis at
    a time (filter, then shrink that axis): the same result as filtering the whole volume first,
    with the later axes filtered on an already smaller volume.
    """
    taps = [1.0 / (2 * (factor // 2) + 1)] * (2 * (factor // 2) + 1)
    for axis in range(3):
        if len(taps) > 1:
            volume = filter_axis(volume, taps, axis)
        volume = _resize_axis(volume, shape[axis], axis)
    return volume


def _masked_weight(mask: torch.Tensor | None, shape, dilation: int, like: torch.Tensor):
    if mask is None:
        return None
    check_shape("mask", mask, f"(1, 1, {shape[0]}, {shape[1]}, {shape[2]})",
                mask.ndim == 5 and mask.shape[:2] == (1, 1) and tuple(mask.shape[2:]) == shape)
    weight = binary_dilation(mask > 0, dilation).to(like.dtype)
    if float(weight.sum()) == 0:
        raise GraphregError("mask: expected at least one foreground voxel, got an empty mask")
    return weight


class _Adam:
    """Adam on one tensor: the update of ``torch.optim.Adam`` (default betas and eps, no weight
    decay). A hand-written replacement: its reason and equality test are listed in
    ``docs/design.md`` ("Hand-written replacements of library code")."""

    def __init__(self, param: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param, self.lr, self.betas, self.eps = param, lr, betas, eps
        self.first = torch.zeros_like(param)
        self.second = torch.zeros_like(param)
        self.steps = 0

    def step(self) -> None:
        """One update from ``param.grad``."""
        beta1, beta2 = self.betas
        grad = self.param.grad
        self.steps += 1
        self.first.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        self.second.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denominator = (self.second.sqrt() / math.sqrt(1.0 - beta2 ** self.steps)).add_(self.eps)
        with torch.no_grad():
            self.param.addcdiv_(self.first, denominator, value=-self.lr / (1.0 - beta1 ** self.steps))


def _coarse_shape(shape: tuple[int, ...], factor: int) -> tuple[int, ...]:
    """``shape`` divided by ``factor`` (rounded), at least 2 along every axis longer than 1."""
    return tuple(max(2, round(n / factor)) if n > 1 else 1 for n in shape)


def _diffusion_weight(mask: torch.Tensor | None, low, outside: float, like: torch.Tensor) -> torch.Tensor | None:
    """Weight map ``(1, 1, *low)`` of the diffusion penalty on the parameter grid: 1 where a voxel
    of the (undilated) mask falls into the parameter voxel, ``outside`` elsewhere; ``None``
    (uniform weight 1) without a mask or when ``outside`` is 1."""
    if not 0.0 <= outside <= 1.0:
        raise GraphregError(f"outside_diffusion: expected a number in [0, 1], got {outside}")
    if mask is None or outside == 1.0:
        return None
    inside = (mask > 0).to(like.dtype)
    if tuple(inside.shape[2:]) != tuple(low):
        inside = F.adaptive_max_pool3d(inside, low)  # low is never finer than the mask
    return outside + (1.0 - outside) * inside


def fold_loss(displacement: torch.Tensor, floor: float = FOLD_FLOOR) -> torch.Tensor:
    """Folding penalty: ``mean_x max(0, floor - J(x))^2`` with ``J`` the Jacobian determinant of
    ``x + u(x)`` (:func:`graphreg.ops.metrics.jacobian_determinant`, the central differences the
    folding metric uses). Zero wherever the field is at least ``floor`` away from folding.

    Only the box around the voxels below ``floor`` (plus the one-voxel halo the differences need) is
    differentiated: the same value and gradient as the whole grid, at a fraction of the cost when
    few voxels come near folding, and none when no voxel does.

    Shapes:
        displacement: ``(1, 3, D, H, W)`` voxels of its own grid; returns ``()``, dimensionless.
    """
    with torch.no_grad():
        below = (jacobian_determinant(displacement.detach()) < floor)[0].nonzero()  # (K, 3) voxels
    if not len(below):
        return displacement.new_zeros(())
    shape = tuple(displacement.shape[2:])
    first, last = index_box(below, 0, shape)  # the box of the voxels below
    start, stop = index_box(below, 1, shape)  # with the halo
    box = displacement[(...,) + tuple(slice(int(a), int(b)) for a, b in zip(start, stop))]
    inner = tuple(slice(int(a), int(a + n)) for a, n in zip(first - start, last - first))
    determinant = jacobian_determinant(box)[(slice(None),) + inner]
    return torch.relu(floor - determinant).square().sum() / float(math.prod(shape))


def instance_optimise(fixed_features: torch.Tensor, moving_features: torch.Tensor,
                      init_displacement: torch.Tensor, mask: torch.Tensor | None = None,
                      iterations: int = 50, lr: float = 1.0, lambda_diffusion: float = 0.1,
                      grid_factor: int = 2, smoothing_passes: int = 3, mask_dilation: int = 3,
                      similarity_factor: int = 1, sample_fraction: float = 1.0,
                      outside_diffusion: float = 1.0, fold_penalty: float = 0.0, seed: int = 0,
                      progress: Callable[[int, float], None] | None = None) -> InstanceOptResult:
    """Refine a dense displacement field by Adam on a low-resolution displacement grid.

    Loss per step, with ``v`` the parameter grid smoothed by ``smoothing_passes`` box filters
    and ``u`` its trilinear upsampling (:func:`graphreg.core.spatial.resize_field`):
    ``mean_{x in M, c} (F(x) - M_c(x + u(x)))^2 + lambda_diffusion * diffusion_loss(v, w)``
    (:func:`graphreg.ops.losses.diffusion_loss`, which sums the three components; on ``v`` in voxels
    of the parameter grid it is the mean of ``|du/dx|^2`` in mm per mm, so ``lambda_diffusion``
    means the same smoothness at any working spacing and ``grid_factor``),
    where ``M`` is the fixed mask dilated by ``mask_dilation`` voxels (all voxels when ``mask``
    is ``None``), so the similarity sees the lung boundary but not the chest wall's sliding
    motion far outside it. The diffusion weight ``w`` is 1 on parameter voxels that hold a voxel
    of the (undilated) mask and ``outside_diffusion`` elsewhere: below 1, the field may fall off
    steeply just outside the lungs, where breathing motion changes fastest (sliding at the
    pleura), without that steepness being pulled back into the lungs as under-registration.

    ``similarity_factor > 1`` evaluates the similarity on a grid ``similarity_factor`` times
    coarser (features box-smoothed and resampled once, the field resized to that grid), as
    ConvexAdam does with 2: about ``similarity_factor**3`` times less work per step. The
    returned field is always at full resolution.

    ``sample_fraction < 1`` evaluates the similarity at a fresh random subset of that fraction of
    the (masked) voxels every step, like elastix's random sampler: a stochastic gradient that costs
    ``sample_fraction`` of the full one; the subsets are drawn from a generator seeded with
    ``seed``, so results are reproducible.

    Shapes:
        fixed_features, moving_features: ``(1, C, D, H, W)``;
        init_displacement: ``(1, 3, D, H, W)`` voxels; mask: ``(1, 1, D, H, W)`` or ``None``.
        returns: :class:`InstanceOptResult` with ``displacement`` ``(1, 3, D, H, W)`` voxels
        (detached) and the list of ``iterations`` losses.

    ``outside_diffusion`` must lie in ``[0, 1]``; 1 (the default) is the uniform penalty.

    ``fold_penalty > 0`` adds ``fold_penalty * fold_loss(v)`` (:func:`fold_loss`, on the smoothed
    parameter grid): voxels whose Jacobian determinant falls below :data:`FOLD_FLOOR` are pushed
    back, so the field does not fold where the weak outside penalty lets it change steeply.

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
    if not fold_penalty >= 0.0:
        raise GraphregError(f"fold_penalty: expected a number >= 0, got {fold_penalty}")
    if not 0.0 < sample_fraction <= 1.0:
        raise GraphregError(f"sample_fraction: expected a number in (0, 1], got {sample_fraction}")
    if iterations < 0 or smoothing_passes < 0 or mask_dilation < 0:
        raise GraphregError("iterations, smoothing_passes, mask_dilation: expected >= 0, got "
                            f"{iterations}, {smoothing_passes}, {mask_dilation}")
    fixed = fixed_features.detach()
    moving = moving_features.detach().to(fixed.dtype)
    weight = _masked_weight(mask, shape, mask_dilation, fixed)
    low = _coarse_shape(shape, grid_factor)
    diffusion_weight = _diffusion_weight(mask, low, outside_diffusion, fixed)
    sim_shape = shape
    if similarity_factor > 1:
        sim_shape = _coarse_shape(shape, similarity_factor)
        fixed = _downsample(fixed, similarity_factor, sim_shape)
        moving = _downsample(moving, similarity_factor, sim_shape)
        if weight is not None:
            weight = F.interpolate(weight, size=sim_shape, mode="trilinear",
                                   align_corners=ALIGN_CORNERS)
    # Voxels of zero weight add nothing to the similarity: sample the moving features only at
    # the others (the dilated lungs, about a third of the working box on lung CT).
    inside = (torch.ones(sim_shape, dtype=torch.bool, device=fixed.device) if weight is None
              else weight[0, 0] > 0).flatten().nonzero()[:, 0]  # (K,) flat voxel indices, ascending
    points = identity_grid(sim_shape, fixed.device, fixed.dtype)[0].flatten(1)[:, inside].T  # (K, 3) voxels
    fixed = fixed[0].flatten(1)[:, inside]  # (C, K)
    weight = torch.ones_like(fixed[0]) if weight is None else weight.flatten()[inside]  # (K,)
    count = inside.numel()
    if low != sim_shape:  # the parameter grid is coarser: sample the field at the points themselves
        # (K, 3) positions in parameter-grid voxels; parameter-grid displacements -> similarity-grid voxels
        low_points = points * voxel_scale(low, sim_shape, fixed.dtype, fixed.device)
        to_sim = voxel_scale(sim_shape, low, fixed.dtype, fixed.device)[:, None]
    # Channels-last: the C feature values of a voxel are adjacent, so each trilinear corner
    # fetch is one cache line instead of C (several times faster sampling on CPU).
    moving = moving.contiguous(memory_format=torch.channels_last_3d)
    generator = torch.Generator(device=fixed.device).manual_seed(seed)
    with torch.no_grad():
        start = resize_field(init_displacement.detach().to(fixed.dtype), low)
    param = torch.nn.Parameter(start.clone())
    optimiser = _Adam(param, lr)
    losses: list[float] = []
    for step in range(iterations):
        param.grad = None
        smooth = smooth_field(param, smoothing_passes)
        chosen = slice(None)
        if sample_fraction < 1.0:  # sorted indices keep memory locality; an empty draw keeps all
            drawn = (torch.rand(count, generator=generator, device=fixed.device) < sample_fraction).nonzero()[:, 0]
            chosen = drawn if drawn.numel() else chosen
        if low == sim_shape:
            field = smooth[0].flatten(1)[:, inside[chosen]]  # (3, K') at the sampled voxels
        else:  # trilinear, as resize_field's upsampling, at the sampled voxels only
            field = sample_points(smooth, low_points[chosen])[0] * to_sim
        residual = (fixed[:, chosen] - sample_points(moving, points[chosen] + field.T)[0]) ** 2
        sampled_weight = weight[chosen]
        similarity = (residual * sampled_weight).sum() / (sampled_weight.sum() * fixed.shape[0])
        loss = similarity + lambda_diffusion * diffusion_loss(smooth, diffusion_weight)
        if fold_penalty > 0.0:
            loss = loss + fold_penalty * fold_loss(smooth)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    with torch.no_grad():
        field = resize_field(smooth_field(param, smoothing_passes), shape)
    return InstanceOptResult(field.detach(), losses)


def instance_features(fixed_image: torch.Tensor, moving_image: torch.Tensor, radius: int,
                      config: "InstanceOptConfig", search_dilation: int | None = None,
                      search_features: tuple[torch.Tensor, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The MIND-SSC features the instance optimisation compares (dilation ``config.mind_dilation``).

    ``search_features`` (computed with ``search_dilation``) are returned as they are when that
    dilation is the configured one; otherwise both images' features are computed anew.

    Shapes:
        fixed_image, moving_image: ``(1, 1, D, H, W)``; returns two ``(1, 12, D, H, W)`` tensors.

    Raises:
        ConfigError: ``config.mind_dilation`` is not an integer >= 1.
    """
    dilation = config.mind_dilation
    if not is_int_at_least(dilation, 1):
        raise ConfigError(f"config key 'instance_opt.mind_dilation': expected an integer >= 1 voxels, got {dilation!r}")
    if search_features is not None and search_dilation == dilation:
        return search_features
    return mind_ssc(fixed_image, radius, dilation), mind_ssc(moving_image, radius, dilation)


def optimise_with_config(fixed_features: torch.Tensor, moving_features: torch.Tensor,
                         init_displacement: torch.Tensor, mask: torch.Tensor | None,
                         config: "InstanceOptConfig", seed: int = 0) -> tuple[torch.Tensor, dict]:
    """The configured instance optimisation: the coarse stage, then the full-resolution refinement.

    The coarse stage uses ``config``'s own settings; ``config.refine`` (when its ``iterations`` are
    positive) continues from its result with the parameter grid and the similarity on the working
    grid itself. Neither runs when ``config.enabled`` is false.

    Shapes:
        as :func:`instance_optimise`; returns the ``(1, 3, D, H, W)`` voxel field and the seconds of
        each stage that ran (``"instance_opt"``, ``"instance_opt_refine"``).
    """
    timings: dict[str, float] = {}
    field = init_displacement
    if not config.enabled:
        return field, timings
    if config.iterations > 0:
        start = time.perf_counter()
        field = instance_optimise(fixed_features, moving_features, field, mask=mask,
                                  iterations=config.iterations, lr=config.lr,
                                  lambda_diffusion=config.lambda_diffusion, grid_factor=config.grid_factor,
                                  smoothing_passes=config.smoothing_passes,
                                  similarity_factor=config.similarity_factor,
                                  sample_fraction=config.sample_fraction,
                                  outside_diffusion=config.outside_diffusion, fold_penalty=config.fold_penalty,
                                  seed=seed).displacement
        timings["instance_opt"] = time.perf_counter() - start
    refine = config.refine
    if refine.iterations > 0:
        start = time.perf_counter()
        field = instance_optimise(fixed_features, moving_features, field, mask=mask,
                                  iterations=refine.iterations, lr=refine.lr,
                                  lambda_diffusion=refine.lambda_diffusion, grid_factor=1,
                                  smoothing_passes=refine.smoothing_passes, similarity_factor=1,
                                  sample_fraction=refine.sample_fraction,
                                  outside_diffusion=config.outside_diffusion, fold_penalty=config.fold_penalty,
                                  seed=seed + 1).displacement
        timings["instance_opt_refine"] = time.perf_counter() - start
    return field, timings
