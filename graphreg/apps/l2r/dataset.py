"""A Learn2Reg task folder as distributed: its ``dataset.json``, the pairs of a split, their files.

Layout (Learn2Reg 2022/2023; e.g. LungCT, NLST)::

    TASK/
      <TASK>_dataset.json     keys used: "name", "tensorImageShape" {"0": [X, Y, Z]} (optional),
                              "labels" {"1": "..."} (optional), and the split's pair list
                              "registration_val" / "registration_test" / "training_paired_images":
                              [{"fixed": "./imagesTr/<TASK>_0001_0000.nii.gz",
                                "moving": "./imagesTr/<TASK>_0001_0001.nii.gz"}, ...]
      imagesTr/  masksTr/  keypointsTr/  landmarksTr/  labelsTr/   (...Ts for test data)

Convention (the official evaluation script, github.com/MDL-UzL/L2R ``evaluation/evaluation.py``):
    - An image name ends in ``_CCCC_MMMM.nii.gz``: 4-digit case id, 4-digit modality / phase id.
    - Companion files are found by replacing ``images`` in the image's relative path: ``masks``
      (``.nii.gz``), ``labels`` (``.nii.gz``), ``landmarks`` and ``keypoints`` (``.csv``: one
      0-based voxel ``x,y,z`` per line, in the image's nibabel index order ``i, j, k``). Keypoints
      of a pair with different modalities (other than ``0000`` -> ``0001``) live in
      ``keypoints<ab>`` with the sorted modality digits, e.g. ``keypoints01Tr``.
    - The submission file of a pair is ``disp_<fixed case>_<moving case>.nii.gz``; pairs whose
      modalities differ (other than ``0000`` -> ``0001``) use
      ``disp_<fixed case>_<fixed mod>_<moving case>_<moving mod>.nii.gz``. The pair id below is
      that name without ``disp_`` and ``.nii.gz``.

Every check runs in :func:`read_dataset`, before anything is registered or written.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from graphreg.errors import GeometryError, InputFileError

#: split names accepted on the command line -> the dataset.json key of the pair list
SPLITS = {"validation": "registration_val", "val": "registration_val",
          "test": "registration_test", "training": "training_paired_images", "train": "training_paired_images"}
_IMAGE_NAME = re.compile(r"_(\d{4})_(\d{4})\.nii\.gz$")


@dataclass(frozen=True)
class L2RPair:
    """One pair of a split, every path resolved (None: the file does not exist).

    Attributes:
        id: ``"0001_0001"`` (fixed case, moving case) or ``"0001_0000_0002_0002"`` (with modalities).
        index: position in the split's list.
        fixed, moving: image paths; fixed_rel, moving_rel: as written in dataset.json.
        fixed_mask, moving_mask, fixed_keypoints, moving_keypoints, fixed_landmarks,
        moving_landmarks, fixed_labels, moving_labels: companion files or None.
    """

    id: str
    index: int
    fixed: Path
    moving: Path
    fixed_rel: str
    moving_rel: str
    fixed_mask: Optional[Path] = None
    moving_mask: Optional[Path] = None
    fixed_keypoints: Optional[Path] = None
    moving_keypoints: Optional[Path] = None
    fixed_landmarks: Optional[Path] = None
    moving_landmarks: Optional[Path] = None
    fixed_labels: Optional[Path] = None
    moving_labels: Optional[Path] = None

    @property
    def disp_name(self) -> str:
        """The submission file name, ``disp_<id>.nii.gz``."""
        return f"disp_{self.id}.nii.gz"


@dataclass(frozen=True)
class L2RDataset:
    """A task's dataset.json read for one split.

    Attributes:
        path: the dataset.json; root: its folder; name: the task name.
        split: the pair list's key (``"registration_val"``, ...).
        pairs: the split's pairs, in the file's order.
        labels: label values of the ``"labels"`` entry other than 0 (Dice), empty when absent.
        shape: ``tensorImageShape["0"]`` (X, Y, Z) when given, else None.
    """

    path: Path
    root: Path
    name: str
    split: str
    pairs: tuple
    labels: tuple = ()
    shape: Optional[tuple] = None

    def select(self, ids: Optional[Sequence[str]]) -> list[L2RPair]:
        """The pairs with the given ids (all for None), in the dataset's order.

        Raises:
            InputFileError: an id that is not a pair of the split (the message lists the known ones).
        """
        if not ids:
            return list(self.pairs)
        known = {pair.id: pair for pair in self.pairs}
        for pair_id in ids:
            if pair_id not in known:
                raise InputFileError(f"pair: {pair_id!r} is not a pair of {self.path.name} {self.split}; "
                                     f"expected one of {', '.join(known)}")
        return [pair for pair in self.pairs if pair.id in set(ids)]


def _case(rel: str, where: str) -> tuple[str, str]:
    match = _IMAGE_NAME.search(rel)
    if match is None:
        raise InputFileError(f"{where}: expected an image named <TASK>_CCCC_MMMM.nii.gz (4-digit case and "
                             f"modality ids, as Learn2Reg names them), got {rel!r}")
    return match.group(1), match.group(2)


def _short_name(fixed_mod: str, moving_mod: str) -> bool:
    """Whether the official script accepts ``disp_<case>_<case>`` for these modalities."""
    return fixed_mod == moving_mod or (fixed_mod, moving_mod) == ("0000", "0001")


def pair_id(fixed_rel: str, moving_rel: str, where: str = "pair") -> str:
    """The submission id of a pair from its two image paths (see the module docstring)."""
    (fc, fm), (mc, mm) = _case(fixed_rel, f"{where}.fixed"), _case(moving_rel, f"{where}.moving")
    return f"{fc}_{mc}" if _short_name(fm, mm) else f"{fc}_{fm}_{mc}_{mm}"


def _companion(root: Path, rel: str, folder: str, suffix: str) -> Optional[Path]:
    path = root / rel.replace("images", folder).replace(".nii.gz", suffix)
    return path if path.is_file() else None


def _keypoint_folder(fixed_mod: str, moving_mod: str) -> str:
    if _short_name(fixed_mod, moving_mod):
        return "keypoints"
    low, high = sorted((int(fixed_mod), int(moving_mod)))
    return f"keypoints{low}{high}"


def _image_shape(path: Path, where: str) -> tuple:
    import nibabel as nib

    try:
        shape = tuple(int(n) for n in nib.load(str(path)).shape)
    except Exception as error:  # nibabel raises many types for a bad header
        raise InputFileError(f"{where}: {path} is not a readable NIfTI image ({error})") from error
    if len(shape) != 3:
        raise InputFileError(f"{where}: expected a 3D image, got shape {shape} in {path}")
    return shape


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise InputFileError(f"dataset: {path} not found (expected a Learn2Reg <TASK>_dataset.json)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise InputFileError(f"dataset: {path} is not readable JSON ({error})") from error
    if not isinstance(info, dict):
        raise InputFileError(f"dataset: {path}: expected a JSON object, got {type(info).__name__}")
    return info


def _labels(info: dict, path: Path) -> tuple:
    labels = info.get("labels") or {}
    if not isinstance(labels, dict):
        raise InputFileError(f"dataset: {path.name} 'labels': expected an object {{\"1\": \"name\"}}, got {labels!r}")
    try:
        return tuple(sorted(int(key) for key in labels if int(key) != 0))
    except ValueError as error:
        raise InputFileError(f"dataset: {path.name} 'labels': expected integer keys, got {sorted(labels)}") from error


def _shape(info: dict, path: Path) -> Optional[tuple]:
    shapes = info.get("tensorImageShape")
    if shapes is None:
        return None
    shape = shapes.get("0") if isinstance(shapes, dict) else None
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(n, int) and n > 0 for n in shape)):
        raise InputFileError(f"dataset: {path.name} 'tensorImageShape': expected {{\"0\": [X, Y, Z]}}, got {shapes!r}")
    return tuple(shape)


def read_dataset(path: Union[str, os.PathLike], split: str = "validation") -> L2RDataset:
    """Read and check a Learn2Reg ``dataset.json`` for one split.

    Checks, in this order, with a message naming the entry: the file is a JSON object; ``split``
    is known and its list is non-empty; each entry has string ``fixed`` and ``moving`` named
    ``..._CCCC_MMMM.nii.gz``; no two entries have the same pair id; every image exists, is a 3D
    NIfTI image and, when the file gives ``tensorImageShape``, has that shape.

    Raises:
        InputFileError: any of the above.
        GeometryError: an image's shape differs from ``tensorImageShape``.
    """
    path = Path(path)
    if split not in SPLITS:
        raise InputFileError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    info = _load_json(path)
    key = SPLITS[split]
    entries = info.get(key)
    if not isinstance(entries, list) or not entries:
        raise InputFileError(f"dataset: {path.name}: expected a non-empty list {key!r} of "
                             f"{{\"fixed\", \"moving\"}} pairs for split {split!r}; keys: {', '.join(sorted(info))}")
    root = path.resolve().parent
    shape = _shape(info, path)
    pairs: list[L2RPair] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        where = f"{path.name} {key}[{index}]"
        if not (isinstance(entry, dict) and isinstance(entry.get("fixed"), str)
                and isinstance(entry.get("moving"), str)):
            raise InputFileError(f"dataset: {where}: expected {{\"fixed\": path, \"moving\": path}}, got {entry!r}")
        fixed_rel, moving_rel = entry["fixed"], entry["moving"]
        ident = pair_id(fixed_rel, moving_rel, f"dataset: {where}")
        if ident in seen:
            raise InputFileError(f"dataset: {where}: pair {ident} is also entry {seen[ident]}")
        seen[ident] = index
        for role, rel in (("fixed", fixed_rel), ("moving", moving_rel)):
            image = root / rel
            if not image.is_file():
                raise InputFileError(f"dataset: {where}.{role}: {rel} not found (looked for {image})")
            image_shape = _image_shape(image, f"dataset: {where}.{role}")
            if shape is not None and image_shape != shape:
                raise GeometryError(f"dataset: {where}.{role}: expected the tensorImageShape {shape}, "
                                    f"got {image_shape} in {rel}")
        keypoints = _keypoint_folder(_case(fixed_rel, where)[1], _case(moving_rel, where)[1])
        files = {}
        for role, rel in (("fixed", fixed_rel), ("moving", moving_rel)):
            files[f"{role}_mask"] = _companion(root, rel, "masks", ".nii.gz")
            files[f"{role}_labels"] = _companion(root, rel, "labels", ".nii.gz")
            files[f"{role}_landmarks"] = _companion(root, rel, "landmarks", ".csv")
            files[f"{role}_keypoints"] = _companion(root, rel, keypoints, ".csv")
        pairs.append(L2RPair(ident, index, root / fixed_rel, root / moving_rel, fixed_rel, moving_rel, **files))
    name = str(info.get("name") or path.stem.replace("_dataset", ""))
    return L2RDataset(path, root, name, key, tuple(pairs), _labels(info, path), shape)


__all__ = ["L2RDataset", "L2RPair", "SPLITS", "pair_id", "read_dataset"]
