"""Sets of registration pairs the benchmark reads: generated pairs, DIR-Lab, Learn2Reg.

:func:`open_pairs` looks at a folder, tells which of three layouts it holds and returns one
:class:`PairRef` per pair. A ``PairRef`` is cheap (a name and a picklable loader); its
:meth:`~PairRef.load` reads the images and returns a :class:`~graphreg.datasets.pairs.PairData`.
The runner loads each pair in the worker process that registers it, so the parent holds no images.

Layouts:

``generated``
    ``pair_*/`` folders written by :func:`graphreg.datasets.pairs.write_pair` (``graphreg bench
    make``), or one such folder itself.
``dirlab``
    DIR-Lab 4DCT / COPDgene: ``caseN/`` or ``copdN/`` folders (or one of them) holding, anywhere
    below, the raw images ``caseN_T00_s.img`` + ``caseN_T50_s.img`` or ``copdN_iBHCT.img`` +
    ``copdN_eBHCT.img`` and the landmark files ``*_300_T00_xyz*.txt`` + ``*_300_T50_xyz*.txt`` or
    ``copdN_300_iBH_xyz_r1.txt`` + ``copdN_300_eBH_xyz_r1.txt``. Geometry comes from
    :data:`graphreg.io.DIRLAB_CASES`; fixed = inhale (T00 / iBH), moving = exhale (T50 / eBH).
    Lung masks are computed by :func:`graphreg.ops.lungmask.lung_mask` (images must be HU).
``learn2reg``
    A Learn2Reg task folder (NLST, LungCT): ``<TASK>_dataset.json`` listing pairs under
    ``registration_val`` / ``registration_test`` / ``training_paired_images`` as
    ``{"fixed": "./imagesTr/X_0000.nii.gz", "moving": "./imagesTr/X_0001.nii.gz"}``, lung masks
    in ``masksTr/`` (same file names; computed when absent) and keypoints or landmarks as
    Learn2Reg CSV (0-based voxel ``x,y,z``, no header) in ``keypointsTr/`` / ``landmarksTr/``
    (``...Ts`` for test data), named like the image with ``.csv``.

Convention:
    Landmarks come out in world mm ``(x, y, z)``, paired by row; a pair without landmarks gets
    ``(0, 3)`` arrays (the runner then reports no TRE).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from graphreg.errors import ConfigError, InputFileError

#: The layouts :func:`open_pairs` understands.
LAYOUTS = ("generated", "dirlab", "learn2reg")
#: Registration directions of a pair: as stored (fixed -> moving) and swapped (moving -> fixed).
DIRECTIONS = ("forward", "reverse")
#: Learn2Reg JSON keys of the pair lists, by split name.
L2R_SPLITS = {"val": "registration_val", "test": "registration_test", "train": "training_paired_images"}

_PAIR_FILES = ("fixed.nii.gz", "moving.nii.gz")
_DIRLAB_DIR = re.compile(r"^(case|copd)[_-]?0*(\d+)$", re.IGNORECASE)
_DIRLAB_IMAGES = {
    "case": (re.compile(r"case0*(\d+)_T00(_s)?\.img$", re.I), re.compile(r"case0*(\d+)_T50(_s)?\.img$", re.I)),
    "copd": (re.compile(r"copd0*(\d+)_iBHCT\.img$", re.I), re.compile(r"copd0*(\d+)_eBHCT\.img$", re.I)),
}
_DIRLAB_LANDMARKS = {
    "case": (re.compile(r"_300_T00_xyz.*\.txt$", re.I), re.compile(r"_300_T50_xyz.*\.txt$", re.I)),
    "copd": (re.compile(r"_300_iBH_xyz.*\.txt$", re.I), re.compile(r"_300_eBH_xyz.*\.txt$", re.I)),
}


@dataclass(frozen=True)
class PairRef:
    """A pair that is not loaded yet.

    Attributes:
        name: the pair's name in tables (``pair_01``, ``copd1``, ``NLST_0101``).
        layout: one of :data:`LAYOUTS`.
        loader: picklable zero-argument callable returning the
            :class:`~graphreg.datasets.pairs.PairData`.
        direction: one of :data:`DIRECTIONS`; ``"reverse"`` loads the pair swapped
            (:func:`reverse_pair`).
    """

    name: str
    layout: str
    loader: Callable[[], object]
    direction: str = "forward"

    def load(self):
        """Read the pair (images, masks, landmarks), swapped when :attr:`direction` is ``"reverse"``."""
        pair = self.loader()
        return reverse_pair(pair) if self.direction == "reverse" else pair

    def in_direction(self, direction: str) -> "PairRef":
        """This pair registered in ``direction`` (one of :data:`DIRECTIONS`).

        Raises:
            ConfigError: unknown ``direction``.
        """
        if direction not in DIRECTIONS:
            raise ConfigError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
        return dataclasses.replace(self, direction=direction)


def pair_direction(pair) -> str:
    """The direction (one of :data:`DIRECTIONS`) of a :class:`PairRef` or a loaded pair."""
    if isinstance(pair, PairRef):
        return pair.direction
    return str((getattr(pair, "meta", None) or {}).get("direction", "forward"))


def in_direction(pair, direction: str):
    """A :class:`PairRef` or loaded pair registered in ``direction`` (one of :data:`DIRECTIONS`).

    Raises:
        ConfigError: unknown ``direction``.
    """
    if isinstance(pair, PairRef):
        return pair.in_direction(direction)
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
    return reverse_pair(pair) if direction != pair_direction(pair) else pair


def reverse_pair(pair):
    """``pair`` with fixed and moving swapped: images, lung masks and landmarks (rows stay paired).

    The ground-truth field (fixed -> moving of the stored direction) does not describe the swapped
    pair, so the result has none; ``meta["direction"]`` is ``"reverse"``.

    Shapes:
        pair: :class:`~graphreg.datasets.pairs.PairData`; returns a new one.
    """
    from graphreg.datasets.pairs import PairData

    return PairData(pair.name, pair.moving, pair.fixed, pair.moving_mask, pair.fixed_mask,
                    pair.moving_landmarks_mm, pair.fixed_landmarks_mm, {**pair.meta, "direction": "reverse"})


# ---------------------------------------------------------------------- detection
def _is_pair_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in _PAIR_FILES)


def _dirlab_case_dirs(root: Path) -> list[Path]:
    if _DIRLAB_DIR.match(root.name):
        return [root]
    return sorted((p for p in root.iterdir() if p.is_dir() and _DIRLAB_DIR.match(p.name)),
                  key=lambda p: (p.name[:4].lower(), int(_DIRLAB_DIR.match(p.name).group(2))))


def _l2r_json(root: Path) -> Optional[Path]:
    candidates = sorted(root.glob("*_dataset.json")) or sorted(root.glob("dataset.json"))
    return candidates[0] if candidates else None


def detect_layout(root: str | os.PathLike) -> str:
    """Which of :data:`LAYOUTS` the folder ``root`` holds.

    Raises:
        InputFileError: ``root`` is missing, or matches no layout (the message lists what each
            layout needs and what the folder holds).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputFileError(f"pairs: folder {root} not found")
    if _is_pair_dir(root) or any(_is_pair_dir(p) for p in root.glob("pair_*")):
        return "generated"
    if _l2r_json(root) is not None:
        return "learn2reg"
    if _dirlab_case_dirs(root):
        return "dirlab"
    listing = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:12]
    raise InputFileError(
        f"pairs: cannot tell the layout of {root}; expected one of: pair_*/ folders with "
        f"{' + '.join(_PAIR_FILES)} (generated, `graphreg bench make`), caseN/ or copdN/ folders "
        f"(DIR-Lab), or a *_dataset.json with imagesTr/ (Learn2Reg); found {listing or 'nothing'}"
    )


