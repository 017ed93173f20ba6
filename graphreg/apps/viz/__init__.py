"""Visualisation of registrations: slice figures, 3D scenes, HTML reports, benchmark plots.

- :mod:`.slices` — matplotlib (Agg) figures in radiological orientation: images, checkerboards,
  differences, displacement, Jacobian determinant, landmark errors.
- :mod:`.pointclouds` — Open3D scenes (keypoints, landmarks, uncertainty, lung surface),
  off-screen PNG rendering, ``.ply`` export, interactive window.
- :mod:`.report` — reading a result folder and writing its one-page ``report.html``.
- :mod:`.bench_plots` — TRE box plot and runtime-vs-TRE scatter of benchmark rows.
- :mod:`.commands` — :func:`viz_command`, behind ``graphreg viz RESULT_DIR``.

Open3D is imported only when a 3D function runs.
"""

from graphreg.apps.viz.bench_plots import load_rows, plot_runtime_vs_tre, plot_tre_boxplot, write_bench_plots
from graphreg.apps.viz.commands import viz_command
from graphreg.apps.viz.report import ResultData, load_result, make_figures, result_scenes, write_report
from graphreg.apps.viz.slices import (DisplayFrame, plot_checkerboard, plot_differences, plot_displacement, plot_images,
                     plot_jacobian, plot_landmark_errors, save_figure)

__all__ = [
    "DisplayFrame",
    "ResultData",
    "load_result",
    "load_rows",
    "make_figures",
    "plot_checkerboard",
    "plot_differences",
    "plot_displacement",
    "plot_images",
    "plot_jacobian",
    "plot_landmark_errors",
    "plot_runtime_vs_tre",
    "plot_tre_boxplot",
    "result_scenes",
    "save_figure",
    "viz_command",
    "write_bench_plots",
    "write_report",
]
