"""The result of a registration: a transform in physical space, with its provenance.

Convention:
    The registration is computed on an isotropic working grid around the fixed lungs (see
    :mod:`graphreg.methods.keypoint.preprocess`). ``working_field`` is that result as a
    :class:`~graphreg.core.field.DisplacementField` on the working grid (fixed -> moving, pre-alignment
    included). :attr:`Registration.transform_field` extends it to cover the fixed image (what the
    result folder's ``field.nii.gz`` and ``transform.h5`` hold); :attr:`Registration.field` resamples
    it onto the fixed image's original grid. Outside the working region both use the displacement of
    the nearest working voxel.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field as dataclass_field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import numpy as np
import SimpleITK as sitk
import torch

from graphreg.result.mapping import TwoWayMapping
from graphreg.runtime.allocator import reusing_freed_memory
from graphreg.result.uncertainty import graph_error_map, graph_error_map_report, graph_error_report
from graphreg.errors import GeometryError, GraphregError
from graphreg.core.field import DisplacementField
from graphreg.io.jsonable import to_jsonable
from graphreg.core.geometry import Grid, mapped_voxels
from graphreg.core.spatial import axis_weights, interpolate_axis, sample_points
from graphreg.core.volume import Volume

#: at most this many fixed lung voxels (evenly strided) measure the inverse's round-trip error
_RESIDUAL_POINTS = 200_000
#: voxels of the target grid per chunk of :func:`resample_field` and :func:`jacobian_stats_chunked`
#: (about 250 MB of temporaries per chunk)
_CHUNK_VOXELS = 500_000


def jacobian_stats_chunked(field: DisplacementField, mask: Optional[np.ndarray] = None) -> dict:
    """:func:`graphreg.ops.metrics.jacobian_stats` of a field, computed over slabs of its grid.

    Each slab of about ``_CHUNK_VOXELS`` voxels is differentiated together with one neighbouring
    slice on each side (central differences need them; the grid's own first and last slices keep
    their one-sided differences), so the determinants equal the whole-grid ones exactly. The
    statistics are merged across slabs (Chan et al.'s pairwise update of mean and squared
    deviations), so the memory is bounded by one slab instead of ~160 bytes per voxel.

    Shapes:
        field: on a grid ``(D, H, W)`` with ``D, H, W >= 2``; mask: ``(D, H, W)`` (nonzero = inside)
        or None.

    Returns:
        ``std_log_jacobian``, ``folding_percent``, ``jacobian_min``, ``jacobian_max`` (as
        :func:`graphreg.ops.metrics.jacobian_stats`).

    Raises:
        GeometryError: ``mask`` is not on the field's grid or is empty.
    """
    from graphreg.ops.metrics import LOG_JACOBIAN_FLOOR, jacobian_determinant

    depth, height, width = field.grid.shape
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (depth, height, width):
            raise GeometryError(f"mask: expected shape (D, H, W) = {(depth, height, width)}, got {mask.shape}")
        if not mask.any():
            raise GeometryError("mask: expected at least one non-zero voxel, got an empty mask")
    slab = max(1, _CHUNK_VOXELS // (height * width))
    count, mean, squares, folded = 0, 0.0, 0.0, 0
    low, high = float("inf"), float("-inf")
    with torch.no_grad():
        for z0 in range(0, depth, slab):
            z1 = min(depth, z0 + slab)
            first, last = max(0, z0 - 1), min(depth, z1 + 1)
            part = field.displacement[:, :, first:last]
            jac = jacobian_determinant(part, field.grid.spacing_zyx)[0, z0 - first:z1 - first].to(torch.float64)
            if mask is not None:
                jac = jac[torch.from_numpy(np.ascontiguousarray(mask[z0:z1] > 0)).to(jac.device)]
            if jac.numel() == 0:
                continue
            log_jac = torch.log(jac.clamp_min(LOG_JACOBIAN_FLOOR))
            n, part_mean = log_jac.numel(), float(log_jac.mean())
            part_squares = float(((log_jac - part_mean) ** 2).sum())
            total = count + n
            delta = part_mean - mean
            squares += part_squares + delta * delta * count * n / total
            mean += delta * n / total
            count = total
            folded += int((jac <= 0).sum())
            low, high = min(low, float(jac.min())), max(high, float(jac.max()))
    return {"std_log_jacobian": float(np.sqrt(squares / count)), "folding_percent": 100.0 * folded / count,
            "jacobian_min": low, "jacobian_max": high}


def resample_field(field: DisplacementField, grid: Grid) -> DisplacementField:
    """The same physical displacement (mm) sampled at every voxel of another ``grid``.

    Points of ``grid`` outside ``field.grid`` take the displacement of its nearest border voxel.
    When the two grids' axes are parallel (the working grid shares the fixed image's direction), the
    trilinear interpolation is done one axis at a time (:func:`graphreg.core.spatial.interpolate_axis`;
    besides the result, memory holds the source interpolated along z and x); otherwise work is
    chunked over slabs of ``grid`` so memory stays bounded for full-resolution CTs.
    """
    depth, height, width = grid.shape
    slab = max(1, _CHUNK_VOXELS // (height * width))
    dtype, device = field.displacement.dtype, field.displacement.device
    # target voxel v -> source voxel  offset + v @ steps; a source-voxel vector -> target-voxel vector
    # u @ vectors: a constant linear map, applied on the (smaller) source grid before interpolating
    offset, steps = grid.voxel_map_to(field.grid)
    vectors = torch.as_tensor(grid.mm_vectors_to_voxel(field.grid.voxel_vectors_to_mm(np.eye(3))),
                              dtype=dtype, device=device)
    source = torch.einsum("bcdhw,ce->bedhw", field.displacement, vectors)
    out = torch.empty((1, 3) + grid.shape, dtype=dtype, device=device)
    if np.allclose(steps, np.diag(np.diag(steps)), rtol=0.0, atol=1e-9):
        weights = [axis_weights(field.grid.shape[axis], offset[axis] + np.arange(n) * steps[axis, axis], dtype, device)
                   for axis, n in enumerate(grid.shape)]
        # whole-volume products, band by band: a few large parallel regions (many small ones stall
        # on a busy host); the temporaries are the (smaller) z- and x-interpolated source
        along_zx = interpolate_axis(interpolate_axis(source, 2, weights[0]), 4, weights[2]).contiguous()
        interpolate_axis(along_zx, 3, weights[1], out=out)
        return DisplacementField(out, grid)
    for z0 in range(0, depth, slab):
        z1 = min(depth, z0 + slab)
        source_voxels = mapped_voxels(offset, steps, grid.shape, z0, z1, dtype, device)
        out[0, :, z0:z1] = sample_points(source, source_voxels)[0].reshape(3, z1 - z0, height, width)
    return DisplacementField(out, grid)


def extend_field(field: DisplacementField, grid: Grid) -> DisplacementField:
    """``field`` on a larger ``grid`` of its own lattice (:meth:`Grid.extended_to_cover`): its voxels
    copied, every new voxel given the displacement of the nearest border voxel (what
    :func:`resample_field` computes there, without interpolating).

    Raises:
        GeometryError: ``grid`` is not ``field.grid``'s lattice grown by whole voxels.
    """
    offset, steps = grid.voxel_map_to(field.grid)
    before = -np.rint(offset).astype(int)
    after = np.array(grid.shape) - np.array(field.shape) - before
    if (not np.allclose(steps, np.eye(3), atol=1e-6) or not np.allclose(offset, -before, atol=1e-4)
            or (before < 0).any() or (after < 0).any()):
        raise GeometryError(f"grid: expected the field's lattice grown by whole voxels, got "
                            f"[{grid.describe()}] for a field on [{field.grid.describe()}]")
    if not before.any() and not after.any():
        return field
    # F.pad takes (x_before, x_after, y_before, y_after, z_before, z_after)
    pads = [int(n) for axis in (2, 1, 0) for n in (before[axis], after[axis])]
    return DisplacementField(torch.nn.functional.pad(field.displacement, pads, mode="replicate"), grid)


@dataclass
class Registration(TwoWayMapping):
    """A finished registration of ``fixed`` (its grid) to ``moving``.

    Points and images map both ways (:class:`graphreg.result.mapping.TwoWayMapping`): forward
    through the field, backward (``inverse=True``) through :meth:`inverse_field`.

    Attributes:
        working_field: displacement on the working grid (fixed -> moving, voxels of that grid).
        fixed_grid: the fixed image's original grid.
        moving: the moving image (kept to write the warped image).
        method: name of the regulariser / method.
        config: the configuration used, as a plain dict.
        timings: seconds per stage (``"total"`` included).
        keypoints_mm: ``(N, 3)`` fixed keypoints, world mm, or None.
        keypoint_displacements_mm: ``(N, 3)`` their displacements, world mm, or None.
        keypoint_uncertainty_mm: ``(N,)`` spread of each keypoint's displacement distribution, or None
            (in mm of graph-stage error: :mod:`graphreg.result.uncertainty`, ``report.json``'s
            ``keypoint_graph_error_mm``).
        extras: anything else worth reporting (device, seed, inputs' checksums ...).
        fixed_lungs: the fixed lung mask (any grid) where the inverse's round-trip error is
            measured, or None (then over the working grid).
        valid_mask: where the field is trustworthy (uint8, any grid; :mod:`graphreg.methods.region`), or
            None when not stated.
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
    fixed_lungs: Optional[Volume] = None
    valid_mask: Optional[Volume] = None

    @property
    def status(self) -> Optional[str]:
        """``"ok"``, ``"suspect"`` or ``"failed"`` from the quality checks (``extras["quality"]``), or
        None for methods without them."""
        return self.extras.get("quality", {}).get("status")

    @cached_property
    def field(self) -> DisplacementField:
        """The displacement on the fixed image's original grid (computed once)."""
        return resample_field(self.working_field, self.fixed_grid)

    @cached_property
    def transform_field(self) -> DisplacementField:
        """The working field on its own lattice grown to cover the fixed image: what ``field.nii.gz``
        and ``transform.h5`` hold. ITK interpolates it to exactly the values :meth:`transform_points`
        uses (the resampled :attr:`field` agrees only at the fixed voxel centres)."""
        return extend_field(self.working_field, self.working_field.grid.extended_to_cover(self.fixed_grid))

    @property
    def moving_grid(self) -> Grid:
        """The moving image's grid (where :meth:`inverse_field` lives)."""
        if self.moving is None:
            raise GraphregError("moving: the registration does not hold the moving image, so its grid "
                                "(where the inverse lives) is unknown; use graphreg.ops.inverse.invert_field")
        return self.moving.grid

    def inverse_field(self) -> DisplacementField:
        """The inverse (moving -> fixed) of the working field on the moving grid, computed once.

        See :func:`graphreg.ops.inverse.invert_field`; :meth:`inverse_report` gives its accuracy.
        """
        return self._inverse[0]

    @cached_property
    def _inverse(self) -> tuple[DisplacementField, dict]:
        from graphreg.ops.inverse import invert_field

        start = time.perf_counter()
        inverse, info = invert_field(self.working_field, self.moving_grid)
        return inverse, {**info, "seconds": time.perf_counter() - start}

    def inverse_report(self) -> dict:
        """How well :meth:`inverse_field` inverts the field, for ``report.json``.

        Returns:
            ``round_trip_mm`` (``|u(x) + v(x + u(x))|`` at fixed lung voxels ``x``, at most
            ``_RESIDUAL_POINTS`` of them evenly strided: ``mean``, ``p99``, ``max``, ``n_points``,
            ``region``), ``solver_max_residual_mm`` (``|T(T^-1(y)) - y|`` left at the moving grid's
            voxels), ``unsolved_voxels`` (those left above the solver's tolerance: where the field
            folds), ``iterations`` and ``seconds``.
        """
        from graphreg.ops.inverse import round_trip_error_mm

        region = "working grid" if self.fixed_lungs is None else "fixed lungs"
        lungs = self.fixed_lungs if self.fixed_lungs is not None else \
            Volume(np.ones(self.working_field.shape, np.uint8), self.working_field.grid)
        voxels = np.argwhere(lungs.array > 0)
        voxels = voxels[:: max(1, len(voxels) // _RESIDUAL_POINTS)].astype(np.float64)
        error = round_trip_error_mm(self.working_field, self.inverse_field(), lungs.grid.voxel_to_world(voxels))
        info = self._inverse[1]
        return {"round_trip_mm": {"mean": float(error.mean()), "p99": float(np.percentile(error, 99)),
                                  "max": float(error.max()), "n_points": int(len(error)), "region": region},
                "solver_max_residual_mm": info["max_residual_mm"], "unsolved_voxels": info["unsolved"],
                "iterations": info["iterations"], "seconds": info["seconds"]}

    def uncertainty_map(self) -> Optional[Volume]:
        """The predicted graph-stage error (mm) densified on the working grid, computed once on the
        first call (:func:`graphreg.result.uncertainty.graph_error_map`); None for methods without
        keypoints or without a calibration.

        It predicts the error of the keypoint displacements densified before instance
        optimisation, not the error of the final field (:attr:`working_field`).
        """
        return self._uncertainty_map

    @cached_property
    def _uncertainty_map(self) -> Optional[Volume]:
        if self.keypoints_mm is None or self.keypoint_uncertainty_mm is None:
            return None
        return graph_error_map(self.method, self.config, self.working_field.grid, self.keypoints_mm,
                               self.keypoint_uncertainty_mm)

    def uncertainty_report(self) -> Optional[dict]:
        """``report.json``'s ``uncertainty_map``: :func:`graphreg.result.uncertainty.graph_error_map_report`
        of :meth:`uncertainty_map` over the fixed lungs (else over the whole working grid); None without a map."""
        error_map = self.uncertainty_map()
        if error_map is None:
            return None
        region, name = np.ones(error_map.grid.shape, bool), "working grid"
        if self.fixed_lungs is not None:
            lungs = self.fixed_lungs.resampled(error_map.grid, "nearest").array > 0
            if lungs.any():
                region, name = lungs, "fixed lungs"
        return graph_error_map_report(self.method, error_map, region, name)

    def _point_field(self) -> DisplacementField:
        return self.working_field

    def _image_field(self) -> DisplacementField:
        return self.field

    def _transform_field(self) -> DisplacementField:
        return self.transform_field

    def jacobian_stats(self, mask: Optional[Volume] = None) -> dict:
        """Jacobian statistics of the field on the fixed grid, inside ``mask`` when given.

        The same numbers as :func:`graphreg.ops.metrics.jacobian_stats`, computed slab by slab
        (:func:`jacobian_stats_chunked`) so that a full-resolution CT needs no whole-grid
        Jacobian tensors.
        """
        return jacobian_stats_chunked(self.field, None if mask is None else mask.array > 0)

    def working_jacobian_stats(self) -> dict:
        """Jacobian statistics of :attr:`working_field` over its whole grid (what ``report.json`` holds).

        The working grid is where the field is estimated (the fixed lungs' bounding box plus the
        crop margin, at the working spacing); :attr:`field` is its trilinear interpolation, so its
        finer fixed-grid voxels add no information, only cost, and the extrapolated border outside
        adds voxels with ``J = 1``. Returns the keys of :func:`jacobian_stats_chunked` plus
        ``grid`` (``"working"``), ``shape_zyx`` and ``spacing_mm`` of the grid evaluated.
        """
        grid = self.working_field.grid
        return {**jacobian_stats_chunked(self.working_field), "grid": "working",
                "shape_zyx": list(grid.shape), "spacing_mm": list(grid.spacing)}

    def report(self, **more: Any) -> dict:
        """The JSON-serialisable summary written as ``report.json``."""
        from graphreg import __version__

        report = {
            "graphreg_version": __version__,
            "method": self.method,
            "timings_s": self.timings,
            "seconds_total": self.timings.get("total"),
            "fixed_grid": grid_dict(self.fixed_grid),
            "config": self.config,
            "seed": self.config.get("seed"),
            "device": str(self.working_field.displacement.device),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "simpleitk": sitk.Version_VersionString(),
        }
        if self.moving is not None:
            report["moving_grid"] = grid_dict(self.moving.grid)
        if self.keypoint_uncertainty_mm is not None:
            spread = np.asarray(self.keypoint_uncertainty_mm)
            report["keypoint_uncertainty_mm"] = {
                "mean": float(spread.mean()), "p50": float(np.median(spread)), "max": float(spread.max())}
            calibrated = graph_error_report(self.method, spread)
            if calibrated is not None:
                report["keypoint_graph_error_mm"] = calibrated
        report.update(self.extras)
        report.update(more)
        return report

    def save(self, out_dir, fixed_landmarks_mm: Optional[np.ndarray] = None,
             overwrite: bool = False, outputs=None, started: Optional[float] = None,
             **report_extras: Any) -> Path:
        """Write the chosen outputs (:mod:`graphreg.result.output_kinds`), ``landmarks_moved.csv`` (given fixed
        landmarks) and ``report.json`` into ``out_dir``.

        Args:
            outputs: kinds of :data:`graphreg.result.output_kinds.OUTPUT_KINDS` as a list or comma-separated
                string, ``"all"``, or None for :data:`graphreg.result.output_kinds.DEFAULT_OUTPUTS` (``field``:
                ``field.nii.gz`` ITK mm float32 on :attr:`transform_field`'s grid; ``warped``:
                ``warped.nii.gz``; ``jacobian``: statistics in the report; ``valid_mask``; ``keypoints``:
                ``keypoints.csv``; not by default ``field_fixed_grid`` (:attr:`field`), ``transform``:
                ``transform.h5``, ``inverse``: ``inverse_transform.h5``, ``l2r``: ``disp_l2r.nii.gz`` and
                ``uncertainty``: ``uncertainty.nii.gz``, :meth:`uncertainty_map`). A fixed image with a
                non-orthonormal direction (which NIfTI cannot store) gets ``.mha`` instead of ``.nii.gz``
                for ``field``, ``field_fixed_grid``, ``warped``, ``valid_mask`` and ``uncertainty``.
            started: ``time.perf_counter()`` when the whole command began (reading the images
                included); the report then holds ``seconds_wall``, the time from then until
                ``report.json`` is written.
            report_extras: more entries for ``report.json``.

        ``report.json`` records the graphreg version, config, seed, device, library versions,
        ``outputs`` and ``files`` (what was written), ``timings_s["write"]`` (``write_s``: seconds per
        kind), and ``field_sha256``
        (of the working field, equal for bit-identical runs).

        Files are written to a temporary folder beside ``out_dir`` and moved into place at the
        end, so an interrupted run leaves no half-written result. An existing non-empty
        ``out_dir`` is refused unless ``overwrite``.

        Raises:
            GraphregError: an unknown output kind (before anything is written).
        """
        from graphreg.io.images import nifti_can_store
        from graphreg.io.landmarks import Landmarks, write_landmarks
        from graphreg.io.outputs import ResultDirectory
        from graphreg.result.output_kinds import OUTPUT_KINDS, parse_outputs

        kinds = parse_outputs(outputs)
        start = time.perf_counter()
        # full-resolution temporaries slab after slab: reuse freed memory instead of faulting in fresh pages
        with reusing_freed_memory(), ResultDirectory(out_dir, overwrite=overwrite) as staging:
            # NIfTI cannot hold a non-orthonormal direction (ITK would silently change it): use MetaImage
            suffix = ".nii.gz" if nifti_can_store(self.fixed_grid) else ".mha"
            entries: dict = {}
            seconds: dict = {}  # per kind; the first kind that needs the fixed-grid field pays for it
            for kind in kinds:
                begin = time.perf_counter()
                entries.update(OUTPUT_KINDS[kind].write(self, staging, suffix))
                seconds[kind] = time.perf_counter() - begin
            if fixed_landmarks_mm is not None:
                moved = self.transform_points(np.asarray(fixed_landmarks_mm, dtype=np.float64))
                write_landmarks(Landmarks(moved, "world"), staging / "landmarks_moved.csv", fmt="world")
            # equal for bit-identical runs; the working field determines every output
            checksum = array_checksum(self.working_field.displacement.cpu().numpy())
            now = time.perf_counter()
            self.timings["write"] = now - start
            if started is not None:
                entries["seconds_wall"] = now - started
            files = sorted([path.name for path in staging.iterdir()] + ["report.json"])
            report = self.report(outputs=list(kinds), files=files, write_s=seconds, field_sha256=checksum,
                                 **entries, **report_extras)
            (staging / "report.json").write_text(json.dumps(to_jsonable(report), indent=2), encoding="utf-8")
        return Path(out_dir)

    def write_keypoints(self, path) -> None:
        """CSV of the keypoints: ``x,y,z`` (world mm, fixed), ``dx,dy,dz`` (mm, fixed -> moving) and,
        when known, ``uncertainty_mm`` (spread of the keypoint's displacement distribution)."""
        from graphreg.io.atomic import atomic_write_text

        columns = [self.keypoints_mm, self.keypoint_displacements_mm]
        header = "x,y,z,dx,dy,dz"
        if self.keypoint_uncertainty_mm is not None:
            columns.append(np.asarray(self.keypoint_uncertainty_mm)[:, None])
            header += ",uncertainty_mm"
        rows = np.concatenate(columns, axis=1)
        body = "\n".join(",".join(f"{value:.4f}" for value in row) for row in rows)
        atomic_write_text(path, header + "\n" + body + "\n")


def working_lungs(pair) -> Volume:
    """The fixed lung mask of a :class:`~graphreg.methods.keypoint.preprocess.WorkingPair` as a uint8 Volume
    on its working grid (for :attr:`Registration.fixed_lungs`)."""
    return Volume(pair.fixed_mask[0, 0].cpu().numpy().astype(np.uint8), pair.grid)


def grid_dict(grid: Grid) -> dict:
    """A grid as ``report.json`` holds it: ``size_xyz``, ``spacing``, ``origin``, ``direction`` (ITK order)."""
    return {"size_xyz": grid.size_xyz, "spacing": grid.spacing, "origin": grid.origin, "direction": grid.direction}


def grid_from_dict(value: dict) -> Grid:
    """The inverse of :func:`grid_dict`."""
    size = value["size_xyz"]
    return Grid((size[2], size[1], size[0]), value["spacing"], value["origin"], value["direction"])


def array_checksum(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (C order): equal hashes mean bit-identical arrays."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array.reshape(-1)).cast("B"))  # no copy of a contiguous array
    return digest.hexdigest()


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
