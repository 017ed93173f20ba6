"""3D scenes of a registration with Open3D: keypoints, landmarks, uncertainty, lung surface.

A :class:`Scene` is a list of named Open3D geometries (point clouds, line sets, triangle meshes)
plus an optional colour bar. The builders below make the scenes a lung-registration researcher
looks at; :func:`render_scene` draws one to a PNG off screen, :func:`export_ply` writes every
geometry as ``.ply`` and :func:`show_scene` opens an interactive window when a display exists.

Convention:
    Every point and vector is world mm ``(x, y, z)`` in ITK's LPS frame: ``+x`` patient left,
    ``+y`` posterior, ``+z`` superior (head). Named views look at the scene from that side of
    the patient with the head up (``"anterior"``: from the front, patient right on the left of
    the picture, as in a radiological display).

Rendering:
    ``backend="open3d"`` uses :class:`open3d.visualization.rendering.OffscreenRenderer`
    (Filament; headless through Vulkan/llvmpipe or EGL) in a child process with a time limit:
    a software renderer can crash the process or, on a busy CPU, take minutes for a mesh, and
    neither may take the caller down. ``backend="matplotlib"`` draws the same scene as a 3D
    scatter/line/mesh plot (no GPU or Vulkan needed, flat-shaded). ``"auto"`` (default) tries
    Open3D and falls back to matplotlib with a warning when it fails or runs out of time (and
    then uses matplotlib for the rest of the process); the environment variable
    ``GRAPHREG_RENDER_BACKEND`` overrides ``"auto"``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from graphreg.errors import GraphregError, ShapeError, check_finite
from graphreg.core.volume import Volume

#: camera position relative to the scene centre (unit vector, world LPS) and the up vector
VIEWS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "anterior": ((0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
    "posterior": ((0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    "left": ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "right": ((-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "superior": ((0.0, 0.0, 1.0), (0.0, -1.0, 0.0)),
    "inferior": ((0.0, 0.0, -1.0), (0.0, -1.0, 0.0)),
}
#: geometry kinds a scene item can be
KINDS = ("points", "lines", "mesh")
BACKENDS = ("auto", "open3d", "matplotlib")
#: why this process has no Open3D off-screen renderer (detected once); non-empty: ``"auto"`` draws
#: every scene with matplotlib
_NO_GL: list[str] = []
_FIXED_RGB = (0.12, 0.38, 0.85)
_MOVING_RGB = (0.10, 0.10, 0.10)
_BEFORE_RGB = (0.55, 0.55, 0.55)
_SURFACE_RGB = (0.55, 0.70, 0.85)


def _o3d():
    import open3d

    return open3d


# ---------------------------------------------------------------------- scene container
@dataclass(frozen=True)
class ColorBar:
    """What a scene's colours mean: ``label`` (with unit), colormap name, value range."""

    label: str
    cmap: str
    vmin: float
    vmax: float


@dataclass
class SceneItem:
    """One geometry of a :class:`Scene`.

    Attributes:
        name: file-name-safe name (used for ``.ply`` files and Open3D scene keys).
        geometry: ``open3d.geometry.PointCloud`` (kind ``"points"``), ``LineSet`` (``"lines"``)
            or ``TriangleMesh`` (``"mesh"``).
        kind: one of :data:`KINDS`.
        opacity: 1 for opaque; below 1 draws a mesh translucent.
    """

    name: str
    geometry: object
    kind: str
    opacity: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise GraphregError(f"kind: expected one of {KINDS}, got {self.kind!r}")
        if not 0.0 < self.opacity <= 1.0:
            raise GraphregError(f"opacity: expected a value in (0, 1], got {self.opacity}")


