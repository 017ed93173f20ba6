"""Slice figures of a registration with matplotlib (Agg): images, checkerboards, differences,
displacement, Jacobian determinant, uncertainty map, landmark errors.

Every figure function returns a :class:`matplotlib.figure.Figure` (no pyplot state, safe in
threads and on headless machines); :func:`save_figure` writes it as PNG.

Convention:
    Volumes are :class:`~graphreg.core.volume.Volume` (array ``(z, y, x)``) and fields
    :class:`~graphreg.core.field.DisplacementField` on the same grid (images on other grids are
    resampled onto the field's grid first). Slices are shown the way radiologists read them,
    whatever the order of the axes in the file (:class:`DisplayFrame`):

    - axial: looking from the feet, anterior at the top, patient right on the left;
    - coronal: looking from the front, head at the top, patient right on the left;
    - sagittal: looking from the patient's left, head at the top, anterior on the left.

    Axes are labelled in world mm (LPS), so pixels are drawn with their physical size (the
    aspect ratio follows the spacing). Displacement vectors are world mm; the quiver shows their
    in-plane components.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from graphreg.errors import GeometryError, GraphregError, ShapeError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.core.volume import Volume

#: the three slice orientations, in figure column order
PLANES = ("axial", "coronal", "sagittal")
# per plane: (world axis fixed by the slice, horizontal world axis, vertical world axis); world
# axes 0 = x (right -> left), 1 = y (anterior -> posterior), 2 = z (inferior -> superior)
_PLANE_AXES = {"axial": (2, 0, 1), "coronal": (1, 0, 2), "sagittal": (0, 1, 2)}
_AXIS_LABELS = ("x (mm)  R → L", "y (mm)  A → P", "z (mm)  I → S")
#: a CT lung window (HU) used when an image looks like Hounsfield units
LUNG_WINDOW_HU = (-1000.0, 200.0)


# ---------------------------------------------------------------------- display geometry
@dataclass(frozen=True)
class DisplayFrame:
    """How the voxels of ``grid`` are laid out on screen.

    Each image axis is matched to the world axis (LPS) it runs along most closely (exact for
    axis-aligned grids, the nearest axis-aligned view of an oblique one), so that every plane can
    be cut and oriented as described in the module docstring, and positions are given in world
    mm along the matched axes.

    Attributes:
        grid: the grid being shown.
        array_axis: for world axis ``w`` (0 = x, 1 = y, 2 = z), the ``(z, y, x)`` array axis
            running along it.
        flipped: for world axis ``w``, whether the array index decreases along ``+w``.
    """

    grid: Grid
    array_axis: tuple[int, int, int]
    flipped: tuple[bool, bool, bool]

    @classmethod
    def from_grid(cls, grid: Grid) -> "DisplayFrame":
        """The frame of ``grid`` (the matching of axes maximises ``|direction cosines|``)."""
        from scipy.optimize import linear_sum_assignment

        cosines = grid.direction_matrix  # rows: world x, y, z; columns: image axes i, j, k
        rows, cols = linear_sum_assignment(-np.abs(cosines))
        image_axis = dict(zip(rows.tolist(), cols.tolist()))
        array_axis = tuple(2 - image_axis[w] for w in range(3))
        flipped = tuple(bool(cosines[w, image_axis[w]] < 0) for w in range(3))
        return cls(grid, array_axis, flipped)

    def size(self, world_axis: int) -> int:
        """Number of voxels along ``world_axis``."""
        return self.grid.shape[self.array_axis[world_axis]]

    def spacing(self, world_axis: int) -> float:
        """Voxel size (mm) along ``world_axis``."""
        return self.grid.spacing_zyx[self.array_axis[world_axis]]

    def _display_index(self, array_index, world_axis: int):
        """Array index along ``array_axis[w]`` -> index counted along ``+w``."""
        n = self.size(world_axis)
        return n - 1 - array_index if self.flipped[world_axis] else array_index

    def offset(self, world_axis: int) -> float:
        """World coordinate (mm) of the first displayed voxel along ``world_axis``."""
        corner = np.zeros(3)
        for w in range(3):
            corner[self.array_axis[w]] = self.size(w) - 1 if self.flipped[w] else 0
        return float(self.grid.voxel_to_world(corner)[world_axis])

    def coordinates(self, world_axis: int) -> np.ndarray:
        """``(n,)`` display positions (mm) of the voxels along ``world_axis``, increasing."""
        return self.offset(world_axis) + self.spacing(world_axis) * np.arange(self.size(world_axis))

    def extent(self, plane: str) -> tuple[float, float, float, float]:
        """``imshow`` extent ``(left, right, bottom, top)`` in mm of a plane (``origin="lower"``)."""
        _, h, v = _plane_axes(plane)
        xs, ys = self.coordinates(h), self.coordinates(v)
        dh, dv = self.spacing(h) / 2.0, self.spacing(v) / 2.0
        return (xs[0] - dh, xs[-1] + dh, ys[0] - dv, ys[-1] + dv)

    def take(self, array, plane: str, index: int) -> np.ndarray:
        """One displayed slice of a ``(z, y, x[, ...])`` array.

        Args:
            array: numpy array ``(z, y, x)`` of the grid, optionally with trailing dimensions
                (e.g. vector components).
            plane: one of :data:`PLANES`.
            index: slice number counted along ``+w`` of the plane's normal world axis.

        Shapes:
            returns: ``(rows, cols[, ...])`` with rows along the plane's vertical world axis
            (increasing, for ``origin="lower"``) and columns along its horizontal world axis.
        """
        s = _plane_axes(plane)[0]
        n = self.size(s)
        if not 0 <= index < n:
            raise GraphregError(f"index: expected a {plane} slice in [0, {n}), got {index}")
        cut = np.take(np.asarray(array), self._display_index(index, s), axis=self.array_axis[s])
        return self.orient_cut(plane, cut)

    def orient_cut(self, plane: str, cut) -> np.ndarray:
        """Orient an already cut slice for display.

        Shapes:
            cut: ``(a, b[, ...])`` = the two array axes left after removing the plane's normal
            axis, in array order; returns ``(rows, cols[, ...])`` as :meth:`take`.
        """
        s, h, v = _plane_axes(plane)
        remaining = [a for a in range(3) if a != self.array_axis[s]]
        order = [remaining.index(self.array_axis[v]), remaining.index(self.array_axis[h])]
        cut = np.moveaxis(np.asarray(cut), order, [0, 1])
        if self.flipped[v]:
            cut = cut[::-1]
        if self.flipped[h]:
            cut = cut[:, ::-1]
        return np.ascontiguousarray(cut)

    def array_index(self, plane: str, index: int) -> tuple[int, int]:
        """``(array axis, array index)`` of displayed slice ``index`` of ``plane``."""
        s = _plane_axes(plane)[0]
        return self.array_axis[s], int(self._display_index(index, s))

    def display_points(self, points_mm) -> np.ndarray:
        """World points ``(N, 3)`` mm -> display positions ``(N, 3)`` mm along world x, y, z."""
        voxels = self.grid.world_to_voxel(np.asarray(points_mm, dtype=np.float64))
        out = np.empty_like(voxels)
        for w in range(3):
            index = self._display_index(voxels[:, self.array_axis[w]], w)
            out[:, w] = self.offset(w) + self.spacing(w) * index
        return out


def _plane_axes(plane: str) -> tuple[int, int, int]:
    if plane not in _PLANE_AXES:
        raise GraphregError(f"plane: expected one of {PLANES}, got {plane!r}")
    return _PLANE_AXES[plane]


def default_slices(frame: DisplayFrame, mask: Optional[Volume] = None) -> dict[str, int]:
    """Display slice numbers per plane, else the grid centre.

    With a lung ``mask``: axial and coronal slices through its centre of mass; the sagittal slice
    through the centre of mass of the mask's patient-right half (the right lung), since the
    centre of both lungs lies in the mediastinum.
    """
    centre = [(frame.size(w) - 1) / 2.0 for w in range(3)]
    if mask is not None:
        inside = np.argwhere(np.asarray(mask.array) > 0)
        if len(inside):
            display = np.stack([frame._display_index(inside[:, frame.array_axis[w]], w) for w in range(3)], 1)
            centre = display.mean(axis=0).tolist()
            right = display[display[:, 0] <= centre[0], 0]
            centre[0] = float(right.mean())
    return {plane: int(round(centre[_plane_axes(plane)[0]])) for plane in PLANES}


def _show(axes, frame: DisplayFrame, plane: str, image: np.ndarray, **kwargs):
    artist = axes.imshow(image, origin="lower", extent=frame.extent(plane),
                         interpolation="nearest", **kwargs)
    axes.set_aspect("equal")
    if plane == "axial":
        axes.invert_yaxis()  # anterior at the top
    return artist


def _label(axes, plane: str, title: str = "", small: bool = True) -> None:
    _, h, v = _plane_axes(plane)
    size = 7 if small else 9
    axes.set_xlabel(_AXIS_LABELS[h], fontsize=size)
    axes.set_ylabel(_AXIS_LABELS[v], fontsize=size)
    axes.tick_params(labelsize=size - 1)
    if title:
        axes.set_title(title, fontsize=size + 2)


# ---------------------------------------------------------------------- inputs
def intensity_window(volume: Volume) -> tuple[float, float]:
    """Display range: the CT lung window when the image looks like HU, else the 1-99th percentiles."""
    array = np.asarray(volume.array)
    if array.min() < -500:
        return LUNG_WINDOW_HU
    lo, hi = np.percentile(array, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def on_grid(volume: Volume, grid: Grid, default: float = 0.0, interpolation: str = "linear") -> Volume:
    """``volume`` itself when it lies on ``grid``, else resampled onto it (identity transform)."""
    if volume.grid.same_as(grid):
        return volume
    return volume.resampled(grid, interpolation, default)


def _check_field(field: DisplacementField) -> None:
    if not isinstance(field, DisplacementField):
        raise GraphregError(f"field: expected a DisplacementField, got {type(field).__name__}")


def _check_grid(name: str, volume: Volume, grid: Grid) -> None:
    if not isinstance(volume, Volume):
        raise GraphregError(f"{name}: expected a graphreg Volume, got {type(volume).__name__}")
    if not volume.grid.same_as(grid):
        raise GeometryError(f"{name}: expected an image on the grid [{grid.describe()}], got "
                            f"[{volume.grid.describe()}]; resample it with on_grid first")


def _slices(frame: DisplayFrame, slices: Optional[dict], mask: Optional[Volume]) -> dict[str, int]:
    chosen = default_slices(frame, mask)
    if slices:
        unknown = set(slices) - set(PLANES)
        if unknown:
            raise GraphregError(f"slices: expected keys from {PLANES}, got {sorted(unknown)}")
        chosen.update({plane: int(index) for plane, index in slices.items()})
    return chosen


def _figure(columns: int, rows: int, width: float = 4.0, height: float = 3.6):
    from matplotlib.figure import Figure

    return Figure(figsize=(width * columns, height * rows), layout="constrained", dpi=100)


def save_figure(figure, path, dpi: int = 100) -> Path:
    """Write ``figure`` as a PNG (parent folders created); returns ``Path(path)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, facecolor="white")
    return path


