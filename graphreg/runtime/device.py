"""Which torch device a registration runs on."""

from __future__ import annotations

from typing import Optional

import torch

from graphreg.errors import GraphregError


def resolve_device(device: Optional[str]) -> torch.device:
    """``None`` -> CUDA when available, else CPU; an explicit ``"cuda"`` without a GPU is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise GraphregError(f"device: expected 'cpu' or 'cuda[:N]', got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise GraphregError("device: 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    return resolved
