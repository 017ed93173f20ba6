"""Render the 3D scenes of a registration result folder; open them in a window when a display exists.

Usage::

    python tools/render_scene.py RESULT_DIR [--out DIR] [--scene keypoints|landmarks|uncertainty|all]
        [--view anterior --view left ...] [--size 1280x960] [--backend auto|open3d|matplotlib]
        [--fixed PATH --moving PATH --fixed-mask PATH ...] [--no-window]

Writes ``DIR/scene_<scene>_<view>.png`` and ``DIR/ply/<scene>_<geometry>.ply`` (default
``DIR = RESULT_DIR/viz``). The fixed mask, landmarks and keypoints are found as
:func:`graphreg.apps.viz.report.load_result` finds them (``report.json``'s ``inputs`` or ``pair``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from graphreg.errors import GraphregError
from graphreg.apps.viz import pointclouds
from graphreg.apps.viz.report import load_result, result_scenes


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1280x960, got {text!r}") from None
    return width, height


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default RESULT_DIR/viz)")
    parser.add_argument("--scene", default="all", choices=["all", "keypoints", "landmarks", "uncertainty"])
    parser.add_argument("--view", action="append", choices=sorted(pointclouds.VIEWS),
                        help="camera view (repeatable; default anterior and left)")
    parser.add_argument("--size", type=_size, default=(1280, 960), help="WIDTHxHEIGHT pixels")
    parser.add_argument("--backend", default="auto", choices=list(pointclouds.BACKENDS))
    parser.add_argument("--no-window", action="store_true", help="never open an interactive window")
    for name in ("fixed", "moving", "fixed-mask", "moving-mask", "fixed-landmarks", "moving-landmarks"):
        parser.add_argument(f"--{name}", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        data = load_result(args.result_dir, fixed=args.fixed, moving=args.moving, fixed_mask=args.fixed_mask,
                           moving_mask=args.moving_mask, fixed_landmarks=args.fixed_landmarks,
                           moving_landmarks=args.moving_landmarks, require=())
        scenes = result_scenes(data)
        if args.scene != "all":
            if args.scene not in scenes:
                raise GraphregError(f"--scene {args.scene}: the result has no data for it "
                                    f"(available: {sorted(scenes) or 'none'})")
            scenes = {args.scene: scenes[args.scene]}
        if not scenes:
            raise GraphregError(f"{args.result_dir}: nothing to draw: no keypoints.csv and no landmark pairs")
        out = args.out or args.result_dir / "viz"
        for name, scene in scenes.items():
            for view in args.view or ["anterior", "left"]:
                path = pointclouds.render_scene(scene, out / f"scene_{name}_{view}.png", size=args.size,
                                                view=view, backend=args.backend)
                print(f"wrote {path}")
            for path in pointclouds.export_ply(scene, out / "ply", prefix=f"{name}_"):
                print(f"wrote {path}")
        if not args.no_window and pointclouds.display_available():
            for scene in scenes.values():
                pointclouds.show_scene(scene, *args.size)
    except GraphregError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
