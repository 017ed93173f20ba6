"""DIRNet-style network predicting cubic B-spline control-point displacements (de Vos et al.,
"End-to-end unsupervised deformable image registration with a convolutional neural network",
DLMIA 2017).

The moving and fixed images are stacked and encoded by conv blocks with 2x average pooling
between them, down to roughly the control-point resolution; the features are resampled
(trilinear) onto the control grid and a small head predicts 3 coefficients per control point.
The dense displacement is the cubic B-spline they define, evaluated exactly by the library's
:func:`graphreg.methods.keypoint.densify.evaluate_bspline` — smooth by construction, with
``control_spacing`` setting its stiffness.

Convention:
    ``forward(fixed, moving)`` with images ``(B, 1, D, H, W)`` (any size) returns the
    displacement ``(B, 3, D, H, W)`` in voxels ``(z, y, x)``, fixed -> moving; the control grid
    is ``bspline_control_shape((D, H, W), control_spacing)`` with control point ``c`` at voxel
    ``(c - 1) * control_spacing`` along each axis.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from graphreg.errors import ConfigError, is_int_at_least
from graphreg.methods.keypoint.densify import bspline_control_shape, evaluate_bspline
from graphreg.training.checkpoint import LoadableModel, register_architecture
from graphreg.methods.cnn.unet import check_pair, conv_block


@register_architecture("bspline-cnn")
class BSplineNet(LoadableModel):
    """Conv/pool encoder -> control-grid coefficients -> cubic B-spline displacement.

    Args:
        features: channels of the encoder's conv blocks; a 2x average pooling follows every block
            but the last (``len(features) - 1`` poolings; 4 blocks reach 1/8 resolution).
        control_spacing: distance between control points (working voxels).
        head: channels of the hidden layer of the coefficient head.

    Shapes:
        forward(fixed, moving): ``(B, 1, D, H, W)`` each -> displacement ``(B, 3, D, H, W)``
        voxels ``(z, y, x)``, fixed -> moving. :meth:`coefficients` gives the control grid
        ``(B, 3, cz, cy, cx)`` in voxels.
    """

    def __init__(self, features: Sequence[int] = (16, 32, 32, 32), control_spacing: int = 8,
                 head: int = 32) -> None:
        super().__init__()
        features = list(features)
        if not features or not all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in features):
            raise ConfigError(f"features: expected a non-empty list of positive integers, got {features!r}")
        if not is_int_at_least(control_spacing, 1):
            raise ConfigError(f"control_spacing: expected an integer >= 1 voxels, got {control_spacing!r}")
        self.blocks = nn.ModuleList()
        channels = 2
        for width in features:
            self.blocks.append(nn.Sequential(conv_block(channels, width), conv_block(width, width)))
            channels = width
        out = nn.Conv3d(head, 3, 1)
        nn.init.normal_(out.weight, 0.0, 1e-5)
        nn.init.zeros_(out.bias)
        self.head = nn.Sequential(conv_block(channels, head), out)
        self.control_spacing = control_spacing

    def coefficients(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """Control-point displacements ``(B, 3, cz, cy, cx)`` in voxels."""
        check_pair(fixed, moving)
        control = bspline_control_shape(tuple(fixed.shape[2:]), self.control_spacing)
        x = torch.cat([moving, fixed], dim=1)
        for index, block in enumerate(self.blocks):
            if index:
                x = F.avg_pool3d(x, 2, ceil_mode=True)
            x = block(x)
        x = F.interpolate(x, size=control, mode="trilinear", align_corners=True)
        return self.head(x)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        coefficients = self.coefficients(fixed, moving)
        return evaluate_bspline(coefficients, tuple(fixed.shape[2:]), self.control_spacing)


__all__ = ["BSplineNet"]