@dataclass
class Scene:
    """Named geometries in world mm, drawn together; ``colorbar`` explains the colours."""

    items: list[SceneItem] = dataclass_field(default_factory=list)
    title: str = ""
    colorbar: Optional[ColorBar] = None

    def add(self, name: str, geometry, kind: str, opacity: float = 1.0) -> "Scene":
        """Append a geometry; returns the scene."""
        if any(item.name == name for item in self.items):
            raise GraphregError(f"name: a geometry called {name!r} is already in the scene")
        self.items.append(SceneItem(name, geometry, kind, opacity))
        return self

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(min_xyz, max_xyz)`` mm over every geometry."""
        points = [np.asarray(_vertices(item)) for item in self.items]
        points = [p for p in points if len(p)]
        if not points:
            raise GraphregError("scene: nothing to draw (every geometry is empty)")
        stacked = np.concatenate(points)
        return stacked.min(axis=0), stacked.max(axis=0)


def _vertices(item: SceneItem):
    geometry = item.geometry
    return geometry.vertices if item.kind == "mesh" else geometry.points


# ---------------------------------------------------------------------- helpers
def _points(name: str, value) -> np.ndarray:
    array = np.array(value, dtype=np.float64)  # a writeable copy (Open3D refuses read-only arrays)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ShapeError(f"{name}: expected shape (N, 3), got {array.shape}")
    check_finite(name, array)
    return array


def _values(name: str, value, count: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64).ravel()
    if array.shape != (count,):
        raise ShapeError(f"{name}: expected shape ({count},), got {np.asarray(value).shape}")
    check_finite(name, array)
    return array


def colorize(values, cmap: str, vmin: Optional[float] = None, vmax: Optional[float] = None
             ) -> tuple[np.ndarray, float, float]:
    """Map scalars to RGB with a matplotlib colormap.

    Shapes:
        values: ``(N,)``; returns ``(N, 3)`` float64 RGB in ``[0, 1]`` and the ``(vmin, vmax)``
        used (default: 0 and the 99th percentile of ``values``, so one outlier does not wash
        out the scale).
    """
    import matplotlib

    values = np.asarray(values, dtype=np.float64).ravel()
    lo = 0.0 if vmin is None else float(vmin)
    hi = (float(np.percentile(values, 99)) if values.size else 1.0) if vmax is None else float(vmax)
    if not hi > lo:
        hi = lo + 1.0
    colors = matplotlib.colormaps[cmap]((values - lo) / (hi - lo))[:, :3]
    return colors, lo, hi


def point_cloud(points_mm, colors=None, uniform=(0.2, 0.2, 0.2)):
    """An ``open3d.geometry.PointCloud`` of ``(N, 3)`` mm points, coloured per point or uniformly."""
    o3d = _o3d()
    points = _points("points_mm", points_mm)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    if colors is None:
        colors = np.tile(np.asarray(uniform, dtype=np.float64), (len(points), 1))
    cloud.colors = o3d.utility.Vector3dVector(np.asarray(colors, dtype=np.float64).reshape(-1, 3))
    return cloud


def vector_lines(starts_mm, ends_mm, colors=None, uniform=(0.3, 0.3, 0.3)):
    """An ``open3d.geometry.LineSet`` of segments ``starts[i] -> ends[i]`` (mm), one colour each.

    Shapes:
        starts_mm, ends_mm: ``(N, 3)``; colors: ``(N, 3)`` RGB in ``[0, 1]`` or None.
        The line set has ``2 N`` points (starts then ends) and ``N`` lines.
    """
    o3d = _o3d()
    starts = _points("starts_mm", starts_mm)
    ends = _points("ends_mm", ends_mm)
    if ends.shape != starts.shape:
        raise ShapeError(f"ends_mm: expected shape {starts.shape} (as starts_mm), got {ends.shape}")
    count = len(starts)
    lines = np.stack([np.arange(count), np.arange(count) + count], axis=1)
    line_set = o3d.geometry.LineSet(o3d.utility.Vector3dVector(np.concatenate([starts, ends])),
                                    o3d.utility.Vector2iVector(lines.astype(np.int32)))
    if colors is None:
        colors = np.tile(np.asarray(uniform, dtype=np.float64), (count, 1))
    line_set.colors = o3d.utility.Vector3dVector(np.asarray(colors, dtype=np.float64).reshape(-1, 3))
    return line_set


def lung_surface(mask: Volume, step_mm: float = 3.0, smooth_iterations: int = 10,
                 color=_SURFACE_RGB, max_triangles: Optional[int] = 20000):
    """Triangle mesh of the boundary of ``mask > 0`` (marching cubes), vertices in world mm.

    Args:
        mask: a lung mask (any label values; every positive voxel is lung).
        step_mm: marching-cubes step: about this many mm between vertices (at least one voxel).
        smooth_iterations: Taubin smoothing passes (0 for the raw staircase surface).
        color: RGB of the surface.
        max_triangles: at most this many triangles (quadric decimation of the smoothed surface;
            None keeps every triangle). 20000 draw a lung at 3 mm detail (docs/figures.md).

    Convention:
        The mask is padded by one empty voxel so that lungs touching the image border give a
        closed surface. Vertices go from voxel ``(z, y, x)`` to world mm through
        ``mask.grid.voxel_to_world``; triangles are wound so that the enclosed volume is
        positive, i.e. normals point out of the lung.

    Raises:
        GraphregError: the mask is empty.
    """
    from skimage.measure import marching_cubes

    o3d = _o3d()
    inside = np.asarray(mask.array) > 0
    if not inside.any():
        raise GraphregError("mask: expected a lung mask with positive voxels, got an empty mask")
    step = max(1, int(round(step_mm / max(mask.grid.spacing))))
    padded = np.pad(inside, 1).astype(np.float32)
    verts, faces, _, _ = marching_cubes(padded, level=0.5, step_size=step, allow_degenerate=False)
    world = mask.grid.voxel_to_world(verts - 1.0)
    corners = world[faces]
    signed_volume = np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum()
    if signed_volume < 0:  # wind the triangles so that normals point out of the lung
        faces = faces[:, ::-1]
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(world),
                                     o3d.utility.Vector3iVector(np.ascontiguousarray(faces, dtype=np.int32)))
    if smooth_iterations > 0:
        mesh = mesh.filter_smooth_taubin(number_of_iterations=int(smooth_iterations))
    if max_triangles is not None and len(mesh.triangles) > max_triangles:
        mesh = mesh.simplify_quadric_decimation(int(max_triangles))
    mesh.compute_vertex_normals()
    mesh.paint_uniform_color(list(color))
    return mesh


# ---------------------------------------------------------------------- scene builders
def keypoint_scene(points_mm, displacement_mm, surface=None, vmax: Optional[float] = None,
                   cmap: str = "viridis") -> Scene:
    """Fixed keypoints coloured by displacement magnitude, with their displacement vectors.

    Shapes:
        points_mm: ``(N, 3)`` fixed keypoints, world mm; displacement_mm: ``(N, 3)`` mm
        (fixed -> moving). The vector of keypoint ``p`` goes from ``p`` to ``p + u``, drawn in
        the keypoint's colour.
    """
    points = _points("points_mm", points_mm)
    disp = _points("displacement_mm", displacement_mm)
    if disp.shape != points.shape:
        raise ShapeError(f"displacement_mm: expected shape {points.shape} (as points_mm), got {disp.shape}")
    colors, lo, hi = colorize(np.linalg.norm(disp, axis=1), cmap, 0.0, vmax)
    scene = Scene(title=f"{len(points)} keypoints, displacement fixed -> moving",
                  colorbar=ColorBar("|u| (mm)", cmap, lo, hi))
    if surface is not None:
        scene.add("lung_surface", surface, "mesh", opacity=0.25)
    scene.add("keypoints", point_cloud(points, colors), "points")
    scene.add("displacements", vector_lines(points, points + disp, colors), "lines")
    return scene


def landmark_scene(fixed_mm, moving_mm, moved_mm=None, surface=None, vmax: Optional[float] = None,
                   cmap: str = "RdYlGn_r", show_before: bool = True) -> Scene:
    """Landmark pairs before and after registration, error vectors coloured by TRE.

    Shapes:
        fixed_mm, moving_mm: ``(N, 3)`` paired landmarks (row ``i`` with row ``i``), world mm;
        moved_mm: ``(N, 3)`` the fixed landmarks mapped by the registration (``p + u(p)``), or
        None (then only the situation before registration is drawn).

    Drawn:
        fixed landmarks (blue), moving landmarks (black), mapped landmarks and the residual
        errors mapped -> moving coloured by the error's length (the TRE, colour bar in mm); the
        initial offsets fixed -> moving (grey, ``show_before``).
    """
    fixed = _points("fixed_mm", fixed_mm)
    moving = _points("moving_mm", moving_mm)
    if moving.shape != fixed.shape:
        raise ShapeError(f"moving_mm: expected shape {fixed.shape} (as fixed_mm), got {moving.shape}")
    scene = Scene()
    if surface is not None:
        scene.add("lung_surface", surface, "mesh", opacity=0.25)
    scene.add("landmarks_fixed", point_cloud(fixed, uniform=_FIXED_RGB), "points")
    scene.add("landmarks_moving", point_cloud(moving, uniform=_MOVING_RGB), "points")
    before = np.linalg.norm(moving - fixed, axis=1)
    if moved_mm is None:
        colors, lo, hi = colorize(before, cmap, 0.0, vmax)
        scene.add("error_before", vector_lines(fixed, moving, colors), "lines")
        scene.title = f"{len(fixed)} landmarks before registration: mean distance {before.mean():.2f} mm"
        scene.colorbar = ColorBar("distance before (mm)", cmap, lo, hi)
        return scene
    moved = _points("moved_mm", moved_mm)
    if moved.shape != fixed.shape:
        raise ShapeError(f"moved_mm: expected shape {fixed.shape} (as fixed_mm), got {moved.shape}")
    after = np.linalg.norm(moving - moved, axis=1)
    if show_before:
        scene.add("error_before", vector_lines(fixed, moving, uniform=_BEFORE_RGB), "lines")
    if vmax is None:  # at least 1 mm, so that a near-perfect result does not look alarming
        vmax = max(float(np.percentile(after, 99)), 1.0)
    colors, lo, hi = colorize(after, cmap, 0.0, vmax)
    # residuals are often shorter than a point is wide: the mapped points carry the TRE colour too
    scene.add("landmarks_moved", point_cloud(moved, colors), "points")
    scene.add("error_after", vector_lines(moved, moving, colors), "lines")
    scene.title = (f"{len(fixed)} landmarks: TRE {before.mean():.2f} -> {after.mean():.2f} mm "
                   f"(blue fixed, black moving, mapped coloured by TRE)")
    scene.colorbar = ColorBar("TRE after (mm)", cmap, lo, hi)
    return scene


def uncertainty_scene(points_mm, uncertainty_mm, surface=None, vmin: Optional[float] = None,
                      vmax: Optional[float] = None, cmap: str = "magma_r") -> Scene:
    """Keypoints coloured by their displacement uncertainty.

    Shapes:
        points_mm: ``(N, 3)`` world mm; uncertainty_mm: ``(N,)`` spread of each keypoint's
        displacement distribution (mm). Colours span ``vmin`` (default the 1st percentile) to
        ``vmax`` (default the 99th percentile). Points, not sphere glyphs: Open3D's off-screen
        renderer hung on glyph meshes here (docs/figures.md).
    """
    points = _points("points_mm", points_mm)
    spread = _values("uncertainty_mm", uncertainty_mm, len(points))
    if vmin is None:  # spreads rarely start near 0: use the colours for the range that occurs
        vmin = float(np.percentile(spread, 1)) if spread.size else 0.0
    colors, lo, hi = colorize(spread, cmap, vmin, vmax)
    scene = Scene(title=f"{len(points)} keypoints, displacement uncertainty (colour)",
                  colorbar=ColorBar("uncertainty (mm)", cmap, lo, hi))
    if surface is not None:
        scene.add("lung_surface", surface, "mesh", opacity=0.25)
    scene.add("uncertainty", point_cloud(points, colors), "points")
    return scene


# ---------------------------------------------------------------------- export / window
def export_ply(scene: Scene, out_dir, prefix: str = "") -> list[Path]:
    """Write every geometry of ``scene`` as ``out_dir/<prefix><name>.ply``; returns the paths.

    Point clouds keep their colours; line sets are written by ``write_line_set`` (PLY with
    ``edge`` elements); meshes keep vertex colours and normals.
    """
    o3d = _o3d()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for item in scene.items:
        path = out / f"{prefix}{item.name}.ply"
        if item.kind == "points":
            ok = o3d.io.write_point_cloud(str(path), item.geometry)
        elif item.kind == "lines":
            ok = o3d.io.write_line_set(str(path), item.geometry)
        else:
            ok = o3d.io.write_triangle_mesh(str(path), item.geometry)
        if not ok:
            raise GraphregError(f"{path}: Open3D could not write the {item.kind} geometry {item.name!r}")
        written.append(path)
    return written


def display_available() -> bool:
    """True when a window can be opened (a desktop OS, or ``DISPLAY`` / ``WAYLAND_DISPLAY`` set)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def show_scene(scene: Scene, width: int = 1280, height: int = 960) -> None:
    """Open an interactive Open3D window (``draw_geometries``) with the scene's geometries.

    Raises:
        GraphregError: no display is available (use :func:`render_scene` instead).
    """
    if not display_available():
        raise GraphregError("show_scene: no display available (DISPLAY is not set); render the "
                            "scene to a PNG with render_scene or open the .ply files elsewhere")
    _o3d().visualization.draw_geometries([item.geometry for item in scene.items],
                                         window_name=scene.title or "graphreg", width=width,
                                         height=height)


