"""Tests of graphreg.apps.viz: slice figures, 3D scenes (off-screen), PLY export, HTML report, viz command.

A tiny synthetic result folder is built here (a 40 x 36 x 24 "thorax" with two cone-shaped
lungs, a known smooth field with one small folding bump, landmarks and keypoints), so nothing
depends on the registration pipeline.
"""

from __future__ import annotations

import json
import warnings
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from graphreg.errors import GraphregError, InputFileError, ShapeError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.io import Landmarks, write_image, write_itk_field, write_landmarks
from graphreg.ops.metrics import jacobian_determinant
from graphreg.apps.viz import bench_plots, pointclouds, report, slices, webview
from graphreg.apps.viz.commands import viz_command
from graphreg.core.volume import Volume

GRID = Grid((24, 36, 40), spacing=(1.5, 1.5, 2.5), origin=(-30.0, -27.0, -30.0))
FOLD_CENTRE = np.array([9.0, -3.0, -10.0])  # inside the left lung, world mm


# ---------------------------------------------------------------------- synthetic data
def _world(grid: Grid) -> np.ndarray:
    index = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1)
    return grid.voxel_to_world(index.astype(np.float64))  # (z, y, x, 3) world mm


def _lungs(world: np.ndarray) -> np.ndarray:
    """Two cones: narrow apex at the top (z = +28), wide base at the bottom (z = -24)."""
    x, y, z = world[..., 0], world[..., 1], world[..., 2]
    radius = 4.0 + 8.0 * np.clip((28.0 - z) / 52.0, 0.0, 1.0)
    inside_z = (z > -24.0) & (z < 28.0)
    right = ((x + 13.0) ** 2 + y ** 2 < radius ** 2) & inside_z
    left = ((x - 13.0) ** 2 + y ** 2 < radius ** 2) & inside_z
    return right | left


def _image(world: np.ndarray) -> np.ndarray:
    x, y, z = world[..., 0], world[..., 1], world[..., 2]
    hu = np.where((x / 28.0) ** 2 + (y / 24.0) ** 2 < 1.0, 40.0, -1000.0)
    lungs = _lungs(world)
    hu = np.where(lungs, -850.0, hu)
    for cx, cy in ((-13.0, 0.0), (13.0, 0.0), (-16.0, 4.0), (10.0, -4.0)):  # vessels along z
        vessel = ((x - cx) ** 2 + (y - cy) ** 2 < 2.5 ** 2) & lungs
        hu = np.where(vessel, 60.0 + 2.0 * z, hu)
    return hu


def _true_motion_mm(world: np.ndarray) -> np.ndarray:
    """Breathing-like: mostly superior-inferior, largest at the lung base; some anterior motion."""
    z = world[..., 2]
    u = np.zeros(world.shape)
    u[..., 2] = 5.0 * np.clip((30.0 - z) / 60.0, 0.0, 1.0) ** 1.5
    u[..., 1] = -1.5 * np.cos(world[..., 0] / 20.0)
    u[..., 0] = 0.8 * np.sin(z / 15.0)
    return u


def _fold_mm(world: np.ndarray) -> np.ndarray:
    """A Gaussian bump of the x displacement steep enough to fold (d u_x / d x < -1)."""
    r2 = ((world - FOLD_CENTRE) ** 2).sum(-1)
    u = np.zeros(world.shape)
    u[..., 0] = 10.0 * np.exp(-r2 / (2 * 4.0 ** 2))
    return u


