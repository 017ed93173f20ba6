"""Image similarity and displacement regularisation losses shared by every trainer and optimiser.

Similarities compare the fixed image with the warped moving image; each is ``0`` for identical
images and decreases as the images align:

- :func:`mse_loss`: mean squared intensity difference.
- :func:`ncc_loss`: ``1 - mean`` squared local normalised cross-correlation over a cubic window
  (VoxelMorph's local NCC).
- :func:`mind_loss`: mean squared difference of MIND-SSC descriptors
  (:func:`graphreg.ops.mind.mind_ssc`), robust to the density change of breathing lungs.

Regularisers penalise non-smooth displacements:

- :func:`diffusion_loss`: squared first derivatives (forward differences).
- :func:`bending_loss`: squared second derivatives (central differences, mixed terms twice).

:class:`RegistrationLoss` combines one similarity and one regulariser by name, which is what the
training configs select.

Convention:
    - Images ``(B, 1, D, H, W)`` (any intensity scale; the library's working images lie in
      ``[0, 1]``); masks ``(B or 1, 1, D, H, W)``, non-zero = voxels that count.
    - Displacements ``(B, 3, D, H, W)`` in voxels ``(z, y, x)``; regularisers are in voxel units
      (squared voxels per squared voxel), averaged over voxels and batch.
    - Every loss returns a 0-dim tensor and is differentiable with respect to all tensor inputs
      (masks excepted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from graphreg.errors import ConfigError, GraphregError, ShapeError, check_shape, is_int_at_least
from graphreg.ops.filters import box_filter
from graphreg.ops.mind import mind_ssc


def _check_images(fixed: torch.Tensor, warped: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
    for name, image in (("fixed", fixed), ("warped", warped)):
        if not isinstance(image, torch.Tensor) or image.ndim != 5 or image.shape[1] != 1:
            raise ShapeError(f"{name}: expected shape (B, 1, D, H, W), "
                             f"got {tuple(getattr(image, 'shape', ()))}")
    if fixed.shape != warped.shape:
        raise ShapeError(f"warped: expected the fixed image's shape {tuple(fixed.shape)}, "
                         f"got {tuple(warped.shape)}")
    if mask is not None:
        ok = (isinstance(mask, torch.Tensor) and mask.ndim == 5 and mask.shape[1] == 1
              and mask.shape[0] in (1, fixed.shape[0]) and mask.shape[2:] == fixed.shape[2:])
        if not ok:
            raise ShapeError(f"mask: expected shape (B or 1, 1, {', '.join(map(str, fixed.shape[2:]))}), "
                             f"got {tuple(getattr(mask, 'shape', ()))}")


def _check_field(name: str, displacement: torch.Tensor, minimum: int) -> None:
    if not isinstance(displacement, torch.Tensor) or displacement.ndim != 5 or displacement.shape[1] != 3:
        raise ShapeError(f"{name}: expected shape (B, 3, D, H, W), "
                         f"got {tuple(getattr(displacement, 'shape', ()))}")
    if min(displacement.shape[2:]) < minimum:
        raise ShapeError(f"{name}: expected at least {minimum} voxels along each axis, "
                         f"got {tuple(displacement.shape)}")


def _mean(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of ``values`` ``(B, C, D, H, W)`` over everything, or over the voxels where ``mask`` > 0."""
    if mask is None:
        return values.mean()
    weights = (mask > 0).to(values.dtype).expand(values.shape[0], 1, *values.shape[2:])
    total = weights.sum() * values.shape[1]
    if total == 0:
        raise GraphregError("mask: expected at least one non-zero voxel, got an empty mask")
    return (values * weights).sum() / total


