"""VoxelMorph-style U-Net registration network (Balakrishnan et al., IEEE TMI 2019; Dalca et al., MICCAI 2018).

The moving and fixed images are stacked as two channels and passed through a 3D U-Net (3x3x3
convolutions with LeakyReLU(0.2), max-pooling down, nearest-neighbour upsampling and skip
connections up); a 3x3x3 convolution with near-zero initial weights turns the last features into
a 3-channel field. With ``integration_steps > 0`` that field is a stationary velocity, integrated
by scaling and squaring (at ``1 / integration_downsize`` resolution) into a diffeomorphic
displacement.

Inputs of any size are padded (replicate) up to a multiple of ``2 ** len(encoder)`` and the output
is cropped back, so odd sizes work.

Convention:
    ``forward(fixed, moving)`` with images ``(B, 1, D, H, W)`` on the same grid returns the
    displacement ``(B, 3, D, H, W)`` in voxels ``(z, y, x)`` pointing fixed -> moving:
    ``warp(moving, u)`` is aligned with ``fixed``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from graphreg.errors import ConfigError, ShapeError, is_int_at_least
from graphreg.core.spatial import resize_field
from graphreg.training.checkpoint import LoadableModel, register_architecture
from graphreg.methods.cnn.integrate import integrate_velocity


def conv_block(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    """3x3x3 convolution (same size, ``dilation``) followed by LeakyReLU(0.2)."""
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, 3, padding=dilation, dilation=dilation),
                         nn.LeakyReLU(0.2))


def flow_head(in_channels: int, std: float = 1e-5) -> nn.Conv3d:
    """3x3x3 convolution to 3 channels with ``N(0, std)`` weights and zero bias (starts near identity)."""
    head = nn.Conv3d(in_channels, 3, 3, padding=1)
    nn.init.normal_(head.weight, 0.0, std)
    nn.init.zeros_(head.bias)
    return head


def check_pair(fixed: torch.Tensor, moving: torch.Tensor) -> None:
    """Raise :class:`ShapeError` unless both are ``(B, 1, D, H, W)`` of the same shape."""
    for name, image in (("fixed", fixed), ("moving", moving)):
        if not isinstance(image, torch.Tensor) or image.ndim != 5 or image.shape[1] != 1:
            raise ShapeError(f"{name}: expected shape (B, 1, D, H, W), got {tuple(getattr(image, 'shape', ()))}")
    if fixed.shape != moving.shape:
        raise ShapeError(f"moving: expected the fixed image's shape {tuple(fixed.shape)}, got {tuple(moving.shape)}")


def pad_to_multiple(volume: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Replicate-pad the end of each spatial axis up to a multiple of ``multiple``.

    Shapes:
        volume: ``(B, C, D, H, W)``; returns the padded volume and the original ``(D, H, W)``.
    """
    shape = tuple(volume.shape[2:])
    extra = [(-n) % multiple for n in shape]
    if any(extra):
        volume = F.pad(volume, (0, extra[2], 0, extra[1], 0, extra[0]), mode="replicate")
    return volume, shape


def _check_features(name: str, values: Sequence[int], minimum: int) -> list[int]:
    values = list(values)
    if len(values) < minimum or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ConfigError(f"{name}: expected at least {minimum} positive integers, got {values!r}")
    return values


class UNet3d(nn.Module):
    """The U-Net feature extractor (no output head).

    Args:
        in_channels: input channels.
        encoder: channels of the encoder levels; each level is a conv block then a 2x max-pool.
        decoder: channels of the decoder convolutions; the first ``len(encoder)`` are each
            followed by a 2x upsampling and the skip connection of the matching encoder level,
            the rest run at full resolution. Needs ``len(decoder) >= len(encoder)``.

    Shapes:
        forward: ``(B, in_channels, D, H, W)`` with ``D, H, W`` multiples of ``2 ** len(encoder)``
        -> ``(B, out_channels, D, H, W)``, ``out_channels = decoder[-1]`` (or the last
        concatenation's width when ``len(decoder) == len(encoder)``).
    """

    def __init__(self, in_channels: int, encoder: Sequence[int], decoder: Sequence[int]) -> None:
        super().__init__()
        encoder = _check_features("encoder", encoder, 1)
        decoder = _check_features("decoder", decoder, len(encoder))
        self.down = nn.ModuleList()
        channels = in_channels
        for width in encoder:
            self.down.append(conv_block(channels, width))
            channels = width
        self.up = nn.ModuleList()
        for level, width in enumerate(decoder[:len(encoder)]):
            self.up.append(conv_block(channels, width))
            channels = width + encoder[-1 - level]
        self.tail = nn.ModuleList()
        for width in decoder[len(encoder):]:
            self.tail.append(conv_block(channels, width))
            channels = width
        self.out_channels = channels
        self.factor = 2 ** len(encoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool3d(x, 2)
        for block in self.up:
            x = F.interpolate(block(x), scale_factor=2, mode="nearest")
            x = torch.cat([x, skips.pop()], dim=1)
        for block in self.tail:
            x = block(x)
        return x


@register_architecture("voxelmorph")
class VoxelMorph(LoadableModel):
    """VoxelMorph registration network: U-Net + flow head (+ optional scaling and squaring).

    Args:
        encoder, decoder: U-Net channels (see :class:`UNet3d`; the VoxelMorph defaults).
        integration_steps: squarings of the velocity field; 0 predicts the displacement directly.
        integration_downsize: the velocity is integrated at ``1 / integration_downsize``
            resolution and upsampled (VoxelMorph's ``int_downsize``; 1 = full resolution).

    Shapes:
        forward(fixed, moving): ``(B, 1, D, H, W)`` each, any size -> displacement
        ``(B, 3, D, H, W)`` voxels ``(z, y, x)``, fixed -> moving.
    """

    def __init__(self, encoder: Sequence[int] = (16, 32, 32, 32),
                 decoder: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
                 integration_steps: int = 7, integration_downsize: int = 2) -> None:
        super().__init__()
        if not is_int_at_least(integration_steps, 0):
            raise ConfigError(f"integration_steps: expected an integer >= 0, got {integration_steps!r}")
        if not is_int_at_least(integration_downsize, 1):
            raise ConfigError(f"integration_downsize: expected an integer >= 1, got {integration_downsize!r}")
        self.unet = UNet3d(2, encoder, decoder)
        self.flow = flow_head(self.unet.out_channels)
        self.integration_steps = integration_steps
        self.integration_downsize = integration_downsize

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        check_pair(fixed, moving)
        x, shape = pad_to_multiple(torch.cat([moving, fixed], dim=1), self.unet.factor)
        field = self.flow(self.unet(x))[:, :, :shape[0], :shape[1], :shape[2]]
        if self.integration_steps == 0:
            return field
        if self.integration_downsize == 1:
            return integrate_velocity(field, self.integration_steps)
        coarse = tuple(max(2, -(-n // self.integration_downsize)) for n in shape)
        velocity = resize_field(field, coarse)
        return resize_field(integrate_velocity(velocity, self.integration_steps), shape)


__all__ = ["UNet3d", "VoxelMorph", "check_pair", "conv_block", "flow_head", "pad_to_multiple"]
