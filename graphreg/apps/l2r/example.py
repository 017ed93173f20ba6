"""A small Learn2Reg task folder made from the bundled demo pair: try and test ``graphreg l2r``
without downloads.

Every case is the demo pair (POPI phase 00 moved by DIR-Lab 4DCT case 4 motion, see
``graphreg/assets/demo/meta.json``), optionally resampled, in the LungCT layout::

    ROOT/<NAME>_dataset.json
    ROOT/imagesTr/<NAME>_<case>_0000.nii.gz      fixed (the demo's fixed image), HU
    ROOT/imagesTr/<NAME>_<case>_0001.nii.gz      moving
    ROOT/masksTr/<NAME>_<case>_000{0,1}.nii.gz   lung masks
    ROOT/keypointsTr/<NAME>_<case>_000{0,1}.csv  the demo's 300 landmarks as 0-based voxel x,y,z

The moving keypoints are the true positions of the fixed ones (the demo's ground-truth motion),
so ``TRE_kp`` is an error against the truth. ``registration_val`` lists every case
``fixed = _0000``, ``moving = _0001``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

from graphreg.errors import GraphregError


def write_example_task(root: Union[str, os.PathLike], n_pairs: int = 2, spacing_mm: Optional[float] = None,
                       name: str = "LungCTdemo") -> Path:
    """Write the task folder and return its ``<name>_dataset.json``.

    Args:
        root: the folder (created; existing files of the same names are replaced).
        n_pairs: number of cases (all the same pair, case ids ``0001``, ``0002``, ...).
        spacing_mm: isotropic voxel size to resample the 3 mm demo images to (None: keep 3 mm).
        name: task name (file prefix).
    """
    from graphreg.datasets.pairs import read_pair
    from graphreg.apps.demo import DEMO_PAIR
    from graphreg.errors import is_int_at_least
    from graphreg.io.atomic import atomic_write_text
    from graphreg.io.images import write_image
    from graphreg.io.landmarks import Landmarks, write_landmarks

    if not is_int_at_least(n_pairs, 1) or n_pairs > 9999:
        raise GraphregError(f"n_pairs: expected an integer in 1..9999, got {n_pairs!r}")
    pair = read_pair(DEMO_PAIR)
    volumes = {"0000": (pair.fixed, pair.fixed_mask, pair.fixed_landmarks_mm),
               "0001": (pair.moving, pair.moving_mask, pair.moving_landmarks_mm)}
    if spacing_mm is not None:
        spacing = (float(spacing_mm),) * 3
        volumes = {phase: (image.with_spacing(spacing), mask.with_spacing(spacing, interpolation="nearest"), points)
                   for phase, (image, mask, points) in volumes.items()}
    root = Path(root)
    for folder in ("imagesTr", "masksTr", "keypointsTr"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    training, validation = [], []
    for case in range(1, n_pairs + 1):
        entry = {}
        for phase, (image, mask, points_mm) in volumes.items():
            stem = f"{name}_{case:04d}_{phase}"
            write_image(image, root / "imagesTr" / f"{stem}.nii.gz")
            write_image(mask, root / "masksTr" / f"{stem}.nii.gz")
            write_landmarks(Landmarks(points_mm, "world").to_voxel(image.grid), root / "keypointsTr" / f"{stem}.csv",
                            fmt="l2r")
            training.append({"image": f"./imagesTr/{stem}.nii.gz", "mask": f"./masksTr/{stem}.nii.gz",
                             "keypoints": f"./keypointsTr/{stem}.csv"})
            entry["fixed" if phase == "0000" else "moving"] = f"./imagesTr/{stem}.nii.gz"
        validation.append(entry)
    fixed_image = volumes["0000"][0]
    info = {
        "name": name,
        "description": "graphreg example task: the bundled demo pair in the Learn2Reg LungCT layout",
        "tensorImageSize": {"0": "3D"},
        "tensorImageShape": {"0": list(fixed_image.grid.size_xyz)},
        "modality": {"0": "CT"},
        "numTraining": len(training),
        "training": training,
        "numRegistration_val": len(validation),
        "registration_val": validation,
        "numRegistration_test": 0,
        "registration_test": [],
    }
    path = root / f"{name}_dataset.json"
    atomic_write_text(path, json.dumps(info, indent=2))
    return path


__all__ = ["write_example_task"]