def make_result(tmp_path: Path, with_pair: bool = True, uncertainty: bool = True) -> Path:
    """A result folder (plus its pair folder) as Registration.save and the demo write them."""
    world = _world(GRID)
    true_u = _true_motion_mm(world)
    fixed = Volume(_image(world).astype(np.int16), GRID)
    moving = Volume(_image(world - true_u).astype(np.int16), GRID)  # M(x + u(x)) ~ F(x)
    mask = Volume(_lungs(world).astype(np.uint8), GRID)
    rng = np.random.default_rng(0)
    inside = world[_lungs(world)]
    fixed_lm = inside[rng.choice(len(inside), 20, replace=False)]
    true_field = DisplacementField.from_mm_array(true_u, GRID)
    moving_lm = true_field.transform_points(fixed_lm)

    pair = tmp_path / "pair"
    pair.mkdir(parents=True, exist_ok=True)
    write_image(fixed, pair / "fixed.nii.gz")
    write_image(moving, pair / "moving.nii.gz")
    write_image(mask, pair / "fixed_mask.nii.gz")
    write_image(mask, pair / "moving_mask.nii.gz")
    write_landmarks(Landmarks(fixed_lm, "world"), pair / "fixed_landmarks.csv", "world")
    write_landmarks(Landmarks(moving_lm, "world"), pair / "moving_landmarks.csv", "world")

    result = tmp_path / "result"
    result.mkdir(parents=True, exist_ok=True)
    estimate = DisplacementField.from_mm_array(0.85 * true_u + _fold_mm(world), GRID)
    write_itk_field(estimate, result / "field.nii.gz")
    write_image(estimate.warp(moving, default=-1000.0), result / "warped.nii.gz")
    write_landmarks(Landmarks(estimate.transform_points(fixed_lm), "world"), result / "landmarks_moved.csv",
                    "world")
    keypoints = inside[rng.choice(len(inside), 60, replace=False)]
    disp = estimate.transform_points(keypoints) - keypoints
    columns = [keypoints, disp] + ([rng.uniform(0.2, 2.0, (60, 1))] if uncertainty else [])
    header = "x,y,z,dx,dy,dz" + (",uncertainty_mm" if uncertainty else "")
    rows = "\n".join(",".join(f"{v:.4f}" for v in row) for row in np.concatenate(columns, 1))
    (result / "keypoints.csv").write_text(header + "\n" + rows + "\n")
    info = {"method": "synthetic", "timings_s": {"keypoints": 0.1, "total": 1.5}, "seconds_total": 1.5,
            "seconds_wall": 2.5,
            "jacobian": {"std_log_jacobian": 0.1, "folding_percent": 0.2}, "config": {"knn": 15, "tps": {"lambda": 0.1}},
            "quality": {"status": "suspect", "reasons": ["folding 2 (limit <= 1)"],
                        "checks": [{"name": "outcome.folding_percent", "verdict": "suspect", "value": 2.0,
                                    "limit": "<= 1 (failed > 5)", "detail": "folding 2 (limit <= 1)"}]}}
    if uncertainty:  # the dense map: larger towards the left lung's top, where the panel must show it
        error_map = 0.5 + np.exp(-np.sum((world - FOLD_CENTRE) ** 2, axis=-1) / 200.0)
        write_image(Volume(error_map.astype(np.float32), GRID), result / "uncertainty.nii.gz")
        info["uncertainty_map"] = {"predicts": "graph-stage error", "region": "fixed lungs",
                                   "predicted": {"mean": 0.8, "p50": 0.7, "p90": 1.2}}
    if with_pair:
        info["pair"] = str(pair)
    (result / "report.json").write_text(json.dumps(info))
    return result


@pytest.fixture(scope="module")
def result_dir(tmp_path_factory) -> Path:
    return make_result(tmp_path_factory.mktemp("viz"))


@pytest.fixture(scope="module")
def data(result_dir):
    return report.load_result(result_dir)


def _png(path: Path) -> np.ndarray:
    return matplotlib.image.imread(str(path))[..., :3]


def _not_blank(image: np.ndarray) -> bool:
    """More than 1% of the pixels differ from the corner (background) colour."""
    return float((np.abs(image - image[0, 0]).sum(-1) > 0.05).mean()) > 0.01


# ---------------------------------------------------------------------- display geometry
def test_convention_display_orientation():
    frame = slices.DisplayFrame.from_grid(GRID)
    z, y, x = np.indices(GRID.shape)
    coronal = frame.take(z, "coronal", 5)  # rows run inferior -> superior (origin "lower": head on top)
    assert coronal.shape == (24, 40) and np.array_equal(coronal[:, 0], np.arange(24))
    axial = frame.take(y, "axial", 3)  # rows anterior -> posterior (the y axis is inverted on screen)
    assert axial.shape == (36, 40) and np.array_equal(axial[:, 0], np.arange(36))
    sagittal = frame.take(y, "sagittal", 3)  # columns anterior -> posterior, rows inferior -> superior
    assert sagittal.shape == (24, 36) and np.array_equal(sagittal[0], np.arange(36))
    left, right, bottom, top = frame.extent("coronal")
    assert (left, right) == pytest.approx((-30.75, 29.25)) and (bottom, top) == pytest.approx((-31.25, 28.75))


