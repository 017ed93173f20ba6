"""Diffeomorphic displacements from stationary velocity fields by scaling and squaring.

The flow ``phi = exp(v)`` of a stationary velocity field ``v`` is approximated by
``phi = (id + v / 2^n)^(2^n)``: the velocity is scaled down by ``2^n`` (a small, invertible
step) and the step is composed with itself ``n`` times. In displacements,
``u_0 = v / 2^n`` and ``u_{k+1} = u_k + u_k(x + u_k(x))`` (:func:`graphreg.core.spatial.compose`).

Convention:
    Velocities and displacements ``(B, 3, D, H, W)`` in voxels ``(z, y, x)`` of their grid,
    fixed -> moving; sampling outside the grid repeats the border (``padding_mode="border"``).
"""

from __future__ import annotations

import torch
from torch import nn

from graphreg.errors import ConfigError, ShapeError, is_int_at_least
from graphreg.core.spatial import compose


def _check_steps(steps: int) -> None:
    if not is_int_at_least(steps, 0):
        raise ConfigError(f"steps: expected an integer >= 0, got {steps!r}")


def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Displacement of ``exp(velocity)`` by ``steps`` squarings (``steps = 0`` returns ``velocity``).

    A constant velocity integrates to the same constant displacement (a translation); for smooth
    ``v``, ``exp(v)`` composed with ``exp(-v)`` is close to the identity.

    Shapes:
        velocity: ``(B, 3, D, H, W)`` voxels; returns the same shape (differentiable).
    """
    if not isinstance(velocity, torch.Tensor) or velocity.ndim != 5 or velocity.shape[1] != 3:
        raise ShapeError(f"velocity: expected shape (B, 3, D, H, W), got {tuple(getattr(velocity, 'shape', ()))}")
    _check_steps(steps)
    displacement = velocity / (2.0 ** steps)
    for _ in range(steps):
        displacement = compose(displacement, displacement)
    return displacement


class ScalingAndSquaring(nn.Module):
    """:func:`integrate_velocity` as a parameter-free module.

    Shapes:
        forward: velocity ``(B, 3, D, H, W)`` voxels -> displacement ``(B, 3, D, H, W)`` voxels.
    """

    def __init__(self, steps: int = 7) -> None:
        super().__init__()
        _check_steps(steps)
        self.steps = steps

    def forward(self, velocity: torch.Tensor) -> torch.Tensor:
        return integrate_velocity(velocity, self.steps)

    def extra_repr(self) -> str:
        return f"steps={self.steps}"


__all__ = ["ScalingAndSquaring", "integrate_velocity"]
