"""Training GraphRegNet: losses, validation and the recipe runner behind ``graphreg train``.

Recipe (``configs/graphregnet.yaml``)::

    architecture: graphregnet
    model: {radius: 8, step: 2, k: 15, graph: edgeconv}     # GraphRegNet arguments
    registration: {}             # RegistrationConfig overrides the samples reproduce (levels[0]
                                 # must match model radius/step)
    data: {pool_size: 16, validation_size: 2, loss_points: 4000, sampler: {...}}
    loss: {supervision: unsupervised, smoothness: 0.01}
    train: {steps: 300, lr: 0.003, ...}                      # graphreg.training.train arguments

Losses (per sample; ``d`` = soft-argmax keypoint displacements, voxels):

- ``unsupervised``: mean squared MIND-SSC difference between the fixed image and the moving
  image warped by the thin-plate-spline densification of ``d``, at points inside the fixed lungs,
  plus ``smoothness`` x the mean squared difference of ``d`` along the kNN graph's edges.
- ``supervised``: mean Euclidean distance (voxels) between ``d`` and the generator's ground truth.

Both report ``error_mm``, the mean keypoint error against the ground truth, for monitoring;
validation also reports ``classical_mm``, the classical regulariser's error on the same samples.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional, Union

import torch

from graphreg.core.config import RegistrationConfig, load_config
from graphreg.errors import ConfigError
from graphreg.methods.keypoint.correlation import candidate_displacements
from graphreg.methods.keypoint.driver import check_learned_level, level_tree_bp
from graphreg.methods.keypoint.graph import knn_graph
from graphreg.methods.keypoint.regularise import distribution_moments
from graphreg.core.spatial import sample_points
from graphreg.training.checkpoint import build_model
from graphreg.training.loop import TrainingResult, checkpoints_by_step, train
from graphreg.training.recipes import prepared, train_settings
from graphreg.methods.graphregnet.data import GraphTrainingData, KeypointGraphSample

#: supervision modes of the loss
SUPERVISION = ("unsupervised", "supervised")


def predict(model, sample: KeypointGraphSample) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft-argmax displacements ``(N, 3)``, spreads ``(N,)`` (voxels) and the graph's edges."""
    edge_index = knn_graph(sample.keypoints, model.k)
    logits = model(sample.cost, sample.keypoints, edge_index)
    candidates = candidate_displacements(model.radius, model.step).to(logits)
    mean, spread = distribution_moments(logits, candidates)
    return mean, spread, edge_index


def image_dissimilarity(sample: KeypointGraphSample, displacements: torch.Tensor) -> torch.Tensor:
    """Mean squared MIND difference after warping by the TPS densification of ``displacements``."""
    moved = sample.points + sample.tps_operator @ displacements
    moving = sample_points(sample.moving_features.float()[None], moved)[0].T
    return ((moving - sample.fixed_features) ** 2).mean()


