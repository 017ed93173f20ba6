"""The keypoint registration pipeline on the working grid: stages in order, timed.

keypoints -> MIND-SSC -> for each search level: correlation cost volume -> graph regulariser ->
densification; then Adam instance optimisation. Every displacement here is in working-grid voxels
``(z, y, x)``, fixed -> moving, *without* the pre-alignment translation (added by
:meth:`PipelineOutput.field`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field as dataclass_field
from typing import Callable, Optional

import torch

from graphreg.core.config import RegistrationConfig, SearchLevel
from graphreg.errors import ConfigError, GeometryError
from graphreg.core.field import DisplacementField
from graphreg.core.spatial import sample_points, warp
from graphreg.methods.keypoint.correlation import candidate_displacements, correlation_cost
from graphreg.methods.keypoint.densify import densify, densify_options
from graphreg.methods.keypoint.graph import knn_graph
from graphreg.methods.keypoint.instance_opt import instance_features, optimise_with_config
from graphreg.methods.keypoint.keypoints import foerstner_keypoints
from graphreg.ops.mind import mind_ssc
from graphreg.ops.unfold import FOLD_FLOOR, repair_folds
from graphreg.result.uncertainty import SCALES
from graphreg.methods.keypoint.preprocess import WorkingPair
from graphreg.methods.keypoint.regularise import (combine_symmetric_marginals, distribution_moments, regularise_mst_bp,
                         soft_displacements)

#: fewest keypoints the graph stages can work with
MIN_KEYPOINTS = 16


@dataclass
class PipelineOutput:
    """What the pipeline found on the working grid.

    Shapes:
        displacement: ``(1, 3, D, H, W)`` working voxels.
        keypoints: ``(N, 3)`` working voxels ``(z, y, x)``.
        keypoint_displacements: ``(N, 3)`` working voxels (sparse estimate before densification).
        keypoint_spread: ``(N,)`` standard deviation (working voxels) of each keypoint's
            displacement distribution at the first search level.
        keypoint_residual: ``(N, 3)`` working voxels, how far the first level's search repeated
            around the final field would still move each keypoint (:func:`residual_search`), or
            None when not asked for.
    """

    displacement: torch.Tensor
    keypoints: torch.Tensor
    keypoint_displacements: torch.Tensor
    keypoint_spread: torch.Tensor
    keypoint_residual: Optional[torch.Tensor] = None
    fold_repair: Optional[dict] = None  #: :func:`graphreg.ops.unfold.repair_folds`' report, None when off
    timings: dict = dataclass_field(default_factory=dict)

    def field(self, pair: WorkingPair) -> DisplacementField:
        """The full fixed -> moving field on the working grid, pre-alignment translation included."""
        shift = pair.grid.mm_vectors_to_voxel(torch.as_tensor(pair.translation_mm, dtype=torch.float64))
        shift = shift.to(self.displacement).view(1, 3, 1, 1, 1)
        return DisplacementField(self.displacement + shift, pair.grid)


def displacement_spread(marginals: torch.Tensor, candidates: torch.Tensor, gamma: float) -> torch.Tensor:
    """Standard deviation of the soft correspondence distribution ``softmax(-gamma * marginals)``.

    Shapes:
        marginals: ``(N, L)``; candidates: ``(L, 3)`` voxels; returns ``(N,)`` voxels.
    """
    return distribution_moments(-gamma * marginals, candidates)[1]


def _untimed(name: str, fn, *args, **kwargs):
    return fn(*args, **kwargs)


def keypoints_and_features(pair: WorkingPair, config: RegistrationConfig,
                           timed=_untimed) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Förstner keypoints in the fixed lungs and MIND-SSC features of both images.

    Args:
        timed: ``timed(stage_name, fn, *args)`` wrapper that records the stage's time.

    Returns:
        keypoints ``(N, 3)`` working voxels, fixed and moving features ``(1, 12, D, H, W)``.

    Raises:
        GeometryError: fewer than :data:`MIN_KEYPOINTS` keypoints.
    """
    kp_cfg = config.keypoints
    keypoints = timed("keypoints", foerstner_keypoints, pair.fixed, pair.fixed_mask, sigma=kp_cfg.sigma,
                      nms_size=kp_cfg.nms_size, num_points=kp_cfg.num_points, erode_mask=kp_cfg.erode_mask)
    if len(keypoints) < MIN_KEYPOINTS:
        raise GeometryError(f"fixed_mask: found only {len(keypoints)} keypoints inside the fixed lungs "
                            f"(need {MIN_KEYPOINTS}); check the mask and the image contrast")
    fixed_features = timed("mind", mind_ssc, pair.fixed, config.mind.radius, config.mind.dilation)
    moving_features = timed("mind", mind_ssc, pair.moving, config.mind.radius, config.mind.dilation)
    return keypoints, fixed_features, moving_features