def test_convention_flipped_and_permuted_grid_displays_the_same():
    """A file stored with x flipped and z, y swapped shows the same picture in the same mm place."""
    base = np.random.default_rng(1).normal(size=GRID.shape)
    world_of_base = _world(GRID)
    # new image axes: i = -x, j = z, k = y  (direction columns)
    direction = np.array([[-1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=float)
    n_x, n_y, n_z = GRID.size_xyz
    origin = world_of_base[0, 0, -1]  # the voxel with the largest x
    other = Grid((n_y, n_z, n_x), spacing=(1.5, 2.5, 1.5), origin=tuple(origin),
                 direction=tuple(direction.ravel()))
    array = np.transpose(base, (1, 0, 2))[:, :, ::-1]  # (k=y, j=z, i=-x)
    assert np.allclose(other.voxel_to_world(np.array([3.0, 5.0, 7.0])),
                       GRID.voxel_to_world(np.array([5.0, 3.0, n_x - 1 - 7.0])))
    a, b = slices.DisplayFrame.from_grid(GRID), slices.DisplayFrame.from_grid(other)
    for plane in slices.PLANES:
        assert np.array_equal(a.take(base, plane, 4), b.take(array, plane, 4))
        assert a.extent(plane) == pytest.approx(b.extent(plane))
    points = world_of_base[[2, 10], [3, 20], [4, 30]]
    assert np.allclose(a.display_points(points), points)
    assert np.allclose(b.display_points(points), points)


def test_default_slices_cut_through_the_lungs(data):
    frame = slices.DisplayFrame.from_grid(GRID)
    chosen = slices.default_slices(frame, data.fixed_mask)
    x_mm = frame.coordinates(0)[chosen["sagittal"]]
    assert -17.0 < x_mm < -9.0  # the right lung's axis is at x = -13 mm
    assert chosen["coronal"] == pytest.approx(18, abs=1)  # y = 0 mm, the lungs' centre
    assert slices.default_slices(frame) == {"axial": 12, "coronal": 18, "sagittal": 20}


def test_checkerboard_table():
    a, b = np.zeros((4, 6)), np.ones((4, 6))
    expected = np.array([[0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0], [1, 1, 0, 0, 1, 1], [1, 1, 0, 0, 1, 1]])
    assert np.array_equal(slices.checkerboard(a, b, 2), expected)
    with pytest.raises(ShapeError, match="b: expected"):
        slices.checkerboard(a, np.ones((3, 6)), 2)


def test_jacobian_slice_matches_whole_volume(data):
    frame = slices.DisplayFrame.from_grid(data.field.grid)
    whole = jacobian_determinant(data.field.displacement.double(), GRID.spacing_zyx)[0].numpy()
    for plane, index in (("axial", 0), ("coronal", 17), ("sagittal", 39)):
        expected = frame.take(whole, plane, index)
        assert np.allclose(slices.jacobian_slice(data.field, frame, plane, index), expected, atol=1e-6)
    assert (whole <= 0).any(), "the synthetic bump should fold"


def test_field_slice_mm_matches_mm_array(data):
    frame = slices.DisplayFrame.from_grid(GRID)
    full = data.field.to_mm_array()
    assert np.allclose(slices.field_slice_mm(data.field, frame, "sagittal", 11),
                       frame.take(full, "sagittal", 11), atol=1e-5)


# ---------------------------------------------------------------------- figures
@pytest.fixture(scope="module")
def viz_out(result_dir, tmp_path_factory):
    """One run of the viz command (slice figures at low dpi, 3D scenes drawn by matplotlib)."""
    return viz_command(result_dir, out_dir=tmp_path_factory.mktemp("out") / "viz", size=(160, 120),
                       views=("anterior",), embed=False, backend="matplotlib", dpi=40)


def test_smoke_slice_figures(viz_out):
    paths = {p.stem: p for p in viz_out["figures"]}
    assert set(paths) == {"images", "checkerboard", "difference", "displacement", "jacobian", "uncertainty", "tre",
                          "scene_keypoints_anterior", "scene_landmarks_anterior", "scene_uncertainty_anterior"}
    for name, path in paths.items():
        image = _png(path)
        assert _not_blank(image), name
        if name.startswith("scene_"):
            assert image.shape == (120, 160, 3)
        else:
            assert image.shape[0] > 100 and image.shape[1] > 150


def test_uncertainty_panel_shows_the_map_inside_the_lungs(data, viz_out):
    """Lungs only, brightest where the map is largest; the report names what the map predicts."""
    cut = slices.DisplayFrame.from_grid(GRID)
    chosen = slices.default_slices(cut, data.fixed_mask)
    figure = slices.plot_uncertainty(data.uncertainty, data.fixed, data.fixed_mask, chosen)
    overlay = figure.axes[0].images[-1].get_array()  # axial panel, the map over the CT
    inside = cut.take(np.asarray(data.fixed_mask.array) > 0, "axial", chosen["axial"])
    assert np.ma.getmaskarray(overlay).tolist() == (~inside).tolist()
    assert "not the final field" in figure.axes[-1].get_ylabel()
    text = viz_out["report"].read_text(encoding="utf-8")
    assert "Uncertainty map (mm)" in text and "predicted.p90" in text and "does not predict the final" in text


def test_exception_figures():
    volume = Volume(np.zeros(GRID.shape), GRID)
    other = Volume(np.zeros((10, 10, 10)), Grid((10, 10, 10)))
    with pytest.raises(GraphregError, match="moving: expected an image on the grid"):
        slices.plot_images(volume, other)
    with pytest.raises(GraphregError, match="plane: expected one of"):
        slices.DisplayFrame.from_grid(GRID).take(volume.array, "oblique", 0)
    with pytest.raises(GraphregError, match="index: expected a coronal slice in"):
        slices.DisplayFrame.from_grid(GRID).take(volume.array, "coronal", 36)


# ---------------------------------------------------------------------- 3D
def test_lung_surface_of_a_ball_is_in_world_mm():
    grid = Grid((30, 30, 30), spacing=(1.0, 1.0, 1.0), origin=(100.0, -50.0, 20.0))
    centre = grid.voxel_to_world(np.array([14.5, 14.5, 14.5]))
    world = _world(grid)
    mask = Volume((np.linalg.norm(world - centre, axis=-1) < 10.0).astype(np.uint8), grid)
    mesh = pointclouds.lung_surface(mask, step_mm=1.0, smooth_iterations=0)
    radius = np.linalg.norm(np.asarray(mesh.vertices) - centre, axis=1)
    assert abs(radius.mean() - 10.0) < 0.5 and radius.std() < 0.5
    normals = np.asarray(mesh.vertex_normals)
    outward = ((np.asarray(mesh.vertices) - centre) * normals).sum(1)
    assert (outward > 0).mean() > 0.95
    with pytest.raises(GraphregError, match="empty mask"):
        pointclouds.lung_surface(Volume(np.zeros((4, 4, 4), np.uint8), Grid((4, 4, 4))))


def test_render_scene_png_of_requested_size(data, tmp_path):
    scene = pointclouds.landmark_scene(data.fixed_landmarks_mm, data.moving_landmarks_mm,
                                       data.moved_landmarks_mm)
    for backend in ("open3d", "matplotlib"):
        path = pointclouds.render_scene(scene, tmp_path / f"{backend}.png", size=(200, 150), backend=backend)
        image = _png(path)
        assert image.shape == (150, 200, 3)
        assert _not_blank(image)
    with pytest.raises(GraphregError, match="view: expected one of"):
        pointclouds.render_scene(scene, tmp_path / "x.png", view="sideways")
    with pytest.raises(GraphregError, match="size: expected"):
        pointclouds.render_scene(scene, tmp_path / "x.png", size=(8, 8))


def test_ply_export_reloads_with_the_right_counts(data, tmp_path):
    import open3d as o3d

    surface = pointclouds.lung_surface(data.fixed_mask)
    scene = pointclouds.keypoint_scene(data.keypoints_mm, data.keypoint_displacements_mm, surface)
    paths = {p.stem: p for p in pointclouds.export_ply(scene, tmp_path)}
    cloud = o3d.io.read_point_cloud(str(paths["keypoints"]))
    assert len(cloud.points) == 60 and len(cloud.colors) == 60
    assert np.allclose(np.asarray(cloud.points), data.keypoints_mm, atol=1e-4)
    lines = o3d.io.read_line_set(str(paths["displacements"]))
    assert len(lines.lines) == 60 and len(lines.points) == 120
    ends = np.asarray(lines.points)[np.asarray(lines.lines)[:, 1]]
    assert np.allclose(ends, data.keypoints_mm + data.keypoint_displacements_mm, atol=1e-4)
    mesh = o3d.io.read_triangle_mesh(str(paths["lung_surface"]))
    assert len(mesh.vertices) == len(surface.vertices) and len(mesh.triangles) == len(surface.triangles)


def test_lung_surface_is_decimated_to_its_cap(data):
    full = pointclouds.lung_surface(data.fixed_mask, step_mm=1.0, max_triangles=None)
    capped = pointclouds.lung_surface(data.fixed_mask, step_mm=1.0, max_triangles=500)
    assert len(full.triangles) > 500 >= len(capped.triangles) > 250
    assert len(capped.vertex_normals) == len(capped.vertices)


def test_result_scenes_thin_keypoints_beyond_the_cap(data):
    scenes = report.result_scenes(data, max_points=25)
    cloud = next(item.geometry for item in scenes["keypoints"].items if item.name == "keypoints")
    assert len(cloud.points) == 25 and "(drawn: 25 of 60)" in scenes["keypoints"].title
    assert "(drawn: 20 of 20)" not in scenes["landmarks"].title  # 20 landmark pairs: all drawn


def test_uncertainty_colours_span_the_spread_that_occurs(data):
    scene = pointclouds.uncertainty_scene(data.keypoints_mm, data.keypoint_uncertainty_mm)
    spread = data.keypoint_uncertainty_mm
    assert scene.colorbar.vmin == pytest.approx(np.percentile(spread, 1))
    assert scene.colorbar.vmax == pytest.approx(np.percentile(spread, 99))


def test_show_scene_without_display(monkeypatch, data):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(pointclouds.sys, "platform", "linux")
    scene = pointclouds.keypoint_scene(data.keypoints_mm, data.keypoint_displacements_mm)
    with pytest.raises(GraphregError, match="no display"):
        pointclouds.show_scene(scene)


# ---------------------------------------------------------------------- report and command
class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


def _links(page: Path) -> list[str]:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.links


def test_viz_command_writes_a_report_whose_links_exist(result_dir, viz_out):
    out = viz_out
    page = out["report"]
    links = _links(page)
    assert len(links) == 7 + 3  # seven slice figures, three scenes
    for link in links:
        assert not link.startswith(("data:", "http:", "https:", "/"))
        assert (page.parent / link).is_file(), link
    text = page.read_text(encoding="utf-8")
    tre_after = report.load_result(result_dir).tre_after_mm.mean()
    assert f"{tre_after:.4g}" in text and "tps.lambda" in text
    assert "Status: suspect</b> &mdash; folding 2 (limit &lt;= 1)" in text and "outcome.folding_percent" in text
    assert {p.name for p in out["ply"]} >= {"keypoints_keypoints.ply", "landmarks_error_after.ply",
                                           "uncertainty_uncertainty.ply", "keypoints_lung_surface.ply"}


def test_report_has_the_3d_view_stage_words_and_wall_time(viz_out):
    text = viz_out["report"].read_text(encoding="utf-8")
    start = text.index(f'<script type="application/json" id="{webview.DATA_ID}">') + len(
        f'<script type="application/json" id="{webview.DATA_ID}">')
    payload = json.loads(text[start:text.index("</script>", start)])
    assert len(payload["points"]) == 60 and set(payload["modes"]) == {"magnitude", "uncertainty"}
    assert len(payload["triangles"]) > 0 and len(payload["modes"]["uncertainty"]["values"]) == 60
    assert "<canvas" in text and "http://" not in text and "https://" not in text and "//cdn" not in text
    assert "keypoints (Förstner)" in text and "registration pipeline, total" in text
    assert "whole command (reading, registering, writing)" in text and "wall time of the command (s)" in text
    assert "<th>total</th>" not in text  # internal stage keys are not shown


def test_webview_payload_without_surface_or_uncertainty():
    points = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    payload = webview.view_payload(points, np.array([[0.0, 0.0, 3.0], [0.0, 4.0, 0.0]]))
    assert set(payload["modes"]) == {"magnitude"} and payload["triangles"] == []
    assert payload["modes"]["magnitude"]["values"] == [3.0, 4.0] and payload["centre"] == [5.0, 0.0, 0.0]
    page = webview.view_html(payload)
    assert page.count('type="checkbox"') == 2 and "hidden" in page  # the script reads two boxes
    assert webview.keypoint_view(None, None) is None


def test_no_gl_falls_back_to_matplotlib_once(monkeypatch, data, tmp_path):
    calls = []

    def no_gl(*args, **kwargs):
        calls.append(1)
        raise pointclouds._NoGL("the renderer could not start, exit code 1: no EGL")

    monkeypatch.setattr(pointclouds, "_render_open3d", no_gl)
    monkeypatch.setattr(pointclouds, "_NO_GL", [])
    scene = pointclouds.keypoint_scene(data.keypoints_mm, data.keypoint_displacements_mm)
    with pytest.warns(RuntimeWarning, match="drawn with matplotlib: Open3D off-screen rendering is not available"):
        first = pointclouds.render_views(scene, {"anterior": tmp_path / "a.png", "left": tmp_path / "l.png"},
                                         size=(120, 90))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: later scenes go to matplotlib silently
        second = pointclouds.render_scene(scene, tmp_path / "b.png", size=(120, 90))
    assert len(calls) == 1 and all(_not_blank(_png(path)) for path in [*first, second])
    with pytest.raises(GraphregError, match="not available"):
        pointclouds.render_scene(scene, tmp_path / "c.png", size=(120, 90), backend="open3d")


def test_cli_viz_prints_each_file_once_and_plain_warnings(monkeypatch, run_cli, result_dir, tmp_path):
    monkeypatch.setenv("GRAPHREG_RENDER_BACKEND", "matplotlib")
    monkeypatch.setattr(pointclouds, "_NO_GL", [])

    def render_with_warning(*args, **kwargs):
        warnings.warn("something to say", RuntimeWarning)
        warnings.warn("something to say", RuntimeWarning)
        return original(*args, **kwargs)

    original = report.render_scenes
    monkeypatch.setattr(report, "render_scenes", render_with_warning)
    code, out, err = run_cli(["viz", result_dir, "--out", tmp_path / "viz"])
    assert code in (0, None), err
    written = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("wrote ")]
    assert len(written) == len(set(written)) and sum(w.endswith("report.html") for w in written) == 1
    assert sum(w.endswith(".png") for w in written) == 7 + 3 * 2
    assert [line for line in out.splitlines() if line.startswith("scene ")] == [
        line for line in out.splitlines() if line.startswith("scene ") and "2 views rendered in" in line]
    assert err.count("warning: something to say") == 1
    assert "warnings.warn" not in err and ".py:" not in err


def test_write_report_embedded_is_self_contained(data, result_dir, viz_out, tmp_path):
    figures = {p.stem: p for p in viz_out["figures"] if not p.stem.startswith("scene_")}
    page = report.write_report(result_dir, tmp_path, data=data, figures=figures, render_3d=False)
    links = _links(page)
    assert len(links) == 7 and all(link.startswith("data:image/png;base64,") for link in links)
    with pytest.raises(GraphregError, match="figures: expected names from"):
        report.write_report(result_dir, tmp_path, data=data, figures={"nonsense": figures["tre"]})


def test_exception_viz_command_names_what_is_missing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputFileError, match="field.nii.gz is missing"):
        viz_command(empty)
    with pytest.raises(InputFileError, match="not a folder"):
        viz_command(tmp_path / "nowhere")
    result = make_result(tmp_path / "nopair", with_pair=False)
    with pytest.raises(GraphregError, match="cannot find the fixed image.*pass fixed=PATH"):
        viz_command(result)
    info = json.loads((result / "report.json").read_text())
    info["inputs"] = {"fixed": str(tmp_path / "gone.nii.gz"), "moving": None}
    (result / "report.json").write_text(json.dumps(info))
    with pytest.raises(InputFileError, match="inputs.fixed names .*gone.nii.gz"):
        viz_command(result)
    pair = tmp_path / "nopair" / "pair"
    with pytest.raises(GraphregError, match="cannot find the moving image"):
        viz_command(result, fixed=pair / "fixed.nii.gz")