# ---------------------------------------------------------------------- similarities
def mse_loss(fixed: torch.Tensor, warped: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared intensity difference ``mean((F - W)^2)``.

    Shapes:
        fixed, warped: ``(B, 1, D, H, W)``; mask: ``(B or 1, 1, D, H, W)`` or None; returns ``()``.
    """
    _check_images(fixed, warped, mask)
    return _mean((fixed - warped).square(), mask)


def ncc_loss(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9,
             mask: Optional[torch.Tensor] = None, eps: float = 1e-5) -> torch.Tensor:
    """``1 - mean`` squared local normalised cross-correlation (VoxelMorph's local NCC).

    For every voxel, with local means over a ``window``:sup:`3` cube (replicate padding)::

        cc(x) = cov(F, W)^2 / (var(F) var(W) + eps)

    ``cc`` lies in ``[0, 1]`` (1 where ``W`` is locally an affine function of ``F``), so the loss
    lies in ``[0, 1]`` and is invariant to ``a * W + b``.

    Args:
        window: odd side length of the cube, in voxels.
        eps: stabiliser added to the variance product (squared intensity units).

    Shapes:
        fixed, warped: ``(B, 1, D, H, W)``; mask: ``(B or 1, 1, D, H, W)`` or None; returns ``()``.
    """
    _check_images(fixed, warped, mask)
    if not is_int_at_least(window, 1) or window % 2 == 0:
        raise GraphregError(f"window: expected an odd integer >= 1 voxels, got {window!r}")
    radius = window // 2
    stacked = torch.cat([fixed, warped, fixed * fixed, warped * warped, fixed * warped], dim=1)
    mean_f, mean_w, mean_ff, mean_ww, mean_fw = box_filter(stacked, radius).unbind(1)
    cov = mean_fw - mean_f * mean_w
    var_f = (mean_ff - mean_f * mean_f).clamp_min(0)
    var_w = (mean_ww - mean_w * mean_w).clamp_min(0)
    cc = cov * cov / (var_f * var_w + eps)
    return 1.0 - _mean(cc[:, None], mask)


def mind_loss(fixed: torch.Tensor, warped: torch.Tensor, radius: int = 1, dilation: int = 2,
              mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared difference of the MIND-SSC descriptors of both images (12 channels).

    Args:
        radius, dilation: MIND-SSC patch radius and neighbourhood distance (voxels), see
            :func:`graphreg.ops.mind.mind_ssc`.

    Shapes:
        fixed, warped: ``(B, 1, D, H, W)``; mask: ``(B or 1, 1, D, H, W)`` or None; returns ``()``.
    """
    _check_images(fixed, warped, mask)
    return _mean((mind_ssc(fixed, radius, dilation) - mind_ssc(warped, radius, dilation)).square(), mask)


# ---------------------------------------------------------------------- regularisers
class _DiffusionEnergy(torch.autograd.Function):
    """:func:`diffusion_loss` with a hand-written backward (the weight is a constant).

    For axis ``a`` with differences ``d = u(x + e_a) - u(x)`` and pair weights ``p``, the energy
    ``mean(p |d|^2)`` has gradient ``2 p d / n`` added at ``x + e_a`` and subtracted at ``x``: two
    in-place additions per axis, about half the time of autograd's record of ``diff``, ``square``,
    ``sum``, the weight products and ``mean`` on large fields.
    """

    @staticmethod
    def forward(ctx, displacement: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(displacement, weight)
        total = displacement.new_zeros(())
        for _, difference, pair in _differences(displacement, weight):
            squared = difference.square().sum(1, keepdim=True)
            total = total + (squared if pair is None else squared * pair).mean()
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        displacement, weight = ctx.saved_tensors
        grad = torch.zeros_like(displacement)
        for dim, difference, pair in _differences(displacement, weight):
            scale = 2.0 * grad_output * difference.shape[1] / difference.numel()  # 2 / (B * positions)
            difference.mul_(scale if pair is None else pair * scale)
            count = difference.shape[dim]
            grad.narrow(dim, 1, count).add_(difference)
            grad.narrow(dim, 0, count).sub_(difference)
        return grad, None


def _differences(displacement: torch.Tensor, weight: Optional[torch.Tensor]):
    """``(dim, d, p)`` for every spatial axis ``dim`` with more than one voxel: the forward
    differences ``d`` ``(B, 3, ...)`` along it and ``p`` ``(B or 1, 1, ...)``, the product of the
    weights of each difference's two voxels (``None`` without weight)."""
    for dim in (2, 3, 4):
        count = displacement.shape[dim] - 1
        if count >= 1:
            pair = None if weight is None else weight.narrow(dim, 0, count) * weight.narrow(dim, 1, count)
            yield dim, torch.diff(displacement, dim=dim), pair


def diffusion_loss(displacement: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Diffusion energy: ``sum over axes a of mean_x w_a(x) |u(x + e_a) - u(x)|^2`` (forward differences).

    ``|.|^2`` sums the three components; the mean runs over the batch and the positions that
    have a forward neighbour along ``a``. Without ``weight`` every difference counts fully
    (``w_a = 1``): a linear field ``u_z = g * z`` gives ``g^2``; any translation gives 0. With a
    ``weight`` map, a difference counts with the product of the weights of its two voxels, so a
    weight below 1 outside the lungs lets the field change steeply there (sliding at the pleura)
    without that region's differences being penalised as strongly; the weight is a constant (no
    gradient flows to it). An axis of a single voxel has no differences and contributes nothing. Dimensionless when ``u`` is in voxels of its own grid.
    This is the one diffusion penalty of the library (training losses and
    :func:`graphreg.methods.keypoint.instance_opt.instance_optimise`).

    Shapes:
        displacement: ``(B, 3, D, H, W)`` voxels; weight: ``(B or 1, 1, D, H, W)`` or ``None``;
        returns ``()``.
    """
    _check_field("displacement", displacement, 1)
    if weight is not None:
        check_shape("weight", weight, f"(B or 1, 1, {', '.join(map(str, displacement.shape[2:]))})",
                    weight.ndim == 5 and weight.shape[1] == 1 and weight.shape[0] in (1, displacement.shape[0])
                    and weight.shape[2:] == displacement.shape[2:])
    return _DiffusionEnergy.apply(displacement, None if weight is None else weight.detach().to(displacement.dtype))


def _central_second(u: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """``d^2 u / (d axis_a d axis_b)`` at interior voxels by central differences (a, b in 2..4)."""
    def part(offsets: dict) -> torch.Tensor:
        index = [slice(None), slice(None)]
        for dim in (2, 3, 4):
            shift = offsets.get(dim, 0)
            index.append(slice(1 + shift, u.shape[dim] - 1 + shift))
        return u[tuple(index)]

    if a == b:
        return part({a: 1}) - 2.0 * part({}) + part({a: -1})
    return 0.25 * (part({a: 1, b: 1}) - part({a: 1, b: -1}) - part({a: -1, b: 1}) + part({a: -1, b: -1}))


def bending_loss(displacement: torch.Tensor) -> torch.Tensor:
    """Bending energy: ``sum over axes a, b of mean |d^2 u / (dx_a dx_b)|^2`` at interior voxels.

    Mixed derivatives appear twice (``ab`` and ``ba``), as in the thin-plate bending energy. Any
    affine field gives 0; ``u_z = c z^2 / 2`` gives ``c^2``; ``u_z = c y x`` gives ``2 c^2``.

    Shapes:
        displacement: ``(B, 3, D, H, W)`` voxels, at least 3 voxels per axis; returns ``()``.
    """
    _check_field("displacement", displacement, 3)
    total = displacement.new_zeros(())
    for a in (2, 3, 4):
        for b in range(a, 5):
            term = _central_second(displacement, a, b).square().sum(1).mean()
            total = total + (term if a == b else 2.0 * term)
    return total


#: similarity losses by config name: ``fn(fixed, warped, mask=None, **options)``
SIMILARITIES: dict[str, Callable[..., torch.Tensor]] = {"mse": mse_loss, "ncc": ncc_loss, "mind": mind_loss}
#: regularisers by config name: ``fn(displacement)``
REGULARISERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "diffusion": diffusion_loss, "bending": bending_loss}


@dataclass
class RegistrationLoss:
    """``similarity(fixed, warped) + weight * regulariser(displacement)``, chosen by name.

    Attributes:
        similarity: a key of :data:`SIMILARITIES` (``"mse"``, ``"ncc"``, ``"mind"``).
        regulariser: a key of :data:`REGULARISERS` (``"diffusion"``, ``"bending"``).
        weight: weight of the regulariser (dimensionless, >= 0).
        similarity_options: keyword arguments of the similarity (``window`` for NCC;
            ``radius``, ``dilation`` for MIND).

    Shapes:
        ``__call__(fixed, warped, displacement, mask=None)``: images ``(B, 1, D, H, W)``,
        displacement ``(B, 3, D, H, W)`` voxels, mask ``(B or 1, 1, D, H, W)`` or None; returns
        ``(total, parts)`` with ``total`` a 0-dim tensor and ``parts`` the float value of each term.
    """

    similarity: str = "ncc"
    regulariser: str = "diffusion"
    weight: float = 1.0
    similarity_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ConfigError(f"similarity: expected one of {sorted(SIMILARITIES)}, got {self.similarity!r}")
        if self.regulariser not in REGULARISERS:
            raise ConfigError(f"regulariser: expected one of {sorted(REGULARISERS)}, got {self.regulariser!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or self.weight < 0:
            raise ConfigError(f"weight: expected a number >= 0, got {self.weight!r}")
        allowed = {"mse": set(), "ncc": {"window", "eps"}, "mind": {"radius", "dilation"}}[self.similarity]
        unknown = sorted(set(self.similarity_options) - allowed)
        if unknown:
            raise ConfigError(f"similarity_options: {self.similarity!r} takes {sorted(allowed) or 'no options'}, "
                              f"got {unknown[0]!r}")

    def __call__(self, fixed: torch.Tensor, warped: torch.Tensor, displacement: torch.Tensor,
                 mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, float]]:
        similarity = SIMILARITIES[self.similarity](fixed, warped, mask=mask, **self.similarity_options)
        regularity = REGULARISERS[self.regulariser](displacement)
        total = similarity + self.weight * regularity
        return total, {self.similarity: float(similarity.detach()), self.regulariser: float(regularity.detach())}


__all__ = ["REGULARISERS", "SIMILARITIES", "RegistrationLoss", "bending_loss", "diffusion_loss", "mind_loss",
           "mse_loss", "ncc_loss"]
