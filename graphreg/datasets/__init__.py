"""Registration pairs with exact ground truth, made from one real CT.

- :mod:`~graphreg.ops.lungmask`: lung segmentation by thresholding and components.
- :mod:`~graphreg.datasets.breathing`: breathing motion models (DIR-Lab landmark motion,
  parametric) and the synthesis of the exhale image by exact inverse warping.
- :mod:`~graphreg.datasets.anatomy`: new patients from the one CT, motion from every DIR-Lab set.
- :mod:`~graphreg.datasets.acquisition`: realistic pairs (two acquisitions, own grids and noise,
  sliding at the pleura).
- :mod:`~graphreg.datasets.pairs`: the on-disk pair folder format.
- :mod:`~graphreg.datasets.benchmark`: the realistic and the easy (warped-CT) benchmark sets.
- :mod:`~graphreg.datasets.training`: random training pairs on the fly.
"""

from graphreg.datasets.benchmark import make_benchmark, make_benchmark_command
from graphreg.datasets.breathing import (dirlab_motion, invert_field, parametric_motion, sliding_weight,
                        synthesize_pair, vessel_landmarks)
from graphreg.ops.lungmask import lung_mask
from graphreg.datasets.pairs import PairData, dense_field, read_pair, write_pair
from graphreg.datasets.training import TrainingPairSampler

__all__ = [
    "PairData",
    "TrainingPairSampler",
    "dense_field",
    "dirlab_motion",
    "invert_field",
    "lung_mask",
    "make_benchmark",
    "make_benchmark_command",
    "parametric_motion",
    "read_pair",
    "sliding_weight",
    "synthesize_pair",
    "vessel_landmarks",
    "write_pair",
]