def test_explicit_inputs_and_no_uncertainty(tmp_path):
    result = make_result(tmp_path, with_pair=False, uncertainty=False)
    pair = tmp_path / "pair"
    data = report.load_result(result, fixed=pair / "fixed.nii.gz", moving=pair / "moving.nii.gz",
                              fixed_landmarks=pair / "fixed_landmarks.csv",
                              moving_landmarks=pair / "moving_landmarks.csv")
    assert data.fixed_mask is None and data.keypoint_uncertainty_mm is None and data.uncertainty is None
    assert "uncertainty" not in report.make_figures(data, tmp_path / "figures", dpi=30)
    assert data.tre_after_mm.mean() < data.tre_before_mm.mean()
    scenes = report.result_scenes(data)
    assert set(scenes) == {"keypoints", "landmarks"}
    assert all(item.name != "lung_surface" for item in scenes["keypoints"].items)


def test_exception_keypoint_file(tmp_path):
    path = tmp_path / "keypoints.csv"
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(InputFileError, match="expected the header"):
        report.read_keypoints(path)
    path.write_text("x,y,z,dx,dy,dz\n1,2,3,4,5\n")
    with pytest.raises(InputFileError, match="line 2: expected 6 finite numbers per row"):
        report.read_keypoints(path)


# ---------------------------------------------------------------------- benchmark plots
def test_bench_plots(tmp_path):
    rows = [{"method": "corrfield", "pair": f"p{i}", "tre_mean_mm": 1.0 + 0.1 * i, "seconds_total": 10.0 + i,
             "tre_mm": list(np.linspace(0.5, 1.5 + 0.2 * i, 30))} for i in range(3)]
    rows += [{"method": "voxelmorph", "pair": f"p{i}", "tre": {"mean_mm": 3.0 + 0.2 * i}, "seconds_total": 1.0,
              "status": "ok"} for i in range(3)]  # the benchmark runner's nested form
    rows.append({"method": "voxelmorph", "pair": "p3", "status": "failed", "tre": None, "seconds_total": None})
    (tmp_path / "bench.json").write_text(json.dumps({"rows": rows}))
    paths = bench_plots.write_bench_plots(bench_plots.load_rows(tmp_path / "bench.json"), tmp_path)
    for path in paths.values():
        assert _not_blank(_png(path))
    labels = [t.get_text() for t in bench_plots.plot_tre_boxplot(rows).axes[0].get_xticklabels()]
    assert labels[0].startswith("corrfield\n90 landmarks") and labels[1].startswith("voxelmorph\n3 pairs")
    assert bench_plots.plot_tre_boxplot(rows).axes[0].get_yscale() == "linear"  # values within 10x
    far = rows + [{"method": "identity", "pair": f"p{i}", "tre_mean_mm": 20.0 + i, "seconds_total": 0.1}
                  for i in range(3)]
    assert bench_plots.plot_tre_boxplot(far).axes[0].get_yscale() == "log"  # no registration beside them
    with pytest.raises(GraphregError, match=r"rows\[1\]: missing keys \['seconds_total'\]"):
        bench_plots.plot_runtime_vs_tre([rows[0], {"method": "a", "pair": "b", "tre_mean_mm": 1.0}])
    with pytest.raises(GraphregError, match=r"rows\[0\].tre_mean_mm: expected a finite number"):
        bench_plots.plot_tre_boxplot([dict(rows[0], tre_mean_mm=float("nan"))])
    with pytest.raises(GraphregError, match="none with status 'ok'"):
        bench_plots.plot_tre_boxplot(rows[-1:])
