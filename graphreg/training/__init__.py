"""Training: the generic loop, self-describing checkpoints, and the recipe runner behind ``graphreg train``.

:func:`train` (in :mod:`.loop`) trains any network with any loss. :func:`train_from_config` reads a
YAML recipe (see ``configs/voxelmorph.yaml``) and trains one of the dense architectures on
synthetic inhale/exhale pairs with known ground truth
(:class:`graphreg.datasets.training.TrainingPairSampler`).

Recipe layout (every section optional except ``architecture``)::

    architecture: voxelmorph            # voxelmorph | bspline-cnn | linear-deformable
    model: {...}                        # constructor arguments of the network
    data:                               # DenseTrainingData arguments
      spacing_mm: 4.0                   # working resolution of the pairs (also used at inference)
      pool_size: 16                     # pairs synthesised once, cached in out_dir/pairs
      crop_shape: [48, 48, 48]          # random crop per step, or null for whole volumes
      sampler: {amplitude_range: [0.5, 1.3]}   # extra TrainingPairSampler arguments
    loss: {similarity: ncc, similarity_options: {window: 5}, regulariser: diffusion, weight: 1.0}
    train: {steps: 1500, lr: 1.0e-4, checkpoint_every: 100, validate_every: 250, seed: 0,
            max_minutes: 55}                # wall-time budget (pair synthesis included)
    gpu: {...}                          # overrides of any of the above for variant="gpu"
    variants: {name: {...}}             # further named overrides (ablations), variant="name"

Started by ``torchrun`` (``WORLD_SIZE > 1``) the recipe trains data-parallel on one GPU per process
(:mod:`.distributed`): ``train.batch_size`` is the global batch, rank 0 synthesises the pair pool
and writes every file.

Convention:
    Pairs are cropped around the lungs and resampled to ``data.spacing_mm`` by the sampler;
    intensities are clipped to ``[hu_min, hu_max]`` and scaled to ``[0, 1]`` exactly as
    :func:`graphreg.methods.keypoint.preprocess.working_pair` does at inference. Networks return voxel
    displacements ``(B, 3, D, H, W)`` fixed -> moving; the loss compares ``fixed`` with
    ``warp(moving, u)``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from graphreg.errors import ConfigError, is_int_at_least
from graphreg.io.atomic import atomic_output
from graphreg.training.checkpoint import (LoadableModel, architectures, build_model, load_model, read_checkpoint,
                         register_architecture, save_checkpoint)
from graphreg.training.recipes import prepared, train_settings
from graphreg.training.loop import TrainingResult, checkpoint_path, latest_checkpoint, train

#: architectures :func:`train_from_config` trains with the dense image loss
DENSE_ARCHITECTURES = ("voxelmorph", "bspline-cnn", "linear-deformable")
#: architectures trained on keypoint graphs (:mod:`graphreg.methods.graphregnet.train`)
GRAPH_ARCHITECTURES = ("graphregnet",)
_SECTIONS = {"architecture", "model", "data", "loss", "train", "gpu", "registration", "variants"}
_TRAIN_KEYS = {"steps", "lr", "checkpoint_every", "keep_checkpoints", "validate_every", "seed", "device",
               "grad_clip", "batch_size", "max_minutes", "lr_schedule"}


@dataclass
class DenseTrainingData:
    """A cached pool of synthetic pairs, served as random crops: ``data(step) -> batch``.

    Args:
        out_dir: the pool is cached in ``out_dir/pairs`` (``pair_0000.pt`` ...), so a resumed run
            does not synthesise it again.
        pool_size: training pairs (sampler indices ``0 .. pool_size - 1``).
        validation_size: held-out pairs (the next sampler indices) for :meth:`validation_pairs`.
        crop_shape: ``(D, H, W)`` random crop per step, or None for the whole volume.
        batch_size: crops per step.
        seed: seed of the sampler and of the crop/pair choice of each step.
        spacing_mm, hu_min, hu_max: working resolution and intensity window.
        source: the CT the sampler moves (default: the POPI CT).
        sampler: further :class:`~graphreg.datasets.training.TrainingPairSampler` arguments.

    Shapes:
        ``data(step)``: dict with ``fixed``, ``moving`` ``(B, 1, d, h, w)`` in ``[0, 1]``,
        ``fixed_mask`` ``(B, 1, d, h, w)`` 0/1 and ``displacement`` ``(B, 3, d, h, w)`` voxels.
    """

    out_dir: Union[str, Path]
    pool_size: int = 16
    validation_size: int = 2
    crop_shape: Optional[Sequence[int]] = None
    batch_size: int = 1
    seed: int = 0
    spacing_mm: float = 4.0
    hu_min: float = -1000.0
    hu_max: float = 1500.0
    source: Optional[str] = None
    sampler: dict = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("pool_size", "batch_size"):
            value = getattr(self, name)
            if not is_int_at_least(value, 1):
                raise ConfigError(f"data.{name}: expected an integer >= 1, got {value!r}")
        if not is_int_at_least(self.validation_size, 0):
            raise ConfigError(f"data.validation_size: expected an integer >= 0, got {self.validation_size!r}")
        if not self.hu_max > self.hu_min:
            raise ConfigError(f"data.hu_max: expected a value above hu_min {self.hu_min}, got {self.hu_max}")
        if self.crop_shape is not None:
            if len(self.crop_shape) != 3 or not all(isinstance(c, int) and c >= 4 for c in self.crop_shape):
                raise ConfigError(f"data.crop_shape: expected 3 integers >= 4 or null, got {self.crop_shape!r}")
            self.crop_shape = tuple(self.crop_shape)
        self._sampler = None
        self._cache: dict = {}

    # ------------------------------------------------------------------ pool
    def _make_sampler(self):
        from graphreg.datasets.training import TrainingPairSampler

        options = dict(self.sampler)
        if self.source is not None:
            options["source"] = self.source
        try:
            return TrainingPairSampler(seed=self.seed, length=self.pool_size + self.validation_size,
                                       spacing_mm=self.spacing_mm, **options)
        except TypeError as error:
            raise ConfigError(f"data.sampler: {error}") from None

    def pair(self, index: int) -> dict:
        """Pool pair ``index`` (synthesised and cached on first use), intensities in ``[0, 1]``.

        Shapes:
            ``fixed``, ``moving``, ``fixed_mask`` ``(1, D, H, W)``; ``displacement`` ``(3, D, H, W)``;
            ``fixed_landmarks``, ``moving_landmarks`` ``(N, 3)`` voxels; ``spacing_mm`` ``(3,)`` (z, y, x).
        """
        if index in self._cache:
            return self._cache[index]
        path = Path(self.out_dir) / "pairs" / f"pair_{index:04d}.pt"
        if path.is_file():
            item = torch.load(path, weights_only=True)
        else:
            if self._sampler is None:
                self._sampler = self._make_sampler()
            sample = self._sampler[index]
            item = {key: sample[key] for key in ("fixed_mask", "displacement", "fixed_landmarks",
                                                 "moving_landmarks", "spacing_mm")}
            for key in ("fixed", "moving"):
                item[key] = ((sample[key] - self.hu_min) / (self.hu_max - self.hu_min)).clamp(0, 1)
            with atomic_output(path) as tmp:
                torch.save(item, tmp)
        self._cache[index] = item
        return item

    def prepare(self) -> None:
        """Synthesise (or load) every training and validation pair now."""
        from tqdm.auto import tqdm

        for index in tqdm(range(self.pool_size + self.validation_size), desc="pairs", disable=not self.progress):
            self.pair(index)

    def validation_pairs(self) -> list[dict]:
        """The held-out pairs (whole volumes, batch dimension added)."""
        return [{k: v[None] if k in ("fixed", "moving", "fixed_mask", "displacement") else v
                 for k, v in self.pair(self.pool_size + i).items()} for i in range(self.validation_size)]

    # ------------------------------------------------------------------ batches
    def __call__(self, step: int) -> dict:
        rng = np.random.default_rng([self.seed, int(step)])
        crops = []
        for _ in range(self.batch_size):
            item = self.pair(int(rng.integers(self.pool_size)))
            shape = item["fixed"].shape[1:]
            crop = self.crop_shape or tuple(shape)
            if any(c > n for c, n in zip(crop, shape)):
                raise ConfigError(f"data.crop_shape: {crop} is larger than the working volume {tuple(shape)}; "
                                  f"lower it or the spacing")
            start = [int(rng.integers(n - c + 1)) for n, c in zip(shape, crop)]
            box = (slice(None),) + tuple(slice(a, a + c) for a, c in zip(start, crop))
            crops.append({key: item[key][box] for key in ("fixed", "moving", "fixed_mask", "displacement")})
        return {key: torch.stack([c[key] for c in crops]) for key in crops[0]}


def dense_loss_fn(loss, mask_similarity: bool = False):
    """``loss_fn(model, batch)`` for :func:`train`: warp the moving image by the network's output and
    apply ``loss`` (a :class:`graphreg.ops.losses.RegistrationLoss`); the similarity is restricted to the
    fixed lung mask when ``mask_similarity``."""
    from graphreg.core.spatial import warp

    def loss_fn(model: torch.nn.Module, batch: dict):
        displacement = model(batch["fixed"], batch["moving"])
        warped = warp(batch["moving"], displacement)
        mask = batch["fixed_mask"] if mask_similarity else None
        return loss(batch["fixed"], warped, displacement, mask=mask)

    return loss_fn


def dense_validation(pairs: list[dict]):
    """``validate(model)`` for :func:`train`: mean landmark TRE (mm) and mean end-point error of the
    field inside the fixed lungs (mm) over held-out whole-volume pairs."""
    from graphreg.core.spatial import sample_points

    def validate(model: torch.nn.Module) -> dict:
        device = next(model.parameters()).device
        tre, epe = [], []
        for pair in pairs:
            displacement = model(pair["fixed"].to(device), pair["moving"].to(device)).cpu()
            spacing = pair["spacing_mm"].to(displacement.dtype)
            points = pair["fixed_landmarks"].to(displacement.dtype)
            moved = points + sample_points(displacement, points)[0].T
            target = pair["moving_landmarks"].to(displacement.dtype)
            tre.append(((moved - target) * spacing).norm(dim=1).mean())
            error = ((displacement - pair["displacement"]) * spacing.view(1, 3, 1, 1, 1)).norm(dim=1)
            epe.append(error[pair["fixed_mask"][:, 0] > 0].mean())
        return {"tre_mm": float(torch.stack(tre).mean()), "epe_mm": float(torch.stack(epe).mean())}

    return validate


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else copy.deepcopy(value)
    return merged


def read_recipe(path: Union[str, Path], variant: Optional[str] = None) -> dict:
    """A training recipe as a dict, with a variant merged over it: the ``gpu`` section for
    ``variant="gpu"``, else the entry ``variants[variant]``.

    Raises:
        ConfigError: unreadable YAML, unknown sections, a missing or unknown ``architecture``.
    """
    from graphreg.core.config import read_yaml
    from graphreg.io.resources import TRAINING_RECIPES, shipped_or_path

    path = Path(path)
    recipe = read_yaml(shipped_or_path(path, TRAINING_RECIPES, "training recipe"))
    if not isinstance(recipe, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    unknown = sorted(set(recipe) - _SECTIONS, key=str)
    if unknown:
        raise ConfigError(f"config key '{unknown[0]}': unknown section (known: {', '.join(sorted(_SECTIONS))})")
    if variant is not None:
        override = recipe.get("gpu") if variant == "gpu" else (recipe.get("variants") or {}).get(variant)
        if not isinstance(override, dict):
            raise ConfigError(f"config file {path}: has no variant '{variant}' (known: gpu"
                              f"{''.join(', ' + str(name) for name in recipe.get('variants') or {})})")
        recipe = _merge(recipe, override)
    recipe.pop("variants", None)
    recipe.pop("gpu", None)
    known = DENSE_ARCHITECTURES + GRAPH_ARCHITECTURES
    if recipe.get("architecture") not in known:
        raise ConfigError(f"config key 'architecture': expected one of {', '.join(known)}, "
                          f"got {recipe.get('architecture')!r}")
    if "registration" in recipe and recipe["architecture"] not in GRAPH_ARCHITECTURES:
        raise ConfigError("config key 'registration': only keypoint-graph architecture recipes have it")
    for section in ("model", "data", "loss", "train"):
        if not isinstance(recipe.setdefault(section, {}) or {}, dict):
            raise ConfigError(f"config key '{section}': expected a mapping, got {recipe[section]!r}")
        recipe[section] = recipe[section] or {}
    unknown = sorted(set(recipe["train"]) - _TRAIN_KEYS, key=str)
    if unknown:
        raise ConfigError(f"config key 'train.{unknown[0]}': unknown key (known: {', '.join(sorted(_TRAIN_KEYS))})")
    return recipe


def train_from_config(path: Union[str, Path], out_dir: Union[str, Path], resume: bool = True,
                      max_minutes: Optional[float] = None, variant: Optional[str] = None,
                      progress: bool = True) -> TrainingResult:
    """Train the network a YAML recipe describes (see the module docstring) into ``out_dir``.

    Args:
        path: the recipe (``configs/voxelmorph.yaml``, ``configs/bspline_cnn.yaml``,
            ``configs/linear_deformable.yaml``).
        out_dir: checkpoints, ``history.jsonl``, the cached pairs and the final ``model.pt``.
        resume: continue from the latest checkpoint in ``out_dir``.
        max_minutes: wall-time budget including the synthesis of the pairs (default: the recipe's
            ``train.max_minutes``, else none); the run stops with a checkpoint when it is spent
            (resume later with the same call).
        variant: a section of the recipe merged over it, e.g. ``"gpu"`` for the full recipe.
        progress: progress bars.

    Raises:
        ConfigError: a bad recipe (the key is named).
    """
    from graphreg.ops.losses import RegistrationLoss

    recipe = read_recipe(path, variant)
    if recipe["architecture"] in GRAPH_ARCHITECTURES:
        from graphreg.methods.graphregnet.train import train_graphregnet

        return train_graphregnet(recipe, out_dir, resume=resume, max_minutes=max_minutes, progress=progress)
    out_dir = Path(out_dir)
    settings = train_settings(recipe, max_minutes)
    model = build_model(recipe["architecture"], recipe["model"])
    loss_cfg = dict(recipe["loss"])
    mask_similarity = bool(loss_cfg.pop("mask_similarity", False))
    try:
        loss = RegistrationLoss(**loss_cfg)
    except TypeError as error:
        raise ConfigError(f"loss: {error}") from None
    data_cfg = dict(recipe["data"])
    options = settings.options
    try:
        data = DenseTrainingData(out_dir=out_dir, batch_size=int(options.pop("batch_size", 1)), seed=settings.seed,
                                 progress=progress, **data_cfg)
    except TypeError as error:
        raise ConfigError(f"data: {error}") from None
    with prepared(data, options.get("device"), progress):
        validation = data.validation_pairs()
        stored = copy.deepcopy(recipe)
        stored["data"].update({"spacing_mm": data.spacing_mm, "hu_min": data.hu_min, "hu_max": data.hu_max})
        return train(model, dense_loss_fn(loss, mask_similarity), data, out_dir=out_dir, resume=resume,
                     max_minutes=settings.remaining_minutes(),
                     validate=dense_validation(validation) if validation else None,
                     config=stored, seed=settings.seed, progress=progress, **options)


__all__ = ["DENSE_ARCHITECTURES", "GRAPH_ARCHITECTURES", "DenseTrainingData", "LoadableModel", "TrainingResult", "architectures",
           "build_model", "checkpoint_path", "dense_loss_fn", "dense_validation", "latest_checkpoint", "load_model",
           "read_checkpoint", "read_recipe", "register_architecture", "save_checkpoint", "train",
           "train_from_config"]