# ---------------------------------------------------------------------- rendering
def _check_size(size) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise GraphregError(f"size: expected (width, height) in pixels, got {size!r}") from None
    if width < 16 or height < 16:
        raise GraphregError(f"size: expected at least 16 x 16 pixels, got {width} x {height}")
    return width, height


def _view_vectors(view) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(view, str):
        if view not in VIEWS:
            raise GraphregError(f"view: expected one of {sorted(VIEWS)}, got {view!r}")
        eye, up = VIEWS[view]
        return np.asarray(eye, dtype=np.float64), np.asarray(up, dtype=np.float64)
    eye = np.asarray(view, dtype=np.float64).ravel()
    if eye.shape != (3,) or not np.linalg.norm(eye) > 0:
        raise GraphregError(f"view: expected a view name or a non-zero 3-vector, got {view!r}")
    eye = eye / np.linalg.norm(eye)
    up = np.array([0.0, 0.0, 1.0]) if abs(eye[2]) < 0.95 else np.array([0.0, -1.0, 0.0])
    return eye, up


def _backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise GraphregError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        forced = os.environ.get("GRAPHREG_RENDER_BACKEND", "auto")
        if forced not in BACKENDS:
            raise GraphregError(f"GRAPHREG_RENDER_BACKEND: expected one of {BACKENDS}, got {forced!r}")
        return forced
    return backend