def _mask_contour(axes, frame: DisplayFrame, plane: str, index: int, mask: Optional[Volume],
                  color: str = "#ffcc00") -> None:
    if mask is None:
        return
    cut = frame.take(np.asarray(mask.array) > 0, plane, index).astype(np.float32)
    if cut.any() and not cut.all():
        axes.contour(cut, levels=[0.5], colors=[color], linewidths=0.6, origin="lower",
                     extent=frame.extent(plane))


# ---------------------------------------------------------------------- figures
def plot_images(fixed: Volume, moving: Volume, warped: Optional[Volume] = None,
                mask: Optional[Volume] = None, slices: Optional[dict] = None,
                window: Optional[tuple[float, float]] = None):
    """Fixed, moving (before registration) and warped moving image in three orientations.

    Args:
        fixed: the fixed image.
        moving: the moving image on the fixed grid (use :func:`on_grid`).
        warped: the moving image warped onto the fixed grid, or None.
        mask: fixed lung mask on the same grid; its outline is drawn on every panel.
        slices: ``{plane: display index}`` overrides of :func:`default_slices`.
        window: display range; default :func:`intensity_window` of ``fixed``.

    Returns:
        A figure with one row per image and one column per plane.
    """
    grid = fixed.grid
    _check_grid("moving", moving, grid)
    rows = [("fixed", fixed), ("moving (before)", moving)]
    if warped is not None:
        _check_grid("warped", warped, grid)
        rows.append(("warped moving (after)", warped))
    if mask is not None:
        _check_grid("mask", mask, grid)
    frame = DisplayFrame.from_grid(grid)
    chosen = _slices(frame, slices, mask)
    lo, hi = window or intensity_window(fixed)
    figure = _figure(3, len(rows))
    grid_axes = figure.subplots(len(rows), 3, squeeze=False)
    for r, (name, volume) in enumerate(rows):
        for c, plane in enumerate(PLANES):
            axes = grid_axes[r, c]
            _show(axes, frame, plane, frame.take(volume.array, plane, chosen[plane]),
                  cmap="gray", vmin=lo, vmax=hi)
            _mask_contour(axes, frame, plane, chosen[plane], mask)
            _label(axes, plane, f"{name}: {plane} {chosen[plane]}")
    return figure


