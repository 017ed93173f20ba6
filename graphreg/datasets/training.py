"""Random training pairs with ground truth, made on the fly from one CT.

Every sample moves the source CT with either the motion of a random DIR-Lab 4DCT case (random
amplitude in ``amplitude_range`` and random per-landmark jitter) or random parametric breathing,
adds noise, jitters the intensities and crops a random box. Sample ``i`` is a pure function of
``(seed, i)``, so a :class:`torch.utils.data.DataLoader` with workers and shuffling sees the
same data on every run.

Training pairs never coincide with benchmark pairs: the benchmark uses amplitude exactly 1 and no
jitter, with randomness from ``default_rng([seed, case])``; training draws from
``default_rng([seed, TRAINING_STREAM, i])`` and always jitters the landmark motion
(``jitter_mm > 0``) and the amplitude.

With ``realistic=True`` every sample is instead a realistic pair
(:func:`graphreg.datasets.acquisition.realistic_pair`): training anatomy ``1000 + i`` (never a
benchmark anatomy), the motion of a random DIR-Lab set (:data:`~graphreg.datasets.anatomy.MOTION_SETS`),
two acquisitions with their own grids and noise; the moving image and mask are resampled onto the
fixed grid (border values repeated), which is then the sample's working grid (its size varies with
the anatomy: use ``crop_shape`` to batch).

Convention:
    Returned tensors are on the sampler's working grid (isotropic ``spacing_mm``): images
    ``(1, D, H, W)`` float32 HU, masks ``(1, D, H, W)`` float32 0/1, ``displacement``
    ``(3, D, H, W)`` float32 voxels ``(z, y, x)`` fixed -> moving (the moving image equals the
    fixed image at ``x`` moved to ``x + u(x)``), landmarks ``(N, 3)`` voxel ``(z, y, x)`` of the
    crop.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch

from graphreg.errors import ConfigError
from graphreg.io.images import read_image
from graphreg.core.geometry import Grid
from graphreg.core.volume import Volume
from graphreg.datasets.acquisition import Acquisition, SourceCT, realistic_pair, sample_on
from graphreg.datasets.anatomy import MOTION_SETS, TRAINING_ANATOMIES, Anatomy, MotionPattern
from graphreg.datasets.benchmark import POPI_CT, low_resolution
from graphreg.datasets.breathing import dirlab_motion, parametric_motion, synthesize_pair
from graphreg.ops.lungmask import lung_mask
from graphreg.datasets.pairs import dense_field

#: Second seed component that separates the training stream from the benchmark's.
TRAINING_STREAM = 7919


class TrainingPairSampler(torch.utils.data.Dataset):
    """A map-style dataset of random synthetic training pairs.

    Args:
        source: the CT (path or :class:`~graphreg.core.volume.Volume`, HU).
        seed: base seed; sample ``i`` depends only on ``(seed, i)``.
        length: number of samples the dataset reports (``len``).
        spacing_mm: isotropic working resolution (the source is cropped to its lungs plus
            ``margin_mm`` and resampled once).
        crop_shape: ``(D, H, W)`` of a random crop, or ``None`` for the whole working volume.
        cases: DIR-Lab 4DCT cases to draw motion from.
        amplitude_range: range of the DIR-Lab amplitude factor.
        jitter_mm: standard deviation of the per-landmark jitter of the DIR-Lab displacements.
        parametric_probability: chance of parametric instead of DIR-Lab motion.
        noise_range: range of the noise standard deviation (HU) of the moving image.
        intensity_scale, intensity_shift: ranges of a random linear intensity change
            ``a * HU + b`` applied to the moving image.
        landmarks: number of landmark pairs per sample.
        margin_mm: margin around the lungs kept in the working volume.
        realistic: draw realistic pairs (see the module docstring); ``cases``, ``amplitude_range``,
            ``jitter_mm``, ``parametric_probability`` and ``noise_range`` then do not apply.

    Raises:
        ConfigError: a range is reversed, a probability is outside ``[0, 1]``, ``jitter_mm`` is not
            positive, or ``crop_shape`` is larger than the working volume.
    """

    def __init__(self, source: str | os.PathLike | Volume = POPI_CT, seed: int = 0, length: int = 1000,
                 spacing_mm: float = 3.0, crop_shape: Optional[Sequence[int]] = None,
                 cases: Sequence[int] = tuple(range(1, 11)),
                 amplitude_range: tuple[float, float] = (0.5, 1.3), jitter_mm: float = 1.0,
                 parametric_probability: float = 0.3, noise_range: tuple[float, float] = (5.0, 25.0),
                 intensity_scale: tuple[float, float] = (0.95, 1.05),
                 intensity_shift: tuple[float, float] = (-20.0, 20.0), landmarks: int = 100,
                 margin_mm: float = 20.0, realistic: bool = False) -> None:
        for name, pair in (("amplitude_range", amplitude_range), ("noise_range", noise_range),
                           ("intensity_scale", intensity_scale), ("intensity_shift", intensity_shift)):
            if len(pair) != 2 or pair[0] > pair[1]:
                raise ConfigError(f"{name}: expected (low, high) with low <= high, got {pair}")
        if not 0.0 <= parametric_probability <= 1.0:
            raise ConfigError(f"parametric_probability: expected a value in [0, 1], got "
                              f"{parametric_probability}")
        if not jitter_mm > 0:
            raise ConfigError(f"jitter_mm: expected a positive value (training pairs must differ "
                              f"from the benchmark's), got {jitter_mm}")
        ct = read_image(source) if not isinstance(source, Volume) else source
        lung = lung_mask(ct)
        self.realistic = bool(realistic)
        self.source = SourceCT.load(ct, lung) if self.realistic else None
        self.acquisition = Acquisition(spacing_mm=(float(spacing_mm),) * 3, margin_mm=float(margin_mm))
        self.fixed, self.lung = low_resolution(ct, lung, spacing_mm, margin_mm)
        if crop_shape is not None and self.realistic:
            crop_shape = tuple(int(c) for c in crop_shape)
            if len(crop_shape) != 3 or min(crop_shape) < 2:
                raise ConfigError(f"crop_shape: expected 3 sizes >= 2, got {crop_shape}")
        elif crop_shape is not None:
            crop_shape = tuple(int(c) for c in crop_shape)
            if len(crop_shape) != 3 or any(c < 2 or c > n for c, n in zip(crop_shape, self.fixed.grid.shape)):
                raise ConfigError(f"crop_shape: expected 3 sizes in [2, {self.fixed.grid.shape}], "
                                  f"got {crop_shape}")
        self.seed = int(seed)
        self.length = int(length)
        self.crop_shape = crop_shape
        self.cases = tuple(int(c) for c in cases)
        self.amplitude_range = amplitude_range
        self.jitter_mm = float(jitter_mm)
        self.parametric_probability = float(parametric_probability)
        self.noise_range = noise_range
        self.intensity_scale = intensity_scale
        self.intensity_shift = intensity_shift
        self.landmarks = int(landmarks)

    def sample_grid(self, sample: dict) -> Grid:
        """The grid of a sample's whole volumes (``crop_shape=None``): the source's working grid,
        or, for realistic samples (whose grids differ), the sample's own shape and spacing with the
        origin at 0 and identity directions (both images share it, so only their relation counts)."""
        if not self.realistic:
            return self.fixed.grid
        spacing_zyx = [float(s) for s in sample["spacing_mm"]]
        return Grid(tuple(sample["fixed"].shape[1:]), tuple(spacing_zyx[::-1]))

    def __len__(self) -> int:
        return self.length

    def rng(self, index: int) -> np.random.Generator:
        """The random generator of sample ``index``."""
        return np.random.default_rng([self.seed, TRAINING_STREAM, int(index)])

    def __getitem__(self, index: int) -> dict:
        """Sample ``index``: a dict of tensors (see the module's Convention) plus ``meta``."""
        if not 0 <= index < self.length:
            raise IndexError(f"index: expected 0 <= index < {self.length}, got {index}")
        rng = self.rng(index)
        if self.realistic:
            return self._realistic(index, rng)
        if rng.uniform() < self.parametric_probability:
            motion = parametric_motion(self.fixed, self.lung, rng)
            meta = {"motion": "parametric"}
        else:
            case = int(rng.choice(self.cases))
            amplitude = float(rng.uniform(*self.amplitude_range))
            motion = dirlab_motion(case, self.fixed, self.lung, amplitude=amplitude,
                                   jitter_mm=self.jitter_mm, rng=rng)
            meta = {"motion": "dirlab", "dirlab_case": case, "amplitude": amplitude}
        noise = float(rng.uniform(*self.noise_range))
        pair = synthesize_pair(self.fixed, motion, self.lung, rng, noise_hu=noise,
                               landmarks=self.landmarks, name=f"train_{index}")
        meta["noise_hu"] = noise
        return self._sample(index, rng, pair, pair.moving.array, pair.moving_mask.array,
                            dense_field(motion, self.fixed.grid).displacement[0], meta)

    def _realistic(self, index: int, rng: np.random.Generator) -> dict:
        """A realistic training pair on its fixed grid (see the module docstring)."""
        anatomy = Anatomy.draw(TRAINING_ANATOMIES.start + int(index), "training")
        pattern = MotionPattern.draw(str(rng.choice(MOTION_SETS)), rng)
        pair = realistic_pair(self.source, anatomy, pattern, [self.seed, TRAINING_STREAM, int(index)],
                              self.acquisition, landmarks=self.landmarks, name=f"train_{index}")
        grid = pair.fixed.grid
        moving = sample_on(pair.moving, grid).reshape(grid.shape)
        moving_mask = (sample_on(pair.moving_mask, grid) >= 0.5).reshape(grid.shape)
        meta = {"motion": "dirlab-sliding", "motion_set": pattern.set_name, "anatomy": anatomy.anatomy_id,
                "noise_hu": pair.meta["noise_hu"]}
        return self._sample(index, rng, pair, moving, moving_mask, pair.gt_field.displacement[0], meta)

    def _sample(self, index: int, rng: np.random.Generator, pair, moving: np.ndarray,
                moving_mask: np.ndarray, displacement: torch.Tensor, meta: dict) -> dict:
        """The sample dict of ``pair`` (moving image and mask already on the fixed grid)."""
        scale, shift = rng.uniform(*self.intensity_scale), rng.uniform(*self.intensity_shift)
        moving = moving.astype(np.float32) * np.float32(scale) + np.float32(shift)
        grid = pair.fixed.grid
        if self.crop_shape is not None and any(c > n for c, n in zip(self.crop_shape, grid.shape)):
            raise ConfigError(f"crop_shape: expected at most the sample's grid {grid.shape}, got {self.crop_shape}")
        fixed_points = grid.world_to_voxel(pair.fixed_landmarks_mm)
        moving_points = grid.world_to_voxel(pair.moving_landmarks_mm)
        start = np.zeros(3, dtype=int)
        if self.crop_shape is not None:
            start = np.array([rng.integers(0, n - c + 1) for n, c in zip(grid.shape, self.crop_shape)])
        stop = start + np.array(self.crop_shape or grid.shape)
        box = tuple(slice(a, b) for a, b in zip(start, stop))

        def volume(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array[box], dtype=np.float32))[None]

        meta.update({"index": int(index), "intensity_scale": float(scale),
                     "intensity_shift": float(shift), "crop_start": start.tolist(),
                     "initial_tre_mm": pair.meta["initial_tre_mm"]["mean_mm"]})
        return {
            "fixed": volume(pair.fixed.array),
            "moving": volume(moving),
            "fixed_mask": volume(pair.fixed_mask.array),
            "moving_mask": volume(moving_mask),
            "displacement": displacement[(slice(None),) + box].contiguous(),
            "fixed_landmarks": torch.from_numpy(fixed_points - start),
            "moving_landmarks": torch.from_numpy(moving_points - start),
            "spacing_mm": torch.tensor(grid.spacing_zyx),
            "meta": meta,
        }
