"""``graphreg viz RESULT_DIR``: every figure, 3D scene and point-cloud file of a result folder.

Output layout (``out_dir``, default ``RESULT_DIR/viz``)::

    report.html                  one self-contained page (figures embedded, interactive 3D view
                                 of the keypoints and lung surface)
    figures/<name>.png           slice figures (images, checkerboard, difference, displacement,
                                 jacobian, tre) and 3D renderings scene_<scene>_<view>.png
    ply/<scene>_<geometry>.ply   point clouds, line sets and meshes of the 3D scenes (world mm)
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence


def viz_command(result_dir, fixed=None, moving=None, fixed_mask=None, moving_mask=None,
                fixed_landmarks=None, moving_landmarks=None, out_dir=None,
                size: Sequence[int] = (960, 720), views: Sequence[str] = ("anterior", "left"),
                render_3d: bool = True, ply: bool = True, embed: bool = True,
                interactive: bool = False, backend: str = "auto", dpi: int = 100,
                echo: Optional[Callable[[str], None]] = None,
                warn: Optional[Callable[[str], None]] = None) -> dict:
    """Visualise a registration result folder.

    Args:
        result_dir: folder written by :meth:`graphreg.result.registration.Registration.save`.
        fixed, moving, fixed_mask, moving_mask, fixed_landmarks, moving_landmarks: paths that
            override what ``report.json`` names (``inputs`` or ``pair``); the fixed and moving
            images are required, the rest is drawn when found.
        out_dir: output folder (default ``result_dir/viz``).
        size: ``(width, height)`` pixels of each 3D rendering.
        views: camera views of the 3D scenes (see :data:`graphreg.apps.viz.pointclouds.VIEWS`).
        render_3d: render the 3D scenes to PNG.
        ply: write the scenes' geometries as ``.ply``.
        embed: embed the PNGs in ``report.html`` (else link them).
        interactive: also open each scene in an Open3D window (needs a display).
        backend: 3D renderer, ``"auto"``, ``"open3d"`` or ``"matplotlib"``.
        dpi: resolution of the slice figures.
        echo: called with one line per written output, each file once (e.g. ``typer.echo``), and
            one line per scene with its render time.
        warn: when given, the warnings raised while drawing are collected and passed to it, each
            distinct message once as ``warning: ...`` (no file names or source lines); otherwise
            they propagate as usual.

    Returns:
        ``{"report": Path, "figures": [Path], "ply": [Path], "render_seconds": {scene: s}}``.

    Raises:
        GraphregError: a required file is missing (the message names it and how to pass it), or
            ``interactive`` without a display.
    """
    from graphreg.errors import GraphregError
    from graphreg.runtime.extras import require_extra

    require_extra("viz", "graphreg viz")
    from graphreg.apps.viz.pointclouds import display_available, export_ply, show_scene
    from graphreg.apps.viz.report import load_result, make_figures, render_scenes, result_scenes, write_report

    if interactive and not display_available():
        raise GraphregError("interactive: no display available (DISPLAY is not set); run without "
                            "--interactive and open the PNGs or .ply files instead")
    result_dir = Path(result_dir)
    out = Path(out_dir) if out_dir is not None else result_dir / "viz"
    with warnings.catch_warnings(record=warn is not None) as caught:
        if warn is not None:
            warnings.simplefilter("always")
        data = load_result(result_dir, fixed=fixed, moving=moving, fixed_mask=fixed_mask,
                           moving_mask=moving_mask, fixed_landmarks=fixed_landmarks,
                           moving_landmarks=moving_landmarks)
        scenes = result_scenes(data) if (render_3d or ply or interactive) else {}
        figures = make_figures(data, out / "figures", dpi=dpi)
        rendered, seconds = (render_scenes(scenes, out / "figures", size, views, backend) if render_3d
                             else ({}, {}))
        report = write_report(result_dir, out, data=data, scenes=scenes, figures=figures, rendered=rendered,
                              embed=embed, render_3d=render_3d, views=views)
        ply_files = []
        if ply:
            for name, scene in scenes.items():
                ply_files += export_ply(scene, out / "ply", prefix=f"{name}_")
    if warn is not None:
        for message in dict.fromkeys(str(w.message) for w in caught):
            warn(f"warning: {message}")
    images = [*figures.values(), *rendered.values()]
    if echo is not None:
        for path in [*images, *ply_files, report]:
            echo(f"wrote {path}")
        for name, value in seconds.items():
            echo(f"scene {name}: {len(views)} views rendered in {value:.1f} s")
    if interactive:
        for scene in scenes.values():
            show_scene(scene)
    return {"report": report, "figures": images, "ply": ply_files, "render_seconds": seconds}