def checkerboard(a: np.ndarray, b: np.ndarray, tile_px: int) -> np.ndarray:
    """Tiles of ``a`` and ``b`` alternating like a chessboard (``a`` in the corner tile).

    Shapes:
        a, b: ``(rows, cols)``; returns ``(rows, cols)``; ``tile_px`` >= 1 pixels per tile side.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 2:
        raise ShapeError(f"b: expected a 2D array of shape {a.shape} (as a), got {b.shape}")
    if tile_px < 1:
        raise GraphregError(f"tile_px: expected a positive number of pixels, got {tile_px}")
    rows, cols = np.indices(a.shape)
    use_b = ((rows // tile_px + cols // tile_px) % 2).astype(bool)
    return np.where(use_b, b, a)


def plot_checkerboard(fixed: Volume, moving: Volume, warped: Optional[Volume] = None,
                      slices: Optional[dict] = None, tile_mm: float = 20.0,
                      window: Optional[tuple[float, float]] = None):
    """Checkerboards of fixed with moving (before) and with warped moving (after).

    Edges that jump at tile borders show misalignment. Tiles are ``tile_mm`` wide (square on
    screen for isotropic in-plane spacing).
    """
    grid = fixed.grid
    _check_grid("moving", moving, grid)
    rows = [("fixed | moving (before)", moving)]
    if warped is not None:
        _check_grid("warped", warped, grid)
        rows.append(("fixed | warped (after)", warped))
    frame = DisplayFrame.from_grid(grid)
    chosen = _slices(frame, slices, None)
    lo, hi = window or intensity_window(fixed)
    figure = _figure(3, len(rows))
    grid_axes = figure.subplots(len(rows), 3, squeeze=False)
    for r, (name, other) in enumerate(rows):
        for c, plane in enumerate(PLANES):
            tile = max(1, int(round(tile_mm / frame.spacing(_plane_axes(plane)[1]))))
            board = checkerboard(frame.take(fixed.array, plane, chosen[plane]),
                                 frame.take(other.array, plane, chosen[plane]), tile)
            _show(grid_axes[r, c], frame, plane, board, cmap="gray", vmin=lo, vmax=hi)
            _label(grid_axes[r, c], plane, f"{name}: {plane}")
    return figure


def plot_differences(fixed: Volume, moving: Volume, warped: Volume, slices: Optional[dict] = None,
                     limit: Optional[float] = None):
    """Signed difference ``moving - fixed`` before and ``warped - fixed`` after registration.

    Both rows share one symmetric colour scale (``limit``, default the 99th percentile of the
    absolute difference before registration on the shown slices), so less colour = better.
    """
    grid = fixed.grid
    _check_grid("moving", moving, grid)
    _check_grid("warped", warped, grid)
    frame = DisplayFrame.from_grid(grid)
    chosen = _slices(frame, slices, None)
    fixed_cuts = {p: frame.take(fixed.array, p, chosen[p]).astype(np.float64) for p in PLANES}
    rows = []
    for name, other in (("moving - fixed (before)", moving), ("warped - fixed (after)", warped)):
        rows.append((name, {p: frame.take(other.array, p, chosen[p]) - fixed_cuts[p] for p in PLANES}))
    if limit is None:
        before = np.concatenate([np.abs(d).ravel() for d in rows[0][1].values()])
        limit = float(np.percentile(before, 99)) or 1.0
    figure = _figure(3, 2)
    grid_axes = figure.subplots(2, 3, squeeze=False)
    for r, (name, cuts) in enumerate(rows):
        for c, plane in enumerate(PLANES):
            artist = _show(grid_axes[r, c], frame, plane, cuts[plane], cmap="RdBu_r",
                           vmin=-limit, vmax=limit)
            mad = float(np.abs(cuts[plane]).mean())
            _label(grid_axes[r, c], plane, f"{name}: {plane}, mean |d| {mad:.1f}")
    figure.colorbar(artist, ax=grid_axes[:, -1].tolist(), shrink=0.8, label="intensity difference")
    return figure


def field_slice_mm(field: DisplacementField, frame: DisplayFrame, plane: str, index: int) -> np.ndarray:
    """World-mm displacement on one displayed slice.

    Shapes:
        returns: ``(rows, cols, 3)`` float64, vectors world mm ``(x, y, z)``, oriented as
        :meth:`DisplayFrame.take`. Only the slice is converted, so full-resolution fields are cheap.
    """
    axis, array_index = frame.array_index(plane, index)
    voxels = field.displacement.detach()[0].select(axis + 1, array_index)  # (3, a, b)
    vectors = voxels.movedim(0, -1).to("cpu", torch.float64).numpy()  # (a, b, 3) voxels (z, y, x)
    return frame.orient_cut(plane, field.grid.voxel_vectors_to_mm(vectors))


def jacobian_slice(field: DisplacementField, frame: DisplayFrame, plane: str, index: int) -> np.ndarray:
    """Jacobian determinant of ``x + u(x)`` on one displayed slice, ``(rows, cols)``.

    Computed by :func:`graphreg.ops.metrics.jacobian_determinant` on the slice and its two
    neighbours, which gives the same values as the whole volume (central differences inside,
    one-sided on the border).
    """
    from graphreg.ops.metrics import jacobian_determinant

    axis, array_index = frame.array_index(plane, index)
    n = field.shape[axis]
    lo, hi = max(0, array_index - 1), min(n, array_index + 2)
    slab = field.displacement.detach().narrow(axis + 2, lo, hi - lo).to("cpu", torch.float64)
    with torch.no_grad():
        jac = jacobian_determinant(slab, field.grid.spacing_zyx)[0]
    return frame.orient_cut(plane, jac.select(axis, array_index - lo).numpy())


def plot_displacement(field: DisplacementField, fixed: Optional[Volume] = None,
                      mask: Optional[Volume] = None, slices: Optional[dict] = None,
                      arrow_spacing_mm: float = 10.0, vmax: Optional[float] = None):
    """Displacement magnitude (mm) over the fixed image, with in-plane vectors as arrows.

    Arrows are drawn every ``arrow_spacing_mm`` (inside ``mask`` when given) at true length:
    an arrow spans the in-plane part of the displacement in mm on the plot's mm axes.
    """
    _check_field(field)
    grid = field.grid
    frame = DisplayFrame.from_grid(grid)
    if fixed is not None:
        _check_grid("fixed", fixed, grid)
    if mask is not None:
        _check_grid("mask", mask, grid)
    chosen = _slices(frame, slices, mask)
    cuts = {p: field_slice_mm(field, frame, p, chosen[p]) for p in PLANES}
    if vmax is None:
        vmax = max(float(np.percentile(np.linalg.norm(c, axis=-1), 99.5)) for c in cuts.values()) or 1.0
    window = None if fixed is None else intensity_window(fixed)
    figure = _figure(3, 1, height=4.0)
    panels = figure.subplots(1, 3, squeeze=False)[0]
    for axes, plane in zip(panels, PLANES):
        _, h, v = _plane_axes(plane)
        vectors = cuts[plane]
        magnitude = np.linalg.norm(vectors, axis=-1)
        if fixed is not None:
            lo, hi = window
            _show(axes, frame, plane, frame.take(fixed.array, plane, chosen[plane]), cmap="gray",
                  vmin=lo, vmax=hi)
        artist = _show(axes, frame, plane, magnitude, cmap="viridis", vmin=0.0, vmax=vmax,
                       alpha=0.6 if fixed is not None else 1.0)
        inside = (frame.take(np.asarray(mask.array) > 0, plane, chosen[plane]) if mask is not None
                  else np.ones(magnitude.shape, dtype=bool))
        step_r = max(1, int(round(arrow_spacing_mm / frame.spacing(v))))
        step_c = max(1, int(round(arrow_spacing_mm / frame.spacing(h))))
        rows = np.arange(step_r // 2, magnitude.shape[0], step_r)
        cols = np.arange(step_c // 2, magnitude.shape[1], step_c)
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        keep = inside[rr, cc]
        if keep.any():
            xs, ys = frame.coordinates(h)[cc[keep]], frame.coordinates(v)[rr[keep]]
            axes.quiver(xs, ys, vectors[rr, cc, h][keep], vectors[rr, cc, v][keep], angles="xy",
                        scale_units="xy", scale=1.0, color="white", width=0.004, headwidth=3,
                        headlength=3.5, headaxislength=3)
        _mask_contour(axes, frame, plane, chosen[plane], mask, color="#ff5050")
        _label(axes, plane, f"|u| {plane} {chosen[plane]}: max {magnitude.max():.1f} mm")
    figure.colorbar(artist, ax=panels.tolist(), shrink=0.8, label="|u| (mm), arrows: in-plane u")
    return figure


def plot_jacobian(field: DisplacementField, mask: Optional[Volume] = None,
                  slices: Optional[dict] = None, limits: tuple[float, float] = (0.0, 2.0)):
    """Jacobian determinant ``J`` of ``x + u(x)`` with folding (``J <= 0``) marked in green.

    Colours: blue = compression (``J < 1``), white = volume kept, red = expansion; values are
    clipped to ``limits`` for display. Each panel's title gives the slice's minimum ``J`` and
    its number of folded voxels.
    """
    from matplotlib.colors import ListedColormap, TwoSlopeNorm

    _check_field(field)
    frame = DisplayFrame.from_grid(field.grid)
    if mask is not None:
        _check_grid("mask", mask, field.grid)
    chosen = _slices(frame, slices, mask)
    lo, hi = limits
    if not lo < 1.0 < hi:
        raise GraphregError(f"limits: expected (low, high) with low < 1 < high, got {limits}")
    norm = TwoSlopeNorm(vcenter=1.0, vmin=lo, vmax=hi)
    folding = ListedColormap(["#00dd00"])
    figure = _figure(3, 1, height=4.0)
    panels = figure.subplots(1, 3, squeeze=False)[0]
    for axes, plane in zip(panels, PLANES):
        jac = jacobian_slice(field, frame, plane, chosen[plane])
        artist = _show(axes, frame, plane, np.clip(jac, lo, hi), cmap="RdBu_r", norm=norm)
        folded = jac <= 0
        if folded.any():
            _show(axes, frame, plane, np.ma.masked_where(~folded, folded.astype(float)), cmap=folding,
                  vmin=0.0, vmax=1.0)
        _mask_contour(axes, frame, plane, chosen[plane], mask, color="black")
        _label(axes, plane, f"J {plane} {chosen[plane]}: min {jac.min():.2f}, {int(folded.sum())} folded")
    figure.colorbar(artist, ax=panels.tolist(), shrink=0.8, label="Jacobian determinant (green: J <= 0)")
    return figure


def plot_uncertainty(error_map: Volume, fixed: Optional[Volume] = None, mask: Optional[Volume] = None,
                     slices: Optional[dict] = None, vmax: Optional[float] = None):
    """The dense uncertainty map (predicted graph-stage error, mm) over the fixed image.

    Shown inside ``mask`` when given (the calibration holds for lung keypoints), on ``0 ..
    vmax`` (default: the 99th percentile of the map there). Each panel's title gives the slice's
    mean inside the mask; the colour bar says what the map predicts.

    Shapes:
        error_map, fixed, mask: Volumes on one grid.
    """
    _check_grid("error_map", error_map, error_map.grid)
    frame = DisplayFrame.from_grid(error_map.grid)
    for name, volume in (("fixed", fixed), ("mask", mask)):
        if volume is not None:
            _check_grid(name, volume, error_map.grid)
    values = np.asarray(error_map.array, dtype=np.float64)
    inside = np.asarray(mask.array) > 0 if mask is not None else np.ones(values.shape, dtype=bool)
    if not inside.any():
        inside = np.ones(values.shape, dtype=bool)
    if vmax is None:
        vmax = float(np.percentile(values[inside], 99))
    vmax = max(vmax, 1e-6)
    chosen = _slices(frame, slices, mask)
    window = None if fixed is None else intensity_window(fixed)
    figure = _figure(3, 1, height=4.0)
    panels = figure.subplots(1, 3, squeeze=False)[0]
    for axes, plane in zip(panels, PLANES):
        index = chosen[plane]
        if fixed is not None:
            lo, hi = window
            _show(axes, frame, plane, frame.take(fixed.array, plane, index), cmap="gray", vmin=lo, vmax=hi)
        cut, region = frame.take(values, plane, index), frame.take(inside, plane, index)
        artist = _show(axes, frame, plane, np.ma.masked_where(~region, cut), cmap="magma", vmin=0.0, vmax=vmax)
        _mask_contour(axes, frame, plane, index, mask, color="#40c0ff")
        mean = float(cut[region].mean()) if region.any() else float("nan")
        _label(axes, plane, f"{plane} {index}: mean {mean:.2f} mm")
    figure.colorbar(artist, ax=panels.tolist(), shrink=0.8,
                    label="predicted graph-stage error (mm)\n(not the final field's error)")
    return figure


def plot_ventilation(fixed: Volume, maps: dict, mask: Volume, slices: Optional[dict] = None,
                     limit: Optional[float] = None):
    """Ventilation maps over the CT: one row per map (title: its name), coronal and axial columns.

    Colours: red = expansion from exhale to inhale, blue = contraction, shown inside ``mask`` only,
    symmetric around 0 up to ``limit`` (default: the 98th percentile of ``|value|`` in the lungs
    over all maps). Each panel's title gives the map's mean over the lungs of that slice.

    Shapes:
        fixed, mask and every map: Volumes on one grid.
    """
    from matplotlib.colors import Normalize

    if not maps:
        raise GraphregError("maps: expected at least one map, got none")
    for name, volume in [("mask", mask), *maps.items()]:
        _check_grid(name, volume, fixed.grid)
    frame = DisplayFrame.from_grid(fixed.grid)
    inside = np.asarray(mask.array) > 0
    chosen = _slices(frame, slices, mask)
    if limit is None:
        values = np.concatenate([np.abs(np.asarray(v.array)[inside]) for v in maps.values()])
        limit = float(np.percentile(values, 98)) if values.size else 1.0
    limit = max(limit, 1e-6)
    window = intensity_window(fixed)
    planes = ("coronal", "axial")
    figure = _figure(len(planes), len(maps), width=4.6, height=4.0)
    panels = figure.subplots(len(maps), len(planes), squeeze=False)
    artist = None
    for row, (name, volume) in zip(panels, maps.items()):
        for axes, plane in zip(row, planes):
            index = chosen[plane]
            _show(axes, frame, plane, frame.take(np.asarray(fixed.array), plane, index), cmap="gray",
                  vmin=window[0], vmax=window[1])
            lung = frame.take(inside, plane, index)
            cut = frame.take(np.asarray(volume.array), plane, index)
            artist = _show(axes, frame, plane, np.ma.masked_where(~lung, cut), cmap="RdBu_r",
                           norm=Normalize(-limit, limit))
            mean = float(cut[lung].mean()) if lung.any() else float("nan")
            _label(axes, plane, f"{name}, {plane} {index}: mean {mean:.3f}")
    figure.colorbar(artist, ax=panels.ravel().tolist(), shrink=0.8,
                    label="(V_in - V_ex) / V_ex  (red: expands from exhale to inhale)")
    return figure


def plot_landmark_errors(before_mm, after_mm=None, bins: int = 30):
    """Histogram and box plot of per-landmark errors (TRE, mm) before and after registration.

    Shapes:
        before_mm, after_mm: ``(N,)`` mm (after may be None).
    """
    series = [("before", np.asarray(before_mm, dtype=np.float64).ravel(), "#888888")]
    if after_mm is not None:
        series.append(("after", np.asarray(after_mm, dtype=np.float64).ravel(), "#1f77b4"))
    for name, values, _ in series:
        if values.size == 0 or not np.isfinite(values).all():
            raise GraphregError(f"{name}_mm: expected a non-empty array of finite errors, got "
                                f"{values.size} values")
    top = max(float(values.max()) for _, values, _ in series) or 1.0
    edges = np.linspace(0.0, top * 1.02, bins + 1)
    figure = _figure(2, 1, width=4.6, height=3.6)
    hist, box = figure.subplots(1, 2, squeeze=True)
    for name, values, color in series:
        hist.hist(values, bins=edges, alpha=0.6, color=color,
                  label=f"{name}: mean {values.mean():.2f} mm, p75 {np.percentile(values, 75):.2f} mm")
    hist.set_xlabel("landmark error (mm)")
    hist.set_ylabel("landmarks")
    hist.legend(fontsize=8)
    hist.set_title(f"TRE histogram ({series[0][1].size} landmarks)", fontsize=10)
    parts = box.boxplot([values for _, values, _ in series], showmeans=True, patch_artist=True)
    box.set_xticks(range(1, len(series) + 1), [name for name, _, _ in series])
    for patch, (_, _, color) in zip(parts["boxes"], series):
        patch.set_facecolor(color)
        patch.set_alpha(0.6)
    box.set_ylabel("landmark error (mm)")
    box.set_title("TRE box plot (triangle: mean)", fontsize=10)
    return figure
