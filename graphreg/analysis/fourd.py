"""Whole 4D-CT registration: every breathing phase registered to one reference phase, point
trajectories through the phases, and the mid-position image.

Convention:
    The reference phase ``K`` is the fixed image of every registration; phase ``i`` is the moving
    image. ``u_i`` is the field of phase ``i`` (:mod:`graphreg.result.registration`: reference grid,
    reference -> phase ``i``, "pull"): the reference point ``p`` lies at ``T_i(p) = p + u_i(p)``
    in phase ``i``; ``u_K = 0``. Points are ``(N, 3)`` world mm ``(x, y, z)``.

    Phases form one breathing cycle, so the order is cyclic: phase ``i`` is reached from ``K``
    along the shorter way round (forward ``K+1, K+2, ...`` for the first half, backward
    ``K-1, K-2, ...`` for the rest; :func:`registration_order`). Its *neighbour* ``n`` is the
    phase before it on that way.

    Warm start (the default): phase ``i`` is registered to the reference by the instance
    optimisation alone (:func:`graphreg.methods.keypoint.instance_opt.optimise_with_config`, the same
    coarse and full-resolution Adam stages as every registration), started from the neighbour's
    field ``u_n`` instead of the keypoint search's; keypoints, the search levels and the
    densification are skipped. The neighbour's field is only a starting point, so its errors do
    not add up along the phases. Cold: every phase runs the whole pipeline on its own.
    ``docs/fourd.md`` has the measured time and temporal consistency of both (and of a
    pre-warp + residual + composition start, which was less accurate).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from graphreg.errors import GeometryError, GraphregError, InputFileError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.result.registration import Registration
from graphreg.core.volume import Volume

#: image files a phase folder may hold (besides DICOM series in sub-folders)
PHASE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


# ---------------------------------------------------------------------- reading
def _phase_name(path: Path) -> str:
    name = path.name
    for suffix in PHASE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def phase_paths(paths: Sequence[str | Path]) -> list[Path]:
    """The phase images of ``paths``: the files themselves, or for one folder its image files
    (:data:`PHASE_SUFFIXES`) and DICOM sub-folders, sorted by name.

    Raises:
        InputFileError: a path does not exist, or the folder holds no phase image.
    """
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        found = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and
                       (p.is_dir() or any(p.name.endswith(s) for s in PHASE_SUFFIXES)))
        if not found:
            raise InputFileError(f"{folder}: expected phase images ({', '.join(PHASE_SUFFIXES)}) or DICOM "
                                 "sub-folders, found none")
        return found
    for path in paths:
        if not path.exists():
            raise InputFileError(f"{path}: phase image not found")
    return paths


def read_phases(paths: Sequence[str | Path]) -> tuple[list[Volume], list[str], list[Optional[Path]]]:
    """Read the phases of a 4D-CT: several 3D images, one folder of them (:func:`phase_paths`) or
    one 4D image (NIfTI / MHA, the 4th axis is the phase).

    Returns:
        the phase volumes (HU), their names (file names without suffix, or ``phase_00`` ... for
        a 4D image) and their files (None for the phases of a 4D image).

    Raises:
        InputFileError: a phase is missing or unreadable (the message names it), or fewer than two
            phases.
    """
    import SimpleITK as sitk

    from graphreg.io.images import read_image

    files = phase_paths(paths)
    if len(files) == 1 and files[0].is_file():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(files[0]))
        try:
            reader.ReadImageInformation()
            four_d = reader.GetDimension() == 4
        except RuntimeError as error:
            raise InputFileError(f"{files[0]}: unreadable image ({error})") from error
        if four_d:
            image = reader.Execute()
            size = list(image.GetSize())
            volumes = [Volume.from_sitk(sitk.Extract(image, size[:3] + [0], [0, 0, 0, t])) for t in range(size[3])]
            names = [f"phase_{t:02d}" for t in range(size[3])]
            sources: list[Optional[Path]] = [None] * size[3]
            files = []
    if files:
        sources = list(files)
        volumes, names = [read_image(path) for path in files], [_phase_name(path) for path in files]
        if len(set(names)) != len(names):
            names = [f"phase_{t:02d}" for t in range(len(files))]
    if len(volumes) < 2:
        raise InputFileError(f"phases: expected at least 2 phases, got {len(volumes)}")
    return volumes, names, sources


def check_phases(phases: Sequence[Volume], names: Sequence[str]) -> None:
    """Raise :class:`GeometryError` unless every phase lies on the first phase's grid (the
    mid-position image and the trajectories compare phases voxel by voxel)."""
    reference = phases[0].grid
    for volume, name in zip(phases, names):
        if not volume.grid.same_as(reference, tol_mm=1e-3):
            raise GeometryError(f"phases: expected every phase on the grid of {names[0]} "
                                f"[{' '.join(reference.describe().split())}], got {name} on "
                                f"[{' '.join(volume.grid.describe().split())}]")


# ---------------------------------------------------------------------- order and composition
def registration_order(count: int, reference: int) -> list[tuple[int, int]]:
    """``(phase, neighbour)`` pairs in the order they are registered (see the module docstring).

    Example: 10 phases, reference 0 -> ``(1, 0), (9, 0), (2, 1), (8, 9), ... (5, 4)``; phase 5,
    half a cycle away, is reached forward.

    Raises:
        GraphregError: ``reference`` is not a phase index.
    """
    if not 0 <= reference < count:
        raise GraphregError(f"reference: expected a phase index 0..{count - 1}, got {reference}")
    order = []
    for step in range(1, count // 2 + 1):
        order.append(((reference + step) % count, (reference + step - 1) % count))
        if step < count - count // 2:  # an even count meets forward at the opposite phase
            order.append(((reference - step) % count, (reference - step + 1) % count))
    return order


def _voxel_world(grid: Grid) -> np.ndarray:
    """World mm of every voxel centre of ``grid``, ``(D * H * W, 3)``."""
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in grid.shape], indexing="ij"), axis=-1)
    return grid.voxel_to_world(index.reshape(-1, 3))


def composed_field(grid: Grid, *fields: DisplacementField) -> DisplacementField:
    """The displacement on ``grid`` of the transforms applied in the order given:
    ``T(x) = T_last(... T_first(x))``, each ``T_k(x) = x + u_k(x)`` (outside its grid a field
    takes its nearest border displacement, :meth:`DisplacementField.transform_points`).

    When every field lies on ``grid`` the composition is done on the grid,
    ``u(x) = u_1(x) + u_2(x + u_1(x))`` (:func:`graphreg.core.spatial.warp`, border padding); else
    through world points.

    Shapes:
        returns a field ``(1, 3, *grid.shape)`` in voxels of ``grid``.
    """
    from graphreg.core.spatial import warp

    if all(item.grid.same_as(grid) for item in fields):
        total = fields[0].displacement.double()
        for item in fields[1:]:
            total = total + warp(item.displacement.double(), total)
        return DisplacementField(total.to(fields[0].dtype), grid)
    points = _voxel_world(grid)
    moved = points
    for item in fields:
        moved = item.transform_points(moved)
    return DisplacementField.from_mm_array((moved - points).reshape(grid.shape + (3,)), grid)


def _refined_from(fixed: Volume, moving: Volume, lungs: Volume, neighbour: Registration, neighbour_name: str,
                  config: Any, method: str, device: Optional[str]) -> Registration:
    """Phase ``moving`` registered to ``fixed`` by the instance optimisation alone, started from the
    neighbour's field (the keypoint search, regularisation and densification are skipped).

    The neighbour's working field (pre-alignment included) becomes this pair's starting
    displacement after subtracting this pair's own pre-alignment (:mod:`graphreg.methods.workflow`);
    :func:`graphreg.methods.workflow.wrap_registration` adds it back and runs the quality checks; region
    ``"lungs"`` is then applied as :func:`graphreg.register` applies it.
    """
    from graphreg.api import region_config, with_lung_region
    from graphreg.core.config import load_config
    from graphreg.runtime.device import resolve_device
    from graphreg.methods.keypoint.instance_opt import instance_features, optimise_with_config
    from graphreg.result.registration import resample_field
    from graphreg.methods.workflow import prepare_pair, read_inputs, wrap_registration

    cfg = load_config(config)
    start = time.perf_counter()
    prepared = prepare_pair(read_inputs(fixed, moving, lungs, None), cfg.preprocess, resolve_device(device))
    pair = prepared.pair
    initial = neighbour.working_field
    if not initial.grid.same_as(pair.grid):
        initial = resample_field(initial, pair.grid)
    shift = pair.grid.mm_vectors_to_voxel(torch.as_tensor(pair.translation_mm, dtype=torch.float64))
    initial = initial.displacement.to(pair.fixed.device, torch.float32) - \
        shift.to(pair.fixed.device, torch.float32).view(1, 3, 1, 1, 1)
    timings = {"preprocess": time.perf_counter() - start}
    tick = time.perf_counter()
    features = instance_features(pair.fixed, pair.moving, cfg.mind.radius, cfg.instance_opt)
    timings["mind_io"] = time.perf_counter() - tick
    dense, stages = optimise_with_config(*features, initial, pair.fixed_mask, cfg.instance_opt, cfg.seed)
    timings.update(stages)
    timings["total"] = time.perf_counter() - start
    result = wrap_registration(prepared, dense.detach(), method, cfg.to_dict(), timings, extras={
        "warm_start": {"from_phase": neighbour_name,
                       "stages": "instance optimisation only, started from the neighbour's field"}})
    return with_lung_region(result, region_config(config, None))


# ---------------------------------------------------------------------- the 4D registration
@dataclass
class FourDRegistration:
    """Every phase registered to the reference.

    Attributes:
        phases: the phase volumes (HU, one grid); names: their names.
        reference: index of the reference phase.
        lungs: the reference lung mask (on the phases' grid).
        registrations: ``{phase index: Registration}`` for every phase but the reference.
        neighbours: ``{phase index: neighbour index}`` (the warm start's source; also recorded cold).
        warm: whether the phases were warm-started.
        seconds: wall time per phase (reading excluded) and ``"total"``.
    """

    phases: list[Volume]
    names: list[str]
    reference: int
    lungs: Volume
    registrations: dict[int, Registration]
    neighbours: dict[int, int]
    warm: bool
    seconds: dict = dataclass_field(default_factory=dict)

    @property
    def grid(self) -> Grid:
        """The reference (fixed) grid."""
        return self.phases[self.reference].grid

    def fields(self) -> list[Optional[DisplacementField]]:
        """The working-grid fields, one per phase in phase order (None for the reference)."""
        return [None if i == self.reference else self.registrations[i].working_field
                for i in range(len(self.phases))]

    def trajectories(self, points_mm) -> np.ndarray:
        """:func:`trajectories` of reference points through every phase."""
        from graphreg.result.mapping import check_inside

        points = np.asarray(points_mm, dtype=np.float64)
        check_inside("points", points, self.grid, "reference")
        return trajectories(self.fields(), points)

    def midposition(self) -> tuple[Volume, DisplacementField]:
        """:func:`midposition_image` of the phases."""
        fields = [None if i == self.reference else self.registrations[i].field for i in range(len(self.phases))]
        return midposition_image(self.phases, fields, self.grid)


def register_4d(phases: Sequence[Any], reference: int = 0, lungs: Any = None, method: str = "corrfield",
                config: Any = None, warm: bool = True, names: Optional[Sequence[str]] = None,
                device: Optional[str] = None, progress: Optional[Callable[[str], None]] = None,
                threads: Optional[int] = None) -> FourDRegistration:
    """Register every phase of a 4D-CT to the reference phase (see the module docstring).

    Args:
        phases: the phases in breathing order (paths, ``SimpleITK.Image``, Volumes: any form
            :func:`graphreg.api.register` takes), all on one grid.
        reference: index of the reference (fixed) phase.
        lungs: reference lung mask (computed once by :func:`graphreg.ops.lungmask.lung_mask`
            when None) used by every registration.
        method, config, device, threads: as for :func:`graphreg.api.register` (a warm-started
            phase uses only the ``preprocess``, ``mind`` and ``instance_opt`` sections of ``config``).
        warm: warm-start each phase from its neighbour (False: each phase on its own); keypoint
            methods only.
        names: the phases' names (default ``phase_00`` ...).

    Raises:
        GeometryError: the phases are not on one grid, or the mask is not on it.
        GraphregError: ``reference`` out of range, ``warm`` with a method that is not a keypoint
            method; any error of :func:`graphreg.api.register`.
    """
    from graphreg.api import KEYPOINT_METHODS, register
    from graphreg.core.config import load_config
    from graphreg.ops.lungmask import lung_mask
    from graphreg.io.inputs import as_optional_mask, as_volume
    from graphreg.runtime.threads import thread_report, use_threads

    say = progress or (lambda line: None)
    if warm and method not in KEYPOINT_METHODS:
        raise GraphregError(f"warm: the warm start runs the keypoint methods' instance optimisation "
                            f"({', '.join(KEYPOINT_METHODS)}), not {method!r}; register cold (warm=False, --cold)")
    if warm and load_config(config).region.mode == "body":
        raise GraphregError("warm: the warm start registers the lungs only (region 'lungs'); register with "
                            "region 'body' cold (warm=False, --cold)")
    if warm and not load_config(config).instance_opt.runs():
        raise GraphregError("warm: the warm start is the instance optimisation, which the config switches off "
                            "(instance_opt); register cold (warm=False, --cold)")
    volumes = [as_volume(phase, f"phases[{i}]") for i, phase in enumerate(phases)]
    names = list(names) if names is not None else [f"phase_{i:02d}" for i in range(len(volumes))]
    check_phases(volumes, names)
    order = registration_order(len(volumes), reference)
    fixed = volumes[reference]
    mask = as_optional_mask(lungs, "lungs")
    if mask is None:
        mask = lung_mask(fixed)
    elif not mask.grid.same_as(fixed.grid, tol_mm=1e-3):
        raise GeometryError(f"lungs: expected a mask on the phases' grid [{' '.join(fixed.grid.describe().split())}], "
                            f"got [{' '.join(mask.grid.describe().split())}]")
    start = time.perf_counter()
    registrations: dict[int, Registration] = {}
    seconds: dict = {}
    for index, neighbour in order:
        tick = time.perf_counter()
        moving = volumes[index]
        if warm and neighbour != reference:
            with use_threads(threads) as count:
                result = _refined_from(fixed, moving, mask, registrations[neighbour], names[neighbour], config,
                                       method, device)
            result.extras.update(thread_report(count))
        else:
            result = register(fixed, moving, mask, None, method=method, config=config, device=device,
                              threads=threads)
        registrations[index] = result
        seconds[names[index]] = time.perf_counter() - tick
        how = f"warm from {names[neighbour]}" if warm and neighbour != reference else "cold"
        say(f"{names[index]} -> {names[reference]} ({how}): {seconds[names[index]]:.1f} s"
            f"{f', status {result.status}' if result.status else ''}")
    seconds["total"] = time.perf_counter() - start
    return FourDRegistration(volumes, names, reference, mask, registrations, dict(order), warm, seconds)


# ---------------------------------------------------------------------- trajectories, mid-position
def trajectories(fields: Sequence[Optional[DisplacementField]], points_mm) -> np.ndarray:
    """Positions of reference points in every phase: ``T_i(p) = p + u_i(p)``.

    Shapes:
        fields: one per phase, reference -> phase ``i`` (None for the reference phase:
        ``T_K(p) = p``); points_mm: ``(P, 3)`` world mm; returns ``(P, N_phases, 3)`` world mm.
    """
    points = np.asarray(points_mm, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise GraphregError(f"points_mm: expected shape (P, 3), got {points.shape}")
    return np.stack([points if item is None else item.transform_points(points) for item in fields], axis=1)


def midposition_image(phases: Sequence[Volume], fields: Sequence[Optional[DisplacementField]],
                      grid: Grid) -> tuple[Volume, DisplacementField]:
    """The mid-position image: every phase warped to the mean position over the cycle, averaged
    (the mid-position CT of Wolthaus et al., Med. Phys. 35(9) 2008, with the mean of the phases).

    With ``N`` phases and ``T_i(x) = x + u_i(x)`` (reference -> phase ``i``, ``u_ref = 0``), the
    mean position of the reference point ``x`` is ``T_mid(x) = x + (1/N) sum_i u_i(x)``. A
    mid-position point ``y`` comes from the reference point ``T_mid^-1(y)`` (Newton inverse,
    :func:`graphreg.ops.inverse.invert_field`), which lies at ``T_i(T_mid^-1(y))`` in phase ``i``, so

        ``I_mid(y) = (1/N) sum_i I_i(T_i(T_mid^-1(y)))``.

    Shapes:
        phases: ``N`` volumes; fields: ``N`` fields on ``grid`` (None for the reference);
        grid: the reference grid, also the mid-position image's grid.

    Returns:
        the mid-position image (float32 HU on ``grid``) and the mean displacement
        ``(1/N) sum_i u_i`` (reference -> mid-position, on ``grid``).
    """
    from graphreg.ops.inverse import invert_field

    if len(phases) != len(fields):
        raise GraphregError(f"fields: expected one per phase ({len(phases)}), got {len(fields)}")
    present = [item for item in fields if item is not None]
    for item in present:
        if not item.grid.same_as(grid, tol_mm=1e-3):
            raise GeometryError("fields: expected fields on the reference grid "
                                f"[{' '.join(grid.describe().split())}], got [{' '.join(item.grid.describe().split())}]")
    mean = sum(item.displacement.double() for item in present) / len(phases)
    mean_field = DisplacementField(mean, grid)
    to_reference, _ = invert_field(mean_field, grid)
    total = np.zeros(grid.shape, np.float64)
    for phase, item in zip(phases, fields):
        steps = (to_reference,) if item is None else (to_reference, item)
        total += composed_field(grid, *steps).warp(phase, "linear", default=float(phase.array.min())).array
    return Volume((total / len(phases)).astype(np.float32), grid), mean_field.to(dtype=torch.float32)


def trajectory_rows(names: Sequence[str], positions: np.ndarray, reference: int) -> list[dict]:
    """One CSV row per point and phase: ``point, phase, index, x, y, z`` (world mm) and
    ``dx, dy, dz`` (mm, from the reference position).

    Shapes:
        positions: ``(P, N_phases, 3)`` world mm (:func:`trajectories`).
    """
    rows = []
    for point, path in enumerate(positions):
        for index, (name, where) in enumerate(zip(names, path)):
            shift = where - path[reference]
            rows.append({"point": point, "phase": name, "index": index,
                         **{axis: float(v) for axis, v in zip("xyz", where)},
                         **{f"d{axis}": float(v) for axis, v in zip("xyz", shift)}})
    return rows


__all__ = ["FourDRegistration", "composed_field", "midposition_image",
           "read_phases", "register_4d", "registration_order", "trajectories", "trajectory_rows"]