def open_pairs(root: str | os.PathLike, layout: str = "auto", split: str = "val") -> list[PairRef]:
    """The pairs stored under ``root``.

    Args:
        root: a folder in one of the layouts of the module docstring.
        layout: ``"auto"`` (see :func:`detect_layout`) or one of :data:`LAYOUTS`.
        split: Learn2Reg pair list: ``"val"``, ``"test"`` or ``"train"`` (other layouts ignore it).

    Raises:
        ConfigError: unknown ``layout`` or ``split``.
        InputFileError: the folder does not hold the layout, or holds no pair.
    """
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise ConfigError(f"layout: expected 'auto' or one of {LAYOUTS}, got {layout!r}")
    if not root.is_dir():
        raise InputFileError(f"pairs: folder {root} not found")
    refs = {"generated": _generated_pairs, "dirlab": _dirlab_pairs,
            "learn2reg": functools.partial(_learn2reg_pairs, split=split)}[layout](root)
    if not refs:
        raise InputFileError(f"pairs: {root} holds no {layout} pair")
    return refs


# ---------------------------------------------------------------------- generated
def _generated_pairs(root: Path) -> list[PairRef]:
    from graphreg.datasets.pairs import read_pair

    folders = [root] if _is_pair_dir(root) else sorted(p for p in root.glob("pair_*") if _is_pair_dir(p))
    return [PairRef(p.name, "generated", functools.partial(read_pair, p)) for p in folders]


