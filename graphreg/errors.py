"""The library's own exceptions.

Every error that a user can cause (a bad file, a wrong shape, an odd argument) is raised as one of
these, with a message that names the file or argument, what was expected and what was found. All
of them subclass :class:`ValueError` so callers that already catch ``ValueError`` keep working.
"""

from __future__ import annotations

import math


class GraphregError(ValueError):
    """Base class of every error graphreg raises on purpose."""


class InputFileError(GraphregError):
    """A file is missing, unreadable, corrupt, or not of the expected format."""


class ShapeError(GraphregError):
    """An array or tensor does not have the documented shape."""


class GeometryError(GraphregError):
    """Images, grids, masks or fields do not fit together in physical space."""


class ConfigError(GraphregError):
    """A configuration has an unknown key or a value of the wrong type."""


class ResourceError(GraphregError):
    """A run would need more of a resource (memory) than the user allowed; nothing heavy was started."""


def is_int_at_least(value, minimum: int) -> bool:
    """Whether ``value`` is an ``int`` (not a ``bool``) of at least ``minimum``; callers raise
    their own error (type and message) when it is not."""
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum


def check_shape(name: str, value, expected: str, ok: bool) -> None:
    """Raise :class:`ShapeError` naming ``name`` when ``ok`` is false.

    Args:
        name: the argument's name as the user wrote it.
        value: the array or tensor (its ``shape`` is reported).
        expected: human-readable expected shape, e.g. ``"(N, 3)"``.
        ok: the result of the caller's check.
    """
    if not ok:
        shape = tuple(getattr(value, "shape", ()))
        raise ShapeError(f"{name}: expected shape {expected}, got {shape}")


def check_finite(name: str, value) -> None:
    """Raise :class:`GraphregError` when ``value`` (numpy array or tensor) holds NaN or Inf."""
    import numpy as np

    try:
        import torch

        if isinstance(value, torch.Tensor):
            flat = value.detach().reshape(-1)
            bad = 0
            if flat.is_floating_point() and flat.numel():
                low, high = torch.aminmax(flat)  # one pass, no copy; NaN propagates
                if not (bool(low > -math.inf) and bool(high < math.inf)):
                    # in chunks: torch.isfinite makes a float copy, and a bool sum an int64 one, of its input
                    bad = sum(int(chunk.numel() - torch.isfinite(chunk).sum(dtype=torch.int32))
                              for chunk in flat.split(1 << 22))
        else:
            bad = int(np.asarray(value).size - np.count_nonzero(np.isfinite(np.asarray(value))))
    except ImportError:  # pragma: no cover - torch is a hard dependency
        bad = int((~np.isfinite(np.asarray(value))).sum())
    if bad:
        raise GraphregError(f"{name}: expected finite values, found {bad} NaN/Inf entries")
