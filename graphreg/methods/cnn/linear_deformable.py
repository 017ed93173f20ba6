"""Linear + deformable registration network (Christodoulidis et al., "Linear and deformable image
registration with 3D convolutional neural networks", RAMBO/MICCAI workshops 2018).

One encoder of dilated 3x3x3 convolutions (all block outputs concatenated, so the receptive field
grows without pooling) feeds two branches:

- affine: global average pooling and a linear layer giving 12 parameters, ``A = I + dA`` and a
  translation ``t``, acting on voxel coordinates normalised to ``[-1, 1]`` about the volume
  centre (zero-initialised: the identity);
- deformable: 1x1x1 convolutions giving the *spatial gradients* of the deformation,
  ``g = 2 sigmoid(.)`` in ``(0, 2)`` (1 = no deformation), integrated by cumulative sums along
  each axis. Positive gradients make the deformable map monotonic along every axis, so it
  cannot fold along the axes.

The two are composed: the deformable map ``x -> x + d(x)`` first, then the affine map, so the
displacement is ``u(x) = d(x) + a(x + d(x))`` with ``a(p) = A p + t - p`` (evaluated exactly, no
resampling). The encoder and deformable branch run at ``1 / downsample`` resolution; ``d`` is
upsampled (trilinear, cell-centred) to the input grid.

Convention:
    ``forward(fixed, moving)`` with images ``(B, 1, D, H, W)`` (any size) returns the
    displacement ``(B, 3, D, H, W)`` in voxels ``(z, y, x)``, fixed -> moving.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from graphreg.errors import ConfigError, is_int_at_least
from graphreg.core.spatial import identity_grid
from graphreg.training.checkpoint import LoadableModel, register_architecture
from graphreg.methods.cnn.unet import check_pair, conv_block, pad_to_multiple


def gradients_to_displacement(gradients: torch.Tensor) -> torch.Tensor:
    """Displacement of the map whose forward differences along each axis are ``gradients``.

    Component ``c`` of the map is ``phi_c = cumsum(g_c, axis c) - 1``, so ``g = 1`` everywhere
    gives the identity (``phi_c(i) = i``); the result is ``phi - x``.

    Shapes:
        gradients: ``(B, 3, D, H, W)`` (channel ``c`` along axis ``c`` = z, y, x); returns the
        same shape, voxels.
    """
    phi = torch.stack([gradients[:, c].cumsum(dim=c + 1) - 1.0 for c in range(3)], dim=1)
    return phi - identity_grid(tuple(gradients.shape[2:]), gradients.device, gradients.dtype)


def affine_displacement(theta: torch.Tensor, points: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """``a(p) = A p + t - p`` for voxel positions ``points`` on a grid of ``shape``.

    ``theta`` holds ``dA`` (row-major 3x3, ``A = I + dA``) and ``t`` in coordinates normalised
    per axis to ``[-1, 1]`` (``n = (p - c) / h``, ``c = h = (size - 1) / 2``), order ``(z, y, x)``.

    Shapes:
        theta: ``(B, 12)``; points: ``(B, 3, D, H, W)`` voxels; returns ``(B, 3, D, H, W)`` voxels.
    """
    half = torch.tensor([max((n - 1) / 2, 0.5) for n in shape], dtype=points.dtype, device=points.device)
    half = half.view(1, 3, 1, 1, 1)
    normalised = points / half - 1.0
    delta = theta[:, :9].reshape(-1, 3, 3)
    moved = torch.einsum("bij,bj...->bi...", delta, normalised) + theta[:, 9:].reshape(-1, 3, 1, 1, 1)
    return moved * half


@register_architecture("linear-deformable")
class LinearDeformableNet(LoadableModel):
    """Shared dilated encoder, affine and deformable branches, composed.

    Args:
        features: output channels of the encoder's conv blocks.
        dilations: dilation of each conv block (same length as ``features``).
        head: channels of the hidden 1x1x1 layer of the deformable branch.
        downsample: the encoder works at ``1 / downsample`` resolution (average pooling).

    Shapes:
        forward(fixed, moving): ``(B, 1, D, H, W)`` each -> displacement ``(B, 3, D, H, W)``
        voxels ``(z, y, x)``, fixed -> moving. After a forward pass, :attr:`last_theta`
        ``(B, 12)`` and :attr:`last_gradients` ``(B, 3, d, h, w)`` hold the branch outputs for
        the paper's regularisers.
    """

    def __init__(self, features: Sequence[int] = (32, 32, 32, 32, 32), dilations: Sequence[int] = (1, 1, 2, 3, 5),
                 head: int = 32, downsample: int = 2) -> None:
        super().__init__()
        features, dilations = list(features), list(dilations)
        if not features or len(features) != len(dilations) or min(features + dilations) < 1:
            raise ConfigError(f"features, dilations: expected two lists of positive integers of one length, "
                              f"got {features!r} and {dilations!r}")
        if not is_int_at_least(downsample, 1):
            raise ConfigError(f"downsample: expected an integer >= 1, got {downsample!r}")
        self.blocks = nn.ModuleList()
        channels = 2
        for width, dilation in zip(features, dilations):
            self.blocks.append(conv_block(channels, width, dilation))
            channels = width
        total = sum(features)
        self.affine = nn.Linear(total, 12)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)
        self.deformable = nn.Sequential(nn.Conv3d(total, head, 1), nn.LeakyReLU(0.2), nn.Conv3d(head, 3, 1))
        nn.init.normal_(self.deformable[-1].weight, 0.0, 1e-5)
        nn.init.zeros_(self.deformable[-1].bias)
        self.downsample = downsample
        self.last_theta: torch.Tensor | None = None
        self.last_gradients: torch.Tensor | None = None

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        check_pair(fixed, moving)
        shape = tuple(fixed.shape[2:])
        x, _ = pad_to_multiple(torch.cat([moving, fixed], dim=1), self.downsample)
        if self.downsample > 1:
            x = F.avg_pool3d(x, self.downsample)
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        features = torch.cat(outputs, dim=1)
        theta = self.affine(features.mean(dim=(2, 3, 4)))
        gradients = 2.0 * torch.sigmoid(self.deformable(features))
        deformable = gradients_to_displacement(gradients)
        if self.downsample > 1:
            # cell-centred upsampling: coarse voxel i covers fine voxels [k i, k i + k)
            deformable = F.interpolate(deformable, scale_factor=self.downsample, mode="trilinear",
                                       align_corners=False) * self.downsample
            deformable = deformable[:, :, :shape[0], :shape[1], :shape[2]]
        self.last_theta, self.last_gradients = theta, gradients
        points = identity_grid(shape, fixed.device, deformable.dtype) + deformable
        return deformable + affine_displacement(theta, points, shape)


__all__ = ["LinearDeformableNet", "affine_displacement", "gradients_to_displacement"]