# ---------------------------------------------------------------------- DIR-Lab
def _find_one(folder: Path, pattern: re.Pattern, what: str) -> Path:
    matches = sorted(p for p in folder.rglob("*") if p.is_file() and pattern.search(p.name))
    if not matches:
        raise InputFileError(f"{folder}: no {what} found (expected a file matching {pattern.pattern!r})")
    return matches[0]


def _dirlab_pairs(root: Path) -> list[PairRef]:
    refs = []
    for folder in _dirlab_case_dirs(root):
        kind, number = _DIRLAB_DIR.match(folder.name).group(1).lower(), int(_DIRLAB_DIR.match(folder.name).group(2))
        images = [_find_one(folder, p, f"DIR-Lab {'inhale' if i == 0 else 'exhale'} image (.img)")
                  for i, p in enumerate(_DIRLAB_IMAGES[kind])]
        landmarks = [_find_one(folder, p, f"DIR-Lab {'inhale' if i == 0 else 'exhale'} landmark file")
                     for i, p in enumerate(_DIRLAB_LANDMARKS[kind])]
        case = f"{'copd' if kind == 'copd' else '4dct'}{number}"
        name = f"{'copd' if kind == 'copd' else 'case'}{number}"
        refs.append(PairRef(name, "dirlab", functools.partial(load_dirlab_pair, name, case, *images, *landmarks)))
    return refs


def load_dirlab_pair(name: str, case: str, fixed_image: Path, moving_image: Path,
                     fixed_landmarks: Path, moving_landmarks: Path):
    """One DIR-Lab pair: raw images with the published geometry, landmarks in world mm, lung masks.

    Shapes:
        returns: :class:`~graphreg.datasets.pairs.PairData` with 300 landmark pairs (world mm
        ``(x, y, z)`` = 0-based index * spacing).
    """
    from graphreg.ops.lungmask import lung_mask
    from graphreg.datasets.pairs import PairData
    from graphreg.io import dirlab_case, read_dirlab_raw, read_landmarks

    geometry = dirlab_case(case)
    fixed = read_dirlab_raw(fixed_image, geometry)
    moving = read_dirlab_raw(moving_image, geometry)
    fixed_lm = read_landmarks(fixed_landmarks, fmt="dirlab").to_world(fixed.grid).points
    moving_lm = read_landmarks(moving_landmarks, fmt="dirlab").to_world(moving.grid).points
    meta = {"source": "dirlab", "case": geometry.name, "published_initial_tre_mm": geometry.initial_tre_mm,
            "fixed_image": str(fixed_image), "moving_image": str(moving_image)}
    return PairData(name, fixed, moving, lung_mask(fixed), lung_mask(moving), fixed_lm, moving_lm, meta)


