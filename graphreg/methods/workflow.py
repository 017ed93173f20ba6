"""The steps every registration method shares: read and prepare the pair, then wrap the method's
working-grid displacement as a :class:`~graphreg.result.registration.Registration`.

Convention:
    :func:`read_inputs` reads the inputs and checks (or computes and checks) the lung masks,
    :func:`prepare_pair` builds the checked working pair (:mod:`graphreg.checks`); a method estimates a displacement in working voxels
    ``(z, y, x)``, fixed -> moving, *without* the pre-alignment translation, which
    :func:`wrap_registration` adds back together with the quality checks of the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from graphreg.checks.masks import CheckedMasks, checked_masks
from graphreg.checks.pair import CheckedPair, checked_working_pair, warner
from graphreg.core.config import PreprocessConfig
from graphreg.core.field import DisplacementField
from graphreg.io.inputs import as_optional_mask, as_volume
from graphreg.methods.keypoint.preprocess import WorkingPair
from graphreg.result.registration import Registration, working_lungs
from graphreg.core.volume import Volume


@dataclass
class PreparedPair:
    """A preprocessed pair and the original images it came from.

    Attributes:
        pair: the working pair (tensors on the chosen device).
        fixed, moving: the original volumes (HU, their own grids).
        seconds: time spent reading, checking the masks and preprocessing.
        checked: the mask checks and pre-alignment that made ``pair`` (:mod:`graphreg.checks`).
    """

    pair: WorkingPair
    fixed: Volume
    moving: Volume
    seconds: float
    checked: Optional[CheckedPair] = None


@dataclass
class PairInputs:
    """The images and lung masks of a registration, read and checked; nothing resampled yet.

    Attributes:
        fixed, moving: the images (HU, their own grids).
        masks: the lung masks after their checks and fallbacks (:mod:`graphreg.checks.masks`).
        read_seconds: time spent reading the images and the given masks.
        seconds: ``read_seconds`` plus computing and checking the masks.
        warn: where failed checks and fallbacks are told (:func:`graphreg.checks.pair.warner`).
    """

    fixed: Volume
    moving: Volume
    masks: CheckedMasks
    read_seconds: float
    seconds: float
    warn: Callable[[str], None]


def read_inputs(fixed: Any, moving: Any, fixed_mask: Any, moving_mask: Any,
                progress: Optional[Callable[[str], None]] = None) -> PairInputs:
    """Read the inputs (any form :func:`graphreg.api.register` takes) and check the given lung
    masks, or compute and check the missing ones."""
    start = time.perf_counter()
    fixed_volume = as_volume(fixed, "fixed")
    moving_volume = as_volume(moving, "moving")
    fixed_given = as_optional_mask(fixed_mask, "fixed_mask")
    moving_given = as_optional_mask(moving_mask, "moving_mask")
    read_seconds = time.perf_counter() - start
    warn = warner(progress)
    masks = checked_masks(fixed_volume, moving_volume, fixed_given, moving_given, warn)
    return PairInputs(fixed_volume, moving_volume, masks, read_seconds, time.perf_counter() - start, warn)


def prepare_pair(inputs: PairInputs, preprocess: PreprocessConfig, device: torch.device) -> PreparedPair:
    """The checked pre-alignment and the working pair of read inputs
    (:func:`graphreg.checks.pair.checked_working_pair`)."""
    start = time.perf_counter()
    checked = checked_working_pair(inputs.fixed, inputs.moving, inputs.masks, preprocess, device, inputs.warn)
    return PreparedPair(checked.pair, inputs.fixed, inputs.moving, inputs.seconds + time.perf_counter() - start,
                        checked)


@dataclass
class SparseStage:
    """The sparse displacements a keypoint method found before densifying them.

    Shapes:
        keypoints: ``(N, 3)`` working voxels ``(z, y, x)``; displacements: ``(N, 3)`` working voxels,
        fixed -> moving, pre-alignment excluded; spread_mm: ``(N,)`` mm, the standard deviation of
        each keypoint's displacement distribution; search_range_mm: the coarse search's reach (mm);
        residual_voxels: ``(N,)`` working voxels, how far the coarse search repeated around the
        final field would still move each keypoint (None: not measured).
    """

    keypoints: torch.Tensor
    displacements: torch.Tensor
    spread_mm: torch.Tensor
    search_range_mm: float
    residual_voxels: Optional[torch.Tensor] = None


def wrap_registration(prepared: PreparedPair, displacement: torch.Tensor, method: str, config: dict,
                      timings: dict, extras: Optional[dict] = None,
                      sparse: Optional[SparseStage] = None) -> Registration:
    """Wrap a working-grid displacement (pre-alignment excluded) as a :class:`Registration`.

    ``sparse`` (keypoint methods) adds the keypoints in world mm to the result and their spread to
    the quality checks.

    Shapes:
        displacement: ``(1, 3, D, H, W)`` working voxels ``(z, y, x)``, fixed -> moving, on
        ``prepared.pair.grid``.
    """
    pair = prepared.pair
    shift = pair.grid.mm_vectors_to_voxel(torch.as_tensor(pair.translation_mm, dtype=torch.float64))
    total = displacement.detach().float() + shift.to(displacement.device, torch.float32).view(1, 3, 1, 1, 1)
    from graphreg.methods.region import body_translation_mm

    info = {"prealign_translation_mm": np.round(pair.translation_mm, 3).tolist(),
            "body_translation_mm": np.round(body_translation_mm(prepared.fixed, prepared.moving), 3).tolist(),
            "working_size_xyz": list(pair.grid.size_xyz)}
    keypoint_outputs = {}
    if sparse is not None:
        spread_mm = sparse.spread_mm.double().cpu()  # float64 for the report
        keypoint_outputs = {
            "keypoints_mm": pair.grid.voxel_to_world(sparse.keypoints.double().cpu().numpy()),
            "keypoint_displacements_mm": pair.grid.voxel_vectors_to_mm(sparse.displacements.double().cpu().numpy())
            + pair.translation_mm,
            "keypoint_uncertainty_mm": spread_mm.numpy()}
    if prepared.checked is not None:
        quality = (prepared.checked.quality(displacement.detach()) if sparse is None else
                   prepared.checked.quality(displacement.detach(), spread_mm, sparse.search_range_mm,
                                            sparse.residual_voxels))
        info.update(prepared.checked.extras(), quality=quality)
    info.update(extras or {})
    return Registration(working_field=DisplacementField(total, pair.grid), fixed_grid=prepared.fixed.grid,
                        moving=prepared.moving, method=method, config=config, timings=timings, extras=info,
                        fixed_lungs=working_lungs(pair), **keypoint_outputs)


__all__ = ["PairInputs", "PreparedPair", "SparseStage", "prepare_pair", "read_inputs", "wrap_registration"]