def graph_roughness(displacements: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """Mean squared difference (voxels^2) of the displacements at the two ends of every edge."""
    return ((displacements[edge_index[0]] - displacements[edge_index[1]]) ** 2).sum(1).mean()


def keypoint_error_mm(sample: KeypointGraphSample, displacements: torch.Tensor) -> torch.Tensor:
    """Mean distance (mm) between predicted and ground-truth keypoint displacements."""
    return (displacements - sample.target).norm(dim=1).mean() * sample.spacing_mm


def graph_loss_fn(supervision: str = "unsupervised", smoothness: float = 0.01):
    """``loss_fn(model, sample) -> (loss, parts)`` for :func:`graphreg.training.train`.

    Raises:
        ConfigError: an unknown ``supervision`` or a negative ``smoothness``.
    """
    if supervision not in SUPERVISION:
        raise ConfigError(f"loss.supervision: expected one of {', '.join(SUPERVISION)}, got {supervision!r}")
    if not smoothness >= 0:
        raise ConfigError(f"loss.smoothness: expected a value >= 0, got {smoothness!r}")

    def loss_fn(model, sample: KeypointGraphSample):
        mean, _, edges = predict(model, sample)
        error = keypoint_error_mm(sample, mean)
        if supervision == "supervised":
            loss = (mean - sample.target).norm(dim=1).mean()
            return loss, {"error_mm": error.detach()}
        similarity = image_dissimilarity(sample, mean)
        loss = similarity + smoothness * graph_roughness(mean, edges)
        return loss, {"similarity": similarity.detach(), "error_mm": error.detach()}

    return loss_fn


def classical_error_mm(samples: list[KeypointGraphSample], config: RegistrationConfig) -> float:
    """Mean keypoint error (mm) of the classical regulariser (tree belief propagation with
    ``config``'s first level and regulariser settings) on the same cost volumes: the bar a trained
    network has to clear."""
    level, regulariser = config.levels[0], config.regulariser
    candidates = candidate_displacements(level.radius, level.step)
    errors = []
    with torch.no_grad():
        for sample in samples:
            mean, _ = level_tree_bp(sample.cost, candidates.to(sample.cost), sample.keypoints, level,
                                    regulariser.k, regulariser.inference)
            errors.append(float(keypoint_error_mm(sample, mean)))
    return sum(errors) / len(errors)


def graph_validation(samples: list[KeypointGraphSample], config: Optional[RegistrationConfig] = None):
    """``validate(model) -> {"error_mm", "initial_mm"}`` over held-out samples, plus
    ``"classical_mm"`` (:func:`classical_error_mm`, computed once) when ``config`` is given."""
    initial = sum(sample.initial_error_mm for sample in samples) / len(samples)
    reference = {} if config is None else {"classical_mm": classical_error_mm(samples, config)}

    def validate(model) -> dict:
        errors = [float(keypoint_error_mm(sample, predict(model, sample)[0])) for sample in samples]
        return {"error_mm": sum(errors) / len(errors), "initial_mm": initial, **reference}

    return validate


def train_graphregnet(recipe: dict, out_dir: Union[str, Path], resume: bool = True,
                      max_minutes: Optional[float] = None, progress: bool = True) -> TrainingResult:
    """Train GraphRegNet as a recipe (see the module docstring) describes, into ``out_dir``.

    Args:
        recipe: the parsed recipe (:func:`graphreg.training.read_recipe`).
        max_minutes: wall-time budget including building the samples; spent before every sample is
            built, the run stops without training (``stopped="time limit"``) and the next call
            continues building from the cache.

    Raises:
        ConfigError: a bad recipe, or ``model`` radius/step that differ from ``registration``'s first
            search level.
    """
    out_dir = Path(out_dir)
    settings = train_settings(recipe, max_minutes)
    registration = load_config(recipe.get("registration") or {})
    model = build_model("graphregnet", recipe["model"])
    check_learned_level(model, registration.levels[0])
    try:
        loss_fn = graph_loss_fn(**recipe["loss"])
        deadline = None if settings.max_minutes is None else settings.start + 60.0 * settings.max_minutes
        image_loss = recipe["loss"].get("supervision", "unsupervised") == "unsupervised"
        data = GraphTrainingData(out_dir, registration, seed=settings.seed, progress=progress,
                                 build_deadline=deadline, image_loss=image_loss, **recipe["data"])
    except TypeError as error:
        raise ConfigError(f"loss/data: {error}") from None
    with prepared(data, settings.options.get("device"), progress):
        if data.missing():
            step, latest = (checkpoints_by_step(out_dir) or [(0, None)])[-1]
            return TrainingResult(step=step, checkpoint=latest, model_path=None, stopped="time limit")
        stored = copy.deepcopy(recipe)
        stored["registration"] = registration.to_dict()
        validation = data.validation_samples()
        return train(model, loss_fn, data, out_dir=out_dir, resume=resume, max_minutes=settings.remaining_minutes(),
                     validate=graph_validation(validation, registration) if validation else None, config=stored,
                     seed=settings.seed, progress=progress, **settings.options)