# ---------------------------------------------------------------------- Learn2Reg
def _l2r_companion(root: Path, image: Path, folders: tuple[str, ...], suffix: str) -> Optional[Path]:
    """The file named like ``image`` (``.nii.gz`` -> ``suffix``) in one of ``folders``."""
    stem = image.name[:-len(".nii.gz")] if image.name.endswith(".nii.gz") else image.stem
    for folder in folders:
        candidate = root / folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _learn2reg_pairs(root: Path, split: str) -> list[PairRef]:
    if split not in L2R_SPLITS:
        raise ConfigError(f"split: expected one of {sorted(L2R_SPLITS)}, got {split!r}")
    json_path = _l2r_json(root)
    if json_path is None:
        raise InputFileError(f"{root}: no Learn2Reg *_dataset.json found")
    try:
        info = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputFileError(f"{json_path}: not readable JSON ({error})") from error
    key = L2R_SPLITS[split]
    entries = info.get(key)
    if not isinstance(entries, list) or not entries:
        raise InputFileError(f"{json_path}: expected a non-empty list {key!r} of "
                             f"{{'fixed', 'moving'}} pairs (split={split!r}); keys: {sorted(info)}")
    refs = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"fixed", "moving"} <= set(entry):
            raise InputFileError(f"{json_path}: {key}[{index}]: expected {{'fixed': ..., 'moving': ...}}, "
                                 f"got {entry!r}")
        fixed, moving = (root / str(entry[k]) for k in ("fixed", "moving"))
        name = _l2r_pair_name(fixed, moving)
        refs.append(PairRef(name, "learn2reg", functools.partial(load_learn2reg_pair, name, root, fixed, moving)))
    return refs


def _l2r_pair_name(fixed: Path, moving: Path) -> str:
    strip = lambda p: p.name[:-len(".nii.gz")] if p.name.endswith(".nii.gz") else p.stem  # noqa: E731
    a, b = strip(fixed), strip(moving)
    common = []
    for token_a, token_b in zip(a.split("_"), b.split("_")):
        if token_a != token_b:
            break
        common.append(token_a)
    name = "_".join(common)
    return name if name and name not in (a, b) else f"{a}__{b}"


def load_learn2reg_pair(name: str, root: Path, fixed_image: Path, moving_image: Path):
    """One Learn2Reg pair: NIfTI images, masks (read or computed), keypoints in world mm.

    Keypoints are used only when both images have them with the same count (paired rows).
    """
    from graphreg.ops.lungmask import lung_mask
    from graphreg.datasets.pairs import PairData
    from graphreg.io import read_image, read_landmarks

    fixed = read_image(fixed_image)
    moving = read_image(moving_image)
    masks = []
    for image_path, image in ((fixed_image, fixed), (moving_image, moving)):
        path = _l2r_companion(root, image_path, ("masksTr", "masksTs", "masks"), ".nii.gz")
        masks.append(lung_mask(image) if path is None else read_image(path))
    landmark_dirs = ("landmarksTr", "landmarksTs", "keypointsTr", "keypointsTs", "keypoints", "landmarks")
    paths = [_l2r_companion(root, p, landmark_dirs, ".csv") for p in (fixed_image, moving_image)]
    points = [np.zeros((0, 3)), np.zeros((0, 3))]
    if all(p is not None for p in paths):
        loaded = [read_landmarks(p, fmt="l2r").to_world(img.grid).points
                  for p, img in zip(paths, (fixed, moving))]
        if len(loaded[0]) == len(loaded[1]):
            points = loaded
    meta = {"source": "learn2reg", "fixed_image": str(fixed_image), "moving_image": str(moving_image),
            "landmarks": [None if p is None else str(p) for p in paths]}
    return PairData(name, fixed, moving, masks[0], masks[1], points[0], points[1], meta)


__all__ = ["DIRECTIONS", "L2R_SPLITS", "LAYOUTS", "PairRef", "in_direction", "pair_direction", "reverse_pair",
           "detect_layout", "load_dirlab_pair",
           "load_learn2reg_pair", "open_pairs"]
