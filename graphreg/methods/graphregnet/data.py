"""Training data for GraphRegNet: keypoint graphs with their cost volumes, cached on disk.

Every sample is one synthetic inhale/exhale pair (:class:`graphreg.datasets.training.TrainingPairSampler`)
run through exactly the inference pipeline's first stages (working-grid preprocessing, Förstner
keypoints, MIND-SSC, the first search level's cost volume; :mod:`graphreg.methods.keypoint.driver`),
plus what the two losses need:

- supervised: the ground-truth displacement at every keypoint (from the generator's field);
- unsupervised: points inside the fixed lungs, the fixed MIND features there, the linear
  thin-plate-spline operator that maps keypoint displacements to those points (the densification
  the pipeline uses, as a matrix), and the moving image's MIND features.

Computing this once per pair (a few seconds) and caching it makes an epoch a matter of
network passes only.

Convention:
    All positions and displacements are in working-grid voxels ``(z, y, x)``; displacements
    exclude the pre-alignment translation, exactly like the pipeline's search levels.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from graphreg.core.config import RegistrationConfig
from graphreg.errors import ConfigError, is_int_at_least
from graphreg.io.atomic import atomic_output
from graphreg.methods.keypoint.densify import ThinPlateSpline
from graphreg.methods.keypoint.densify import densify_options
from graphreg.methods.keypoint.driver import keypoints_and_features, level_cost
from graphreg.methods.keypoint.preprocess import WorkingPair, working_pair
from graphreg.core.spatial import sample_points
from graphreg.core.volume import Volume


@dataclass
class KeypointGraphSample:
    """One cached training pair.

    Shapes:
        keypoints ``(N, 3)``; cost ``(N, L)``; target ``(N, 3)`` working voxels (ground truth);
        points ``(S, 3)`` voxels in the fixed lungs; fixed_features ``(S, C)``;
        tps_operator ``(S, N)`` (``u(points) = tps_operator @ d``); moving_features
        ``(C, D, H, W)`` float16. The last four serve only the unsupervised loss (None when
        loaded without it: about a tenth of the memory).
    """

    keypoints: torch.Tensor
    cost: torch.Tensor
    target: torch.Tensor
    points: Optional[torch.Tensor]
    fixed_features: Optional[torch.Tensor]
    tps_operator: Optional[torch.Tensor]
    moving_features: Optional[torch.Tensor]
    initial_error_mm: float
    spacing_mm: float

    #: the fields only the unsupervised (image) loss reads
    IMAGE_LOSS_FIELDS = ("points", "fixed_features", "tps_operator", "moving_features")

    def save(self, path: Union[str, Path]) -> None:
        with atomic_output(path) as tmp:
            torch.save(asdict(self), tmp)

    def without_image_loss(self) -> "KeypointGraphSample":
        """This sample with :attr:`IMAGE_LOSS_FIELDS` set to None."""
        return replace(self, **dict.fromkeys(self.IMAGE_LOSS_FIELDS))

    @classmethod
    def load(cls, path: Union[str, Path], image_loss: bool = True) -> "KeypointGraphSample":
        """Read a cached sample; ``image_loss=False`` drops :attr:`IMAGE_LOSS_FIELDS` (set to None)."""
        stored = torch.load(path, weights_only=True, mmap=not image_loss)
        if not image_loss:
            stored.update(dict.fromkeys(cls.IMAGE_LOSS_FIELDS))
            stored = {key: value.clone() if isinstance(value, torch.Tensor) else value for key, value in stored.items()}
        return cls(**stored)


def tps_operator(keypoints: torch.Tensor, points: torch.Tensor, smoothing: float) -> torch.Tensor:
    """The matrix ``A`` with ``tps(keypoints, d)(points) = A @ d`` for any values ``d``.

    The thin-plate spline of :class:`graphreg.methods.keypoint.densify.ThinPlateSpline` is linear in its
    values, so fitting it to the identity gives the operator.

    Shapes:
        keypoints ``(N, 3)``; points ``(S, 3)``; returns ``(S, N)`` float32.
    """
    identity = torch.eye(len(keypoints), dtype=torch.float64)
    return ThinPlateSpline(keypoints, identity, smoothing)(points.double()).float()


def keypoint_targets(pair: WorkingPair, keypoints: torch.Tensor, displacement: torch.Tensor,
                     displacement_grid) -> torch.Tensor:
    """Ground-truth displacement at the keypoints, in working voxels, pre-alignment removed.

    Args:
        pair: the working pair the keypoints belong to.
        keypoints: ``(N, 3)`` working voxels.
        displacement: ``(3, D, H, W)`` ground truth in voxels of ``displacement_grid``.
        displacement_grid: :class:`~graphreg.core.geometry.Grid` of ``displacement``.
    """
    world = pair.grid.voxel_to_world(keypoints.double().numpy())
    where = torch.from_numpy(displacement_grid.world_to_voxel(world))
    truth = sample_points(displacement[None].double(), where)[0].T.numpy()
    truth_mm = displacement_grid.voxel_vectors_to_mm(truth) - pair.translation_mm
    return torch.from_numpy(pair.grid.mm_vectors_to_voxel(truth_mm)).float()


def build_sample(sample: dict, grid, config: RegistrationConfig, loss_points: int,
                 rng: np.random.Generator) -> KeypointGraphSample:
    """Turn one :class:`~graphreg.datasets.training.TrainingPairSampler` item into a graph sample.

    Args:
        sample: the sampler's dict (whole volumes: the sampler must have ``crop_shape=None``).
        grid: the sample's grid (``sampler.sample_grid(sample)``).
        config: the registration config whose preprocessing, keypoint, MIND, first search level
            and TPS smoothing the sample reproduces.
        loss_points: number of points ``S`` inside the fixed lungs for the unsupervised loss.
        rng: chooses those points.
    """
    def volume(key: str) -> Volume:
        return Volume(sample[key][0].numpy(), grid)

    pair = working_pair(volume("fixed"), volume("moving"), volume("fixed_mask"), volume("moving_mask"),
                        config.preprocess)
    with torch.no_grad():
        keypoints, fixed_features, moving_features = keypoints_and_features(pair, config)
        cost, _ = level_cost(fixed_features, moving_features, keypoints, config.levels[0])
    target = keypoint_targets(pair, keypoints, sample["displacement"], grid)
    inside = torch.nonzero(pair.fixed_mask[0, 0])
    chosen = inside[torch.from_numpy(rng.choice(len(inside), min(loss_points, len(inside)), replace=False))]
    features = fixed_features[0][:, chosen[:, 0], chosen[:, 1], chosen[:, 2]].T.contiguous()
    return KeypointGraphSample(
        keypoints=keypoints.float(), cost=cost.float(), target=target, points=chosen.float(),
        fixed_features=features.float(),
        tps_operator=tps_operator(keypoints, chosen.float(), densify_options(config)["smoothing"]),
        moving_features=moving_features[0].half(),
        initial_error_mm=float(target.norm(dim=1).mean()) * config.preprocess.spacing_mm,
        spacing_mm=config.preprocess.spacing_mm)


class GraphTrainingData:
    """A cached pool of keypoint-graph samples: ``data(step) -> KeypointGraphSample``.

    Args:
        out_dir: samples are cached in ``out_dir/graphs`` (``sample_0000.pt`` ...).
        config: registration config the samples reproduce (working spacing, keypoints, first level).
        pool_size: training samples (sampler indices ``0 .. pool_size - 1``).
        validation_size: held-out samples (the next indices).
        loss_points: points in the fixed lungs kept for the unsupervised loss.
        seed: seed of the sampler, the loss points and the per-step sample choice.
        sampler: further :class:`~graphreg.datasets.training.TrainingPairSampler` arguments.
        source: the CT the sampler moves (default: the POPI CT).
        build_deadline: a ``time.perf_counter()`` value after which :meth:`prepare` builds no new
            sample (cached ones are still loaded); None: no limit.
        image_loss: keep what the unsupervised loss needs in memory (False for the supervised
            loss: about 10 instead of 95 MB per realistic sample).
    """

    def __init__(self, out_dir: Union[str, Path], config: RegistrationConfig, pool_size: int = 32,
                 validation_size: int = 4, loss_points: int = 4000, seed: int = 0,
                 sampler: Optional[dict] = None, source: Optional[str] = None, progress: bool = True,
                 build_deadline: Optional[float] = None, image_loss: bool = True) -> None:
        for name, value, minimum in (("pool_size", pool_size, 1), ("validation_size", validation_size, 0),
                                     ("loss_points", loss_points, 1)):
            if not is_int_at_least(value, minimum):
                raise ConfigError(f"data.{name}: expected an integer >= {minimum}, got {value!r}")
        self.out_dir = Path(out_dir)
        self.config = config
        self.pool_size, self.validation_size = pool_size, validation_size
        self.loss_points, self.seed = loss_points, int(seed)
        self.sampler_options = dict(sampler or {})
        if source is not None:
            self.sampler_options["source"] = source
        self.progress = progress
        self.build_deadline = build_deadline
        self.image_loss = image_loss
        self._sampler = None
        self._cache: dict = {}

    def _make_sampler(self):
        from graphreg.datasets.training import TrainingPairSampler

        try:
            return TrainingPairSampler(seed=self.seed, length=self.pool_size + self.validation_size,
                                       spacing_mm=self.config.preprocess.spacing_mm, crop_shape=None,
                                       **self.sampler_options)
        except TypeError as error:
            raise ConfigError(f"data.sampler: {error}") from None

    def path(self, index: int) -> Path:
        """The cache file of sample ``index``."""
        return self.out_dir / "graphs" / f"sample_{index:04d}.pt"

    def sample(self, index: int) -> KeypointGraphSample:
        """Pool sample ``index`` (built and cached on first use)."""
        if index in self._cache:
            return self._cache[index]
        path = self.path(index)
        if path.is_file():
            item = KeypointGraphSample.load(path, self.image_loss)
        else:
            if self._sampler is None:
                self._sampler = self._make_sampler()
            rng = np.random.default_rng([self.seed, 104729, index])
            drawn = self._sampler[index]
            item = build_sample(drawn, self._sampler.sample_grid(drawn), self.config, self.loss_points, rng)
            item.save(path)
            if not self.image_loss:
                item = item.without_image_loss()
        self._cache[index] = item
        return item

    def prepare(self) -> None:
        """Build (or load) every training and validation sample now, building none once
        ``build_deadline`` has passed (:meth:`missing` then counts the rest; calling again
        continues)."""
        from tqdm.auto import tqdm

        for index in tqdm(range(self.pool_size + self.validation_size), desc="keypoint graphs",
                          disable=not self.progress):
            if (self.build_deadline is not None and time.perf_counter() >= self.build_deadline
                    and index not in self._cache and not self.path(index).is_file()):
                return
            self.sample(index)

    def missing(self) -> int:
        """How many training and validation samples are not cached yet."""
        return sum(not self.path(index).is_file() for index in range(self.pool_size + self.validation_size))

    def validation_samples(self) -> list[KeypointGraphSample]:
        return [self.sample(self.pool_size + i) for i in range(self.validation_size)]

    def __call__(self, step: int) -> KeypointGraphSample:
        """The training sample of ``step`` (a seeded random pool member)."""
        index = int(np.random.default_rng([self.seed, 15485863, step]).integers(self.pool_size))
        return self.sample(index)