def render_scene(scene: Scene, path, size: Sequence[int] = (1024, 768), view="anterior",
                 point_size: float = 5.0, line_width: float = 2.0, fov_deg: float = 30.0,
                 background=(1.0, 1.0, 1.0), annotate: bool = True, backend: str = "auto",
                 timeout_s: float = 60.0) -> Path:
    """Render ``scene`` to a PNG of exactly ``size`` pixels, off screen (one view of
    :func:`render_views`, with the same arguments).

    Args:
        view: a name from :data:`VIEWS` or a 3-vector: direction from the scene centre to the
            camera (world LPS). The camera distance fits the scene's bounding box.

    Returns:
        ``Path(path)``.
    """
    return render_views(scene, {view if isinstance(view, str) else tuple(np.ravel(view)): path}, size=size,
                        point_size=point_size, line_width=line_width, fov_deg=fov_deg, background=background,
                        annotate=annotate, backend=backend, timeout_s=timeout_s)[0]


def render_views(scene: Scene, paths: dict, size: Sequence[int] = (1024, 768), point_size: float = 5.0,
                 line_width: float = 2.0, fov_deg: float = 30.0, background=(1.0, 1.0, 1.0),
                 annotate: bool = True, backend: str = "auto", timeout_s: float = 60.0) -> list[Path]:
    """Render ``scene`` from several views, one PNG of exactly ``size`` pixels each, off screen.

    Args:
        scene: what to draw.
        paths: ``{view: output PNG}``; a view is a name from :data:`VIEWS` or a 3-vector (tuple).
        size: ``(width, height)`` in pixels.
        point_size, line_width: in pixels.
        fov_deg: vertical field of view of the perspective camera.
        background: RGB in ``[0, 1]``.
        annotate: draw the title and colour bar onto the pictures.
        backend: ``"auto"``, ``"open3d"`` or ``"matplotlib"`` (see the module docstring).
        timeout_s: time limit of the Open3D child process (all views of the scene together).

    Returns:
        The PNG paths, in the order of ``paths``.

    Raises:
        GraphregError: a bad size, view or backend; ``backend="open3d"`` and Open3D failed.
    """
    width, height = _check_size(size)
    cameras = [_view_vectors(view) for view in paths]
    lo, hi = scene.bounds()
    outputs = [Path(path) for path in paths.values()]
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
    chosen = _backend(backend)
    images = [None] * len(outputs)
    if chosen == "open3d" or (chosen == "auto" and not _NO_GL):
        try:
            images = _render_open3d(scene, (width, height), cameras, lo, hi, point_size, line_width,
                                    fov_deg, background, timeout_s)
        except _NoGL as error:
            if chosen == "open3d":
                raise GraphregError(f"backend: Open3D off-screen rendering is not available ({error})") from error
            _NO_GL.append(str(error))
            warnings.warn(f"3D scenes are drawn with matplotlib: Open3D off-screen rendering is not "
                          f"available here ({error})", RuntimeWarning, stacklevel=2)
        except GraphregError as error:
            if chosen == "open3d":
                raise GraphregError(f"backend: Open3D off-screen rendering failed ({error})") from error
            warnings.warn(f"scene {scene.title or 'without title'!r} drawn with matplotlib: Open3D "
                          f"rendering failed ({error})", RuntimeWarning, stacklevel=2)
    for image, (eye, up), path in zip(images, cameras, outputs):
        figure = _figure(width, height)
        if image is not None:
            axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
            axes.imshow(image, interpolation="nearest")
            axes.set_axis_off()
        else:
            _draw_matplotlib(figure, scene, eye, up, lo, hi, point_size, line_width, background)
        if annotate:
            _annotate(figure, scene)
        figure.savefig(path, dpi=100)
    return outputs


