"""The result of a registration: a transform in physical space, with its provenance.

Convention:
    The registration is computed on an isotropic working grid around the fixed lungs (see
    :mod:`graphreg.pipeline.preprocess`). ``working_field`` is that result as a
    :class:`~graphreg.field.DisplacementField` on the working grid (fixed -> moving, pre-alignment
    included). :attr:`Registration.field` resamples it onto the fixed image's original grid (outside
    the working region the displacement of the nearest working voxel is used).
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field as dataclass_field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .field import DisplacementField
from .jsonable import to_jsonable
from .geometry import Grid
from .spatial import sample_points
from .volume import Volume

#: voxels of the target grid resampled per chunk (bounds the memory of :func:`resample_field`)
_CHUNK_VOXELS = 2_000_000


def resample_field(field: DisplacementField, grid: Grid) -> DisplacementField:
    """The same physical displacement (mm) sampled at every voxel of another ``grid``.

    Points of ``grid`` outside ``field.grid`` take the displacement of its nearest border voxel.
    Work is chunked over slabs of ``grid`` so memory stays bounded for full-resolution CTs.
    """
    depth, height, width = grid.shape
    slab = max(1, _CHUNK_VOXELS // (height * width))
    source = field.displacement
    dtype = source.dtype
    out = torch.empty((1, 3) + grid.shape, dtype=dtype, device=source.device)
    yx = torch.stack(torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                    torch.arange(width, dtype=torch.float64), indexing="ij"), -1).reshape(-1, 2)
    for z0 in range(0, depth, slab):
        z1 = min(depth, z0 + slab)
        z = torch.arange(z0, z1, dtype=torch.float64).repeat_interleave(yx.shape[0])[:, None]
        voxels = torch.cat([z, yx.repeat(z1 - z0, 1)], 1)
        source_voxels = field.grid.world_to_voxel(grid.voxel_to_world(voxels))
        u_source = sample_points(source, source_voxels.to(source.device, dtype))[0].T.double()
        u_mm = field.grid.voxel_vectors_to_mm(u_source.cpu())
        u_target = grid.mm_vectors_to_voxel(u_mm).T.reshape(3, z1 - z0, height, width)
        out[0, :, z0:z1] = u_target.to(source.device, dtype)
    return DisplacementField(out, grid)


@dataclass
class Registration:
    """A finished registration of ``fixed`` (its grid) to ``moving``.

    Attributes:
        working_field: displacement on the working grid (fixed -> moving, voxels of that grid).
        fixed_grid: the fixed image's original grid.
        moving: the moving image (kept to write the warped image).
        method: name of the regulariser / method.
        config: the configuration used, as a plain dict.
        timings: seconds per stage (``"total"`` included).
        keypoints_mm: ``(N, 3)`` fixed keypoints, world mm, or None.
        keypoint_displacements_mm: ``(N, 3)`` their displacements, world mm, or None.
        keypoint_uncertainty_mm: ``(N,)`` spread of each keypoint's displacement distribution, or None.
        extras: anything else worth reporting (device, seed, inputs' checksums ...).
    """

    working_field: DisplacementField
    fixed_grid: Grid
    moving: Optional[Volume]
    method: str
    config: dict
    timings: dict
    keypoints_mm: Optional[np.ndarray] = None
    keypoint_displacements_mm: Optional[np.ndarray] = None
    keypoint_uncertainty_mm: Optional[np.ndarray] = None
    extras: dict = dataclass_field(default_factory=dict)

    @cached_property
    def field(self) -> DisplacementField:
        """The displacement on the fixed image's original grid (computed once)."""
        return resample_field(self.working_field, self.fixed_grid)

    def transform_points(self, points_mm):
        """Fixed world points ``(N, 3)`` mm ``(x, y, z)`` -> their positions in the moving image (mm)."""
        return self.working_field.transform_points(points_mm)

    def warp(self, image: Volume, interpolation: str = "linear", default: float = -1000.0) -> Volume:
        """A moving-space image (any grid) resampled onto the fixed grid through the field."""
        return self.field.warp(image, interpolation, default)

    def jacobian_stats(self, mask: Optional[Volume] = None) -> dict:
        """Jacobian statistics of the field on the fixed grid, inside ``mask`` when given."""
        from .metrics import jacobian_stats

        return jacobian_stats(self.field, None if mask is None else mask.array > 0)

    def report(self, **more: Any) -> dict:
        """The JSON-serialisable summary written as ``report.json``."""
        from . import __version__

        report = {
            "graphreg_version": __version__,
            "method": self.method,
            "timings_s": self.timings,
            "seconds_total": self.timings.get("total"),
            "fixed_grid": {"size_xyz": self.fixed_grid.size_xyz, "spacing": self.fixed_grid.spacing,
                           "origin": self.fixed_grid.origin, "direction": self.fixed_grid.direction},
            "config": self.config,
            "python": platform.python_version(),
            "torch": torch.__version__,
        }
        if self.keypoint_uncertainty_mm is not None:
            spread = np.asarray(self.keypoint_uncertainty_mm)
            report["keypoint_uncertainty_mm"] = {
                "mean": float(spread.mean()), "p50": float(np.median(spread)), "max": float(spread.max())}
        report.update(self.extras)
        report.update(more)
        return report

    def save(self, out_dir, fixed_landmarks_mm: Optional[np.ndarray] = None,
             overwrite: bool = False, **report_extras: Any) -> Path:
        """Write ``field.nii.gz`` (ITK mm), ``disp_l2r.nii.gz``, ``warped.nii.gz`` (when the moving image
        is known), ``landmarks_moved.csv`` (given fixed landmarks), ``keypoints.csv`` and ``report.json``.

        Files are written to a temporary folder beside ``out_dir`` and moved into place at the
        end, so an interrupted run leaves no half-written result. An existing non-empty
        ``out_dir`` is refused unless ``overwrite``.
        """
        from .io.outputs import ResultDirectory

        with ResultDirectory(out_dir, overwrite=overwrite) as staging:
            from .io.fields import write_itk_field, write_l2r_displacement
            from .io.images import write_image
            from .io.landmarks import Landmarks, write_landmarks

            write_itk_field(self.field, staging / "field.nii.gz")
            write_l2r_displacement(self.field, staging / "disp_l2r.nii.gz")
            if self.moving is not None:
                warped = self.warp(self.moving)
                write_image(Volume(warped.array.astype(np.float32), warped.grid), staging / "warped.nii.gz")
            if fixed_landmarks_mm is not None:
                moved = self.transform_points(np.asarray(fixed_landmarks_mm, dtype=np.float64))
                write_landmarks(Landmarks(moved, "world"), staging / "landmarks_moved.csv", fmt="world")
            if self.keypoints_mm is not None:
                self.write_keypoints(staging / "keypoints.csv")
            report = self.report(jacobian=self.jacobian_stats(), **report_extras)
            (staging / "report.json").write_text(json.dumps(to_jsonable(report), indent=2), encoding="utf-8")
        return Path(out_dir)


    def write_keypoints(self, path) -> None:
        """CSV of the keypoints: ``x,y,z`` (world mm, fixed), ``dx,dy,dz`` (mm, fixed -> moving) and,
        when known, ``uncertainty_mm`` (spread of the keypoint's displacement distribution)."""
        from .io.atomic import atomic_write_text

        columns = [self.keypoints_mm, self.keypoint_displacements_mm]
        header = "x,y,z,dx,dy,dz"
        if self.keypoint_uncertainty_mm is not None:
            columns.append(np.asarray(self.keypoint_uncertainty_mm)[:, None])
            header += ",uncertainty_mm"
        rows = np.concatenate(columns, axis=1)
        body = "\n".join(",".join(f"{value:.4f}" for value in row) for row in rows)
        atomic_write_text(path, header + "\n" + body + "\n")


def file_checksum(path) -> str:
    """SHA-256 of a file (or of the sorted files of a folder, e.g. a DICOM series)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for item in files:
        with open(item, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
