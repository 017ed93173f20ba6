"""``graphreg 4d PHASE_0 ... PHASE_N --out DIR``: a 4D registration (:mod:`graphreg.analysis.fourd`) written
as one output folder.

``DIR/`` holds one result folder per phase (``DIR/<phase>/``, the files of ``graphreg register``,
with ``ventilation/`` when asked), ``reference_lungs.nii.gz``, ``summary.json`` and, when asked,
``trajectories.csv`` + ``trajectories.png`` and ``midposition.nii.gz`` + ``midposition.png``.
Every input is read and checked before the first registration, and the folder appears complete or
not at all (:class:`graphreg.io.outputs.ResultDirectory`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from graphreg.errors import GraphregError
from graphreg.analysis.ventilation import INHALE_CHOICES

#: trajectories.csv columns (see :func:`graphreg.analysis.fourd.trajectory_rows`)
TRAJECTORY_COLUMNS = ("point", "phase", "index", "x", "y", "z", "dx", "dy", "dz")


def _reference_index(reference: str, names: Sequence[str]) -> int:
    """``--reference``: a phase index or a phase name."""
    if reference in names:
        return list(names).index(reference)
    try:
        index = int(reference)
    except ValueError:
        index = -1
    if not 0 <= index < len(names):
        raise GraphregError(f"reference: expected a phase index 0..{len(names) - 1} or a phase name "
                            f"({', '.join(names)}), got {reference!r}")
    return index


def run_4d(phases: Sequence[str | Path], out: str | Path, reference: str = "0", points: Optional[Path] = None,
           midposition: bool = False, ventilation: bool = False, inhale: str = "auto", warm: bool = True, lungs: Optional[Path] = None,
           method: str = "corrfield", config: Any = None, device: Optional[str] = None,
           threads: Optional[int] = None, outputs: Any = None, overwrite: bool = False,
           started: Optional[float] = None, echo: Callable[[str], None] = print) -> dict:
    """``graphreg 4d``: register every phase to the reference and write ``out`` (module docstring).

    Args:
        phases: phase images, one folder of them, or one 4D image (:func:`graphreg.analysis.fourd.read_phases`).
        reference: index or name of the reference phase.
        points: CSV ``x,y,z`` (world mm, reference phase) whose trajectories are written.
        midposition, ventilation: also write the mid-position image / each phase's ventilation maps
            (:func:`graphreg.analysis.ventilation.ventilation_maps`, the reference as the fixed image);
            ``inhale``: which image is inhale, ``"fixed"`` (the reference), ``"moving"`` (each
            phase) or ``"auto"`` (per phase, by lung volume; fails for a phase that does not move).
        warm: warm-start each phase from its neighbour (:mod:`graphreg.analysis.fourd`).
        lungs: reference lung mask (default: computed).
        outputs: the per-phase outputs (:mod:`graphreg.result.output_kinds`).
        started: ``time.perf_counter()`` when the command began (for ``seconds_wall``).

    Returns:
        the summary written as ``summary.json``.

    Raises:
        GraphregError: (and subclasses) bad input, found before anything is written: an unreadable
            phase, phases on different grids, points outside the reference image, an occupied
            ``out`` without ``overwrite``.
    """
    from graphreg.result.mapping import check_inside
    from graphreg.runtime.extras import missing_packages
    from graphreg.analysis.fourd import check_phases, read_phases, register_4d, trajectory_rows
    from graphreg.io.images import read_image, write_image
    from graphreg.io.landmarks import read_landmarks
    from graphreg.io.outputs import ResultDirectory
    from graphreg.io.tables import write_csv_table
    from graphreg.io.jsonable import to_jsonable
    from graphreg.result.output_kinds import parse_outputs

    start = time.perf_counter() if started is None else started
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise GraphregError(f"out: {out} already holds results; pass --overwrite to replace them")
    kinds = parse_outputs(outputs)
    if inhale not in INHALE_CHOICES:
        raise GraphregError(f"inhale: expected one of {', '.join(INHALE_CHOICES)}, got {inhale!r}")
    volumes, names, sources = read_phases(phases)
    index = _reference_index(str(reference), names)
    check_phases(volumes, names)
    marks = None
    if points is not None:
        marks = read_landmarks(points)
        if marks.space != "world":
            raise GraphregError(f"points: {points}: expected a world-mm CSV with an 'x,y,z' header")
        check_inside("points", marks.points, volumes[index].grid, "reference")
    mask = read_image(lungs) if lungs is not None else None
    figures = "matplotlib" not in missing_packages("viz")
    if not figures:
        echo("figures skipped: matplotlib is missing (pip install 'graphreg[viz]')")
    echo(f"{len(names)} phases ({', '.join(names)}), reference {names[index]}, "
         f"{'warm-started from the neighbouring phase' if warm else 'each phase on its own (cold)'}")
    result = register_4d(volumes, index, mask, method=method, config=config, warm=warm, names=names,
                         device=device, progress=echo, threads=threads)
    summary: dict = {"phases": names, "reference": names[index], "warm_start": warm, "method": method,
                     "neighbours": {names[i]: names[n] for i, n in result.neighbours.items()},
                     "seconds_registration": result.seconds, "phase_folders": {}}
    lungs_path = Path(lungs) if lungs is not None else out / "reference_lungs.nii.gz"
    with ResultDirectory(out, overwrite=overwrite) as staging:
        write_image(result.lungs, staging / "reference_lungs.nii.gz")
        reference = volumes[index]
        for phase, registration in sorted(result.registrations.items()):
            folder = staging / names[phase]
            inputs = {"fixed": sources[index], "moving": sources[phase], "fixed_mask": lungs_path}
            registration.save(folder, outputs=kinds, inputs={k: str(v.resolve()) for k, v in inputs.items() if v},
                              phase={"name": names[phase], "reference": names[index], "warm_start": warm})
            summary["phase_folders"][names[phase]] = {"status": registration.status}
            if ventilation:
                from graphreg.apps.ventilation_command import write_ventilation

                maps = registration.ventilation(reference, result.lungs, inhale=inhale)
                write_ventilation(maps, folder / "ventilation", figure=figures)
                lung = maps.summary["regions"]["lungs"]
                summary["phase_folders"][names[phase]]["ventilation_jacobian_mean"] = lung["ventilation_jacobian"]["mean"]
                summary["phase_folders"][names[phase]]["ventilation_hu_mean"] = lung["ventilation_hu"]["mean"]
        if marks is not None:
            positions = result.trajectories(marks.points)
            write_csv_table(trajectory_rows(names, positions, index), TRAJECTORY_COLUMNS, staging / "trajectories.csv")
            shifts = positions - positions[:, index:index + 1]
            summary["trajectories"] = {"points": len(positions), "file": "trajectories.csv",
                                       "peak_to_peak_mm": (shifts.max(axis=1) - shifts.min(axis=1)).tolist()}
            if figures:
                from graphreg.apps.viz.fourd import plot_trajectories
                from graphreg.apps.viz.slices import save_figure

                save_figure(plot_trajectories(names, positions, index), staging / "trajectories.png")
        if midposition:
            tick = time.perf_counter()
            image, _ = result.midposition()
            write_image(image, staging / "midposition.nii.gz")
            summary["midposition"] = {"file": "midposition.nii.gz", "seconds": time.perf_counter() - tick,
                                      "formula": "I_mid(y) = (1/N) sum_i I_i(T_i(T_mid^-1(y))), "
                                                 "T_mid(x) = x + (1/N) sum_i u_i(x)"}
            if figures:
                from graphreg.apps.viz.fourd import plot_midposition
                from graphreg.apps.viz.slices import save_figure

                save_figure(plot_midposition(reference, image, result.lungs, names[index]),
                            staging / "midposition.png")
        summary["seconds_wall"] = time.perf_counter() - start
        (staging / "summary.json").write_text(json.dumps(to_jsonable(summary), indent=2), encoding="utf-8")
    return summary