def _figure(width: int, height: int):
    from matplotlib.figure import Figure

    return Figure(figsize=(width / 100.0, height / 100.0), dpi=100)


def _camera(eye, up, lo, hi, fov_deg: float, aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """Scene centre and camera position: the closest distance along ``eye`` at which all eight
    corners of the bounding box fit into the perspective frustum (with a 5% margin)."""
    centre = (lo + hi) / 2.0
    forward = -eye / np.linalg.norm(eye)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    true_up = np.cross(right, forward)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    corners = corners - centre
    tan_v = np.tan(np.radians(fov_deg) / 2.0) * 0.95
    tan_h = tan_v * aspect
    toward = corners @ -forward  # how far each corner sticks out towards the camera
    distance = max(float(np.max(toward + np.abs(corners @ right) / tan_h)),
                   float(np.max(toward + np.abs(corners @ true_up) / tan_v)), 1.0)
    return centre, centre - forward * distance


class _NoGL(GraphregError):
    """The Open3D child could not create an off-screen renderer (no EGL / Vulkan / GL here)."""


#: what the render child prints once its off-screen renderer exists
_READY = "graphreg-render: renderer ready"


def _render_open3d(scene: Scene, size, cameras, lo, hi, point_size, line_width, fov_deg, background,
                   timeout_s: float) -> list[np.ndarray]:
    """Render every view of ``scene``; returns one ``(H, W, 3)`` uint8 image per camera ``(eye, up)``.

    The opaque geometries are drawn together, each translucent mesh alone on black; the layers are
    blended here (``opacity``). Each layer is one child process (``python -m
    graphreg.apps.viz.pointclouds SPEC``) drawing all views: Open3D 0.20's renderer on llvmpipe hung
    when one process drew two meshes (docs/figures.md). Geometries travel as ``.ply`` files,
    materials and cameras as a JSON spec.

    Raises:
        _NoGL: a child ended before its renderer existed (no GL here: the caller says so once).
        GraphregError: a child failed, crashed or ran past ``timeout_s`` (all layers together).
    """
    import time

    width, height = size
    deadline = time.perf_counter() + timeout_s
    with tempfile.TemporaryDirectory(prefix="graphreg_render_") as tmp:
        folder = Path(tmp)
        files = dict(zip((item.name for item in scene.items), export_ply(scene, folder)))
        views = [dict(zip(("centre", "camera"), (v.tolist() for v in _camera(eye, up, lo, hi, fov_deg, width / height))),
                      up=np.asarray(up, dtype=float).tolist()) for eye, up in cameras]
        opaque = [item for item in scene.items if item.opacity >= 1.0]
        layers = [(opaque, tuple(background), 1.0)] + [([item], (0.0, 0.0, 0.0), item.opacity)
                                                        for item in scene.items if item.opacity < 1.0]
        images = None
        for index, (items, colour, alpha) in enumerate(layers):
            outputs = [folder / f"layer{index}_view{k}.npy" for k in range(len(views))]
            spec = {"size": [width, height], "fov_deg": fov_deg, "point_size": point_size,
                    "line_width": line_width, "background": list(colour),
                    "views": [{**view, "output": str(out)} for view, out in zip(views, outputs)],
                    "items": [{"name": item.name, "kind": item.kind, "file": str(files[item.name])} for item in items]}
            spec_path = folder / f"layer{index}.json"
            spec_path.write_text(json.dumps(spec), encoding="utf-8")
            layer = [np.load(out).astype(np.float32) / 255.0
                     for out in _run_worker(spec_path, outputs, max(deadline - time.perf_counter(), 1.0), timeout_s)]
            if images is None:
                images = layer
                continue
            for k, over in enumerate(layer):  # drawn on black: a lit pixel is covered by the mesh
                covered = over.max(axis=2, keepdims=True) > 0.02
                images[k] = np.where(covered, alpha * over + (1.0 - alpha) * images[k], images[k])
        return [np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8) for image in images]