def level_cost(fixed_features: torch.Tensor, moving_features: torch.Tensor, keypoints: torch.Tensor,
               level: SearchLevel, moving_shift: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The cost volume of one search level and its candidate displacements (around
    ``keypoints + moving_shift`` in the moving features, see
    :func:`~graphreg.methods.keypoint.correlation.correlation_cost`).

    Returns:
        cost ``(N, L)`` and candidates ``(L, 3)`` voxels, ``L = (2 radius + 1)^3``.
    """
    candidates = candidate_displacements(level.radius, level.step).to(keypoints)
    cost = correlation_cost(fixed_features, moving_features, keypoints, level.radius, level.step,
                            moving_shift=moving_shift)
    return cost.reshape(len(keypoints), -1), candidates


def level_tree_bp(cost: torch.Tensor, candidates: torch.Tensor, keypoints: torch.Tensor, level: SearchLevel,
                  k: int, inference: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The classical regulariser of one level: :func:`~graphreg.methods.keypoint.regularise.regularise_mst_bp`
    on its cost volume with the level's ``alpha`` and ``gamma``.

    Returns:
        displacements ``(N, 3)`` and marginals ``(N, L)`` (voxels, as ``regularise_mst_bp``).
    """
    return regularise_mst_bp(cost, candidates, keypoints, k=k, alpha=level.alpha, gamma=level.gamma,
                             inference=inference)


def regularised_search(fixed_features: torch.Tensor, moving_features: torch.Tensor, keypoints: torch.Tensor,
                       level: SearchLevel, k: int, symmetric: bool, inference: str,
                       moving_shift: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One level with the classical regulariser: cost volume, tree belief propagation, optional
    symmetric combination (not with ``moving_shift``, integer voxels ``(N, 3)`` around which each
    keypoint's candidates lie in the moving features).

    Returns:
        displacements ``(N, 3)`` relative to ``moving_shift`` and their spread ``(N,)`` (voxels,
        see :func:`displacement_spread`).
    """
    if symmetric and moving_shift is not None:
        raise ConfigError("symmetric: the symmetric search has no moving_shift")
    cost, candidates = level_cost(fixed_features, moving_features, keypoints, level, moving_shift)
    forward, marginals = level_tree_bp(cost, candidates, keypoints, level, k, inference)
    if symmetric:
        moved = keypoints + forward
        cost_back, _ = level_cost(moving_features, fixed_features, moved, level)
        _, marginals_back = level_tree_bp(cost_back, candidates, moved, level, k, inference)
        marginals = combine_symmetric_marginals(marginals, marginals_back, candidates)
        forward = soft_displacements(marginals, candidates, level.gamma)
    return forward, displacement_spread(marginals, candidates, level.gamma)


def residual_search(fixed_features: torch.Tensor, moving_features: torch.Tensor, keypoints: torch.Tensor,
                    displacement: torch.Tensor, level: SearchLevel, k: int, inference: str) -> torch.Tensor:
    """The classical regularised search of ``level`` repeated around a finished field: where the
    field is right, the keypoints stay within about a voxel; motion the pipeline missed (past
    the search range, or a wrong local optimum) moves many of them further.

    Each keypoint's candidates lie around where the field maps it, rounded to a voxel (no warp of
    the features); the result is measured from the field's own displacement there.

    Shapes:
        fixed_features, moving_features: ``(1, C, D, H, W)``; keypoints ``(N, 3)`` and
        displacement ``(1, 3, D, H, W)`` in working voxels; returns ``(N, 3)`` working voxels.
    """
    at_keypoints = sample_points(displacement, keypoints)[0].T.to(keypoints.dtype)  # (N, 3)
    shift = at_keypoints.round()
    delta, _ = regularised_search(fixed_features, moving_features, keypoints, level, k, False, inference, shift)
    return delta + shift - at_keypoints


def check_learned_level(model, level: SearchLevel) -> None:
    """Raise :class:`~graphreg.errors.ConfigError` unless ``level`` has the search grid ``model`` was trained on."""
    if level.radius != model.radius or float(level.step) != float(model.step):
        raise ConfigError(f"levels[0]: the GraphRegNet weights expect radius {model.radius} and step "
                          f"{model.step:g}, the config has radius {level.radius} and step {level.step:g}")


def learned_search(model, fixed_features: torch.Tensor, moving_features: torch.Tensor, keypoints: torch.Tensor,
                   level: SearchLevel) -> tuple[torch.Tensor, torch.Tensor]:
    """One level with GraphRegNet (:class:`graphreg.methods.graphregnet.GraphRegNet`) as the regulariser.

    Returns:
        displacements ``(N, 3)`` (soft-argmax) and their spread ``(N,)`` (voxels).

    Raises:
        ConfigError: the level's search grid is not the one the network was trained on.
    """
    check_learned_level(model, level)
    cost, candidates = level_cost(fixed_features, moving_features, keypoints, level)
    logits = model(cost, keypoints, knn_graph(keypoints, model.k))
    return distribution_moments(logits, candidates)


def blend_regularisers(learned: tuple[torch.Tensor, torch.Tensor], classical: tuple[torch.Tensor, torch.Tensor],
                       mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per keypoint, the network's and the classical regulariser's displacements combined by their
    calibrated predicted errors ``e = scale_median * spread`` (:data:`graphreg.result.uncertainty.SCALES`):
    ``"choose"`` the one of lower ``e``, ``"mean"`` the inverse-variance mean (weights ``1 / e^2``).

    Shapes:
        learned, classical: displacements ``(N, 3)`` and spreads ``(N,)`` voxels.
        returns: displacements ``(N, 3)`` and their spread ``(N,)`` voxels: the combined predicted
        error in the network's spread units (``/ SCALES["graphregnet"].scale_median``), so the
        network's calibration turns it back into the predicted error.
    """
    error_net = SCALES["graphregnet"].scale_median * learned[1]
    error_cls = SCALES["corrfield"].scale_median * classical[1]
    if mode == "choose":
        net = error_net <= error_cls
        blended, error = torch.where(net[:, None], learned[0], classical[0]), torch.where(net, error_net, error_cls)
    else:
        inv_net = 1.0 / error_net.clamp_min(1e-6) ** 2
        inv_cls = 1.0 / error_cls.clamp_min(1e-6) ** 2
        weight = (inv_net / (inv_net + inv_cls))[:, None]
        blended, error = weight * learned[0] + (1 - weight) * classical[0], (inv_net + inv_cls).rsqrt()
    return blended, error / SCALES["graphregnet"].scale_median


def run_keypoint_pipeline(pair: WorkingPair, config: RegistrationConfig, method: str = "corrfield",
                          progress: Optional[Callable[[str], None]] = None, model=None,
                          given: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                          residual: bool = True) -> PipelineOutput:
    """Run every stage on a preprocessed pair (see :func:`graphreg.methods.keypoint.preprocess.working_pair`).

    Args:
        method: ``"corrfield"`` (classical regulariser at every level) or ``"graphregnet"``
            (``model`` regularises the first, coarse level; the finer levels stay classical).
        model: a :class:`graphreg.methods.graphregnet.GraphRegNet` for ``method="graphregnet"``.
        given: diagnostics (the benchmark's ``oracle``): ``given(keypoints)`` gives displacements
            ``(N, 3)`` (working voxels, without the pre-alignment) at the keypoints ``(N, 3)``, which
            replace every search level (spread 0; ``method`` is ignored). Densification and instance
            optimisation are unchanged, so with the true displacements it shows the best any keypoint
            regulariser could reach through them.
        residual: also run :func:`residual_search` at the first level around the final field (for
            the quality checks; with the features the instance optimisation compared).
    """
    timings: dict = {}
    say = progress or (lambda line: None)

    def timed(name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        value = fn(*args, **kwargs)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        return value

    if given is None and method == "graphregnet" and model is None:
        raise ConfigError("model: method 'graphregnet' needs a GraphRegNet (weights path or module)")
    with torch.no_grad():
        keypoints, fixed_features, moving_features = keypoints_and_features(pair, config, timed)
        say(f"keypoints: {len(keypoints)} ({timings['keypoints']:.1f} s)")
        say(f"mind: 2 x {tuple(fixed_features.shape[1:])} ({timings['mind']:.1f} s)")

        shape = tuple(pair.fixed.shape[2:])
        dense = torch.zeros((1, 3) + shape, dtype=fixed_features.dtype, device=fixed_features.device)
        sparse = torch.zeros_like(keypoints)
        spread = None
        levels = config.levels[:1] if given is not None else config.levels  # given displacements need no refining
        for index, level in enumerate(levels):
            warped = moving_features if index == 0 else timed("warp", warp, moving_features, dense)
            if given is not None:
                delta = timed(f"search_{index + 1}", given, keypoints)
                level_spread = torch.zeros_like(delta[:, 0])
            elif method == "graphregnet" and index == 0:
                delta, level_spread = timed(f"search_{index + 1}", learned_search, model, fixed_features, warped,
                                            keypoints, level)
                if config.regulariser.blend != "none":
                    classical = timed(f"search_{index + 1}", regularised_search, fixed_features, warped, keypoints,
                                      level, config.regulariser.k, config.regulariser.symmetric,
                                      config.regulariser.inference)
                    delta, level_spread = blend_regularisers((delta, level_spread), classical,
                                                             config.regulariser.blend)
            else:
                delta, level_spread = timed(
                    f"search_{index + 1}", regularised_search, fixed_features, warped, keypoints, level,
                    config.regulariser.k, config.regulariser.symmetric, config.regulariser.inference)
            if spread is None:
                spread = level_spread
            previous = sample_points(dense, keypoints)[0].T if index else torch.zeros_like(keypoints)
            sparse = previous + delta
            dense = timed("densify", densify, keypoints, sparse, shape, method=config.densify.method,
                          **densify_options(config, level_spread))
            say(f"level {index + 1}: ±{level.radius * level.step:g} voxels in steps of {level.step:g}, "
                f"mean |d| {sparse.norm(dim=1).mean():.2f} voxels ({timings[f'search_{index + 1}']:.1f} s)")

        io_cfg = config.instance_opt
        if io_cfg.runs():
            del warped  # the last level's warped features are not needed any more
            fixed_features, moving_features = timed(
                "mind_io", instance_features, pair.fixed, pair.moving, config.mind.radius, io_cfg,
                config.mind.dilation, (fixed_features, moving_features))
    dense, io_timings = optimise_with_config(fixed_features, moving_features, dense, pair.fixed_mask,
                                             io_cfg, config.seed)
    timings.update(io_timings)
    if io_timings:
        say(f"instance optimisation: {io_cfg.iterations} + {io_cfg.refine.iterations} (full resolution) "
            f"Adam steps ({sum(io_timings.values()):.1f} s)")
    dense = dense.detach()
    repair = None
    if io_cfg.repair_folds:
        dense, repair = timed("repair_folds", repair_folds, dense)
        if repair["voxels_below_before"]:
            say(f"fold repair: {repair['voxels_below_before']} voxels with Jacobian determinant < {FOLD_FLOOR:g}, "
                f"{repair['voxels_changed']} smoothed, {repair['voxels_below_after']} left "
                f"({timings['repair_folds']:.1f} s)")
    moved = None
    if residual:
        with torch.no_grad():
            moved = timed("residual_search", residual_search, fixed_features, moving_features, keypoints, dense,
                          config.levels[0], config.regulariser.k, config.regulariser.inference)
    return PipelineOutput(dense, keypoints, sparse, spread, keypoint_residual=moved, fold_repair=repair,
                          timings=timings)


