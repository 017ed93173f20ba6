"""The checked way from two images and optional masks to a working pair, and the result's quality.

Shared by every method that registers on the working grid (:func:`graphreg.api.register`, the
classical and CNN methods of :mod:`graphreg.methods.cnn.register`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from graphreg.core.config import PreprocessConfig
from graphreg.methods.keypoint.preprocess import WorkingPair, working_pair
from graphreg.core.volume import Volume
from graphreg.checks.masks import CheckedMasks
from graphreg.checks.outcome import outcome_checks, quality_report
from graphreg.checks.prealign import Prealignment, prealign


def warner(progress: Optional[Callable[[str], None]]) -> Callable[[str], None]:
    """Where failed checks and fallbacks are told: the progress log, else Python's warnings."""
    if progress:
        return progress
    return lambda line: warnings.warn(line, stacklevel=4)


@dataclass
class CheckedPair:
    """A working pair with the mask checks and pre-alignment that made it.

    Attributes:
        pair: the :class:`~graphreg.methods.keypoint.preprocess.WorkingPair`.
        masks: the lung masks used, their checks and fallbacks.
        prealignment: the pre-alignment chosen and its check.
        seconds: time of the translation search (the masks are part of the preprocessing).
        warn: where later findings are told.
    """

    pair: WorkingPair
    masks: CheckedMasks
    prealignment: Prealignment
    seconds: float
    warn: Callable[[str], None]

    def quality(self, displacement: torch.Tensor, keypoint_spread_mm: Optional[torch.Tensor] = None,
                search_range_mm: float = 1.0, keypoint_residual_voxels: Optional[torch.Tensor] = None) -> dict:
        """``report.json``'s ``quality`` for a result (see :func:`graphreg.checks.outcome.outcome_checks`,
        whose arguments these are); a status other than ``ok`` is told with its reasons."""
        outcome, measured = outcome_checks(self.pair, displacement, keypoint_spread_mm, search_range_mm,
                                           self.masks.moving is not None, keypoint_residual_voxels)
        quality = quality_report(self.prealignment.checks + outcome, self.masks.fallbacks, measured,
                                 self.masks.checks)
        if quality["status"] != "ok":
            self.warn(f"{quality['status']}: " + "; ".join(quality["reasons"]))
        return quality

    def extras(self) -> dict:
        """``prealign`` and ``masks`` entries of ``report.json``."""
        return {"prealign": self.prealignment.report, "masks": self.masks.report()}


def checked_working_pair(fixed: Volume, moving: Volume, masks: CheckedMasks, config: PreprocessConfig,
                         device=None, warn: Callable[[str], None] = warner(None)) -> CheckedPair:
    """The checked pre-alignment (:func:`graphreg.checks.prealign.prealign`, which also replaces a
    missing fixed mask) and the working pair (:func:`graphreg.methods.keypoint.preprocess.working_pair`).

    Args:
        masks: from :func:`graphreg.checks.masks.checked_masks`.
        warn: receives a line for every failed check and fallback (see :func:`warner`).
    """
    start = time.perf_counter()
    prealignment = prealign(fixed, moving, masks, config, warn)
    seconds = time.perf_counter() - start
    pair = working_pair(fixed, moving, masks.fixed, masks.moving, config, device,
                        translation_mm=prealignment.translation_mm if config.prealign else None)
    return CheckedPair(pair, masks, prealignment, seconds, warn)