def _run_worker(spec_path: Path, outputs: list, seconds: float, timeout_s: float) -> list:
    """Run one render child within ``seconds``; returns ``outputs`` once they all exist."""
    command = [sys.executable, "-m", "graphreg.apps.viz.pointclouds", str(spec_path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds)
        stdout, stderr, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as expired:
        stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        if _READY not in stdout:
            raise _NoGL(f"no off-screen renderer within {timeout_s:g} s") from None
        raise GraphregError(f"timeout_s: Open3D rendering took longer than {timeout_s:g} s") from None
    if code == 0 and all(Path(out).is_file() for out in outputs):
        return outputs
    tail = " | ".join((stderr or stdout).strip().splitlines()[-3:]) or "no output"
    if _READY not in stdout:
        raise _NoGL(f"the renderer could not start, exit code {code}: {tail}")
    raise GraphregError(f"Open3D rendering process exited with code {code}: {tail}")


def _headlight(colors: np.ndarray, normals: np.ndarray, light) -> np.ndarray:
    """Per-vertex colours ``(N, 3)`` of a mesh lit from direction ``light`` (unit 3-vector):
    ambient 0.35 + diffuse 0.65 (two-sided); ``normals`` ``(N, 3)`` unit vectors."""
    if len(normals) != len(colors):
        return colors
    return colors * (0.35 + 0.65 * np.abs(normals @ light))[:, None]


def _render_worker(spec_path: str) -> None:
    """Child-process side of :func:`_render_open3d`: read the spec and geometries, render each view
    on the spec's background, save.

    Every geometry is drawn with Open3D's unlit shaders (compiling the lit ones on a software
    renderer costs minutes of CPU, docs/figures.md); meshes get a shading baked into their vertex
    colours, lit from the mean of the view directions.
    """
    o3d = _o3d()
    rendering = o3d.visualization.rendering
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    width, height = spec["size"]
    renderer = rendering.OffscreenRenderer(width, height)
    print(_READY, flush=True)
    renderer.scene.view.set_post_processing(False)  # exact colours, no tone mapping
    renderer.scene.set_background([*spec["background"], 1.0])
    readers = {"points": o3d.io.read_point_cloud, "lines": o3d.io.read_line_set,
               "mesh": o3d.io.read_triangle_mesh}
    eyes = [np.asarray(v["camera"]) - np.asarray(v["centre"]) for v in spec["views"]]
    light = np.sum([eye / np.linalg.norm(eye) for eye in eyes], axis=0)
    light = light / np.linalg.norm(light) if np.linalg.norm(light) > 1e-6 else eyes[0] / np.linalg.norm(eyes[0])
    for item in spec["items"]:
        geometry = readers[item["kind"]](item["file"])
        material = rendering.MaterialRecord()
        if item["kind"] == "lines":
            material.shader = "unlitLine"
            material.line_width = float(spec["line_width"])
        else:
            material.shader = "defaultUnlit"
            material.point_size = float(spec["point_size"])
        if item["kind"] == "mesh":
            geometry.vertex_colors = o3d.utility.Vector3dVector(
                _headlight(np.asarray(geometry.vertex_colors), np.asarray(geometry.vertex_normals), light))
        renderer.scene.add_geometry(item["name"], geometry, material)
    for view in spec["views"]:
        renderer.setup_camera(float(spec["fov_deg"]), view["centre"], view["camera"], view["up"])
        np.save(view["output"], np.asarray(renderer.render_to_image()))


def _draw_matplotlib(figure, scene: Scene, eye, up, lo, hi, point_size, line_width, background):
    from mpl_toolkits.mplot3d.art3d import Line3DCollection, Poly3DCollection

    figure.set_facecolor(background)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0), projection="3d")
    axes.set_facecolor(background)
    for item in scene.items:
        geometry = item.geometry
        if item.kind == "points":
            points = np.asarray(geometry.points)
            axes.scatter(*points.T, c=np.asarray(geometry.colors), s=point_size ** 2 / 2.0,
                         depthshade=False, linewidths=0)
        elif item.kind == "lines":
            points = np.asarray(geometry.points)
            segments = points[np.asarray(geometry.lines)]
            axes.add_collection3d(Line3DCollection(segments, colors=np.asarray(geometry.colors),
                                                   linewidths=line_width / 2.0))
        else:
            vertices = np.asarray(geometry.vertices)
            triangles = np.asarray(geometry.triangles)
            keep = triangles[:: max(1, len(triangles) // 20000)]
            colors = np.asarray(geometry.vertex_colors)[keep[:, 0]]
            axes.add_collection3d(Poly3DCollection(vertices[keep], facecolors=colors,
                                                   alpha=item.opacity, linewidths=0))
    centre = (lo + hi) / 2.0
    half = max(float((hi - lo).max()) / 2.0, 1.0)
    for setter, c in zip((axes.set_xlim, axes.set_ylim, axes.set_zlim), centre):
        setter(c - half, c + half)
    axes.set_box_aspect((1, 1, 1))
    elevation = np.degrees(np.arcsin(np.clip(eye[2], -1.0, 1.0)))
    if abs(eye[2]) < 0.95:
        azimuth = np.degrees(np.arctan2(eye[1], eye[0]))
    else:  # looking along z: the azimuth decides which way is up on the picture
        sign = -1.0 if eye[2] > 0 else 1.0
        azimuth = np.degrees(np.arctan2(sign * up[1], sign * up[0]))
    axes.view_init(elev=elevation, azim=azimuth)
    axes.set_axis_off()


def _annotate(figure, scene: Scene) -> None:
    import matplotlib
    from matplotlib.colors import Normalize

    if scene.title:
        figure.text(0.01, 0.99, scene.title, ha="left", va="top", fontsize=9,
                    bbox=dict(facecolor="white", alpha=0.7, edgecolor="none"))
    bar = scene.colorbar
    if bar is not None:
        axes = figure.add_axes((0.90, 0.15, 0.02, 0.6))
        mappable = matplotlib.cm.ScalarMappable(Normalize(bar.vmin, bar.vmax), bar.cmap)
        colorbar = figure.colorbar(mappable, cax=axes)
        colorbar.set_label(bar.label, fontsize=8)
        colorbar.ax.tick_params(labelsize=7)


if __name__ == "__main__":
    _render_worker(sys.argv[1])
