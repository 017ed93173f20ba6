"""What every recipe runner shares: the ``train:`` section's settings and data preparation under DDP."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

from graphreg.errors import ConfigError
from graphreg.training.distributed import DistributedContext, init_distributed


@dataclass
class TrainSettings:
    """The ``train:`` section of a recipe, split for :func:`graphreg.training.train`.

    Attributes:
        options: keyword arguments of ``train`` (``steps``, ``lr``, ...) without ``seed`` and
            ``max_minutes``.
        seed: the run's seed (torch is seeded with it by :func:`train_settings`).
        max_minutes: wall-time budget of the whole run (data preparation included), or None.
        start: ``time.perf_counter()`` when the run began.
    """

    options: dict
    seed: int
    max_minutes: Optional[float]
    start: float = field(default_factory=time.perf_counter)

    def remaining_minutes(self) -> Optional[float]:
        """What is left of ``max_minutes`` now (at least a moment), or None without a budget."""
        if self.max_minutes is None:
            return None
        return max(self.max_minutes - (time.perf_counter() - self.start) / 60.0, 1e-3)


def train_settings(recipe: dict, max_minutes: Optional[float] = None) -> TrainSettings:
    """Read ``recipe["train"]``, seed torch; ``max_minutes`` (when given) overrides the recipe's.

    Raises:
        ConfigError: ``train.steps`` is missing.
    """
    options = dict(recipe["train"])
    if "steps" not in options:
        raise ConfigError("config key 'train.steps': required (total optimiser steps)")
    seed = int(options.pop("seed", 0))
    recipe_minutes = options.pop("max_minutes", None)
    torch.manual_seed(seed)
    return TrainSettings(options, seed, recipe_minutes if max_minutes is None else max_minutes)


@contextmanager
def prepared(data, device=None, progress: bool = True) -> Iterator[Optional[DistributedContext]]:
    """Run ``data.prepare()`` once per machine and yield the DDP context (None in one process).

    Under ``torchrun`` rank 0 prepares (synthesises and caches) the data while the other ranks
    wait, then they read the cache. The process group is destroyed on exit if this call made it.
    """
    ddp = init_distributed(device)
    try:
        if ddp is not None and not ddp.is_main:
            ddp.barrier()
        data.progress = progress and (ddp is None or ddp.is_main)
        data.prepare()
        if ddp is not None and ddp.is_main:
            ddp.barrier()
        yield ddp
    finally:
        if ddp is not None and ddp.owns_group:
            torch.distributed.destroy_process_group()
