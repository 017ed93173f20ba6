"""The ``graphreg`` command line (Typer).

Every subcommand has ``--help``. Errors the user can cause (bad files, wrong arguments) are
printed as one line ``error: ...`` with exit code 2, never as a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from graphreg.apps.bench.commands import bench_app
from graphreg.apps.cli_common import REGION_HELP, command_threads, fail, process_age, region_option, threads_option
from graphreg.errors import GraphregError
from graphreg.apps.l2r.commands import l2r_app
from graphreg.methods.registry import DEFAULT_METHOD, methods_help
from graphreg.result.output_kinds import outputs_help, parse_outputs
from graphreg.io.resources import TRAINING_RECIPES, preset_names

#: the shipped presets, for help texts
PRESETS = ", ".join(preset_names())

#: exit code of ``register`` when the quality checks judge the result failed (:mod:`graphreg.checks`)
EXIT_FAILED_CHECKS = 3

#: ``time.perf_counter()`` when this process started (start-up and imports count as the command's time)
STARTED = time.perf_counter() - process_age()

app = typer.Typer(
    name="graphreg",
    help="Deformable registration of 3D lung CT by geometric graph learning on keypoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def info(image: Path = typer.Argument(..., help="Image file (NIfTI, MHA/MHD, NRRD, DIR-Lab .img) or DICOM folder."),
         dirlab_case: Optional[str] = typer.Option(None, help="DIR-Lab case for a raw .img (4dct1..4dct10, copd1..copd10)."),
         as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text.")) -> None:
    """Print the geometry and intensity range of an image."""
    from graphreg.io.images import image_info, read_image

    summary = image_info(read_image(image, dirlab_case=dirlab_case))
    if as_json:
        typer.echo(json.dumps(summary))
        return
    for key, value in summary.items():
        typer.echo(f"{key:>12}: {value}")


@app.command()
def evaluate(
    fixed_landmarks: Path = typer.Option(..., help="Landmarks in the fixed image (DIR-Lab txt, Learn2Reg CSV or x,y,z mm CSV)."),
    moving_landmarks: Path = typer.Option(..., help="Corresponding landmarks in the moving image (same format rules)."),
    moved_landmarks: Optional[Path] = typer.Option(None, help="Fixed landmarks mapped into the moving image by a registration."),
    field: Optional[Path] = typer.Option(None, help="Displacement field (ITK vector image in mm, fixed -> moving) to map the fixed landmarks."),
    dirlab_case: Optional[str] = typer.Option(None, help="DIR-Lab case whose geometry converts voxel landmarks (4dct1..10, copd1..10)."),
    spacing: Optional[str] = typer.Option(None, help="Voxel spacing 'SX,SY,SZ' in mm for voxel landmarks (origin 0, identity direction)."),
    jacobian: bool = typer.Option(False, "--jacobian", help="Also report Jacobian determinant statistics of --field (reads the whole field; slower)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    threads: Optional[str] = threads_option(),
) -> None:
    """Target registration error of landmark pairs, before and (when given) after registration."""
    from graphreg.analysis.evaluation import evaluate_landmarks

    if moved_landmarks is not None and field is not None:
        fail("--moved-landmarks and --field: give one of them, not both")
    with command_threads(threads):
        result = evaluate_landmarks(fixed_landmarks, moving_landmarks, moved_path=moved_landmarks,
                                    field_path=field, dirlab_case=dirlab_case, spacing=spacing, jacobian=jacobian)
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(result_table(result))


def result_table(result: dict) -> str:
    """Plain-text rendering of :func:`graphreg.analysis.evaluation.evaluate_landmarks`'s result."""
    rows = [("", "mean", "std", "p25", "p50", "p75", "max")]
    for label, prefix in (("before", "tre_before_"), ("after", "tre_")):
        if f"{prefix}mean_mm" in result and (label == "before" or result.get("registered")):
            rows.append((f"TRE {label} (mm)",) + tuple(
                f"{result[f'{prefix}{k}_mm']:.2f}" for k in ("mean", "std", "p25", "p50", "p75", "max")))
    lines = [f"{result['n_points']} landmark pairs"]
    lines += ["  ".join(f"{c:>15}" if i == 0 else f"{c:>7}" for i, c in enumerate(r)) for r in rows]
    for key in ("std_log_jacobian", "folding_percent", "jacobian_min", "jacobian_max"):
        if key in result:
            lines.append(f"{key}: {result[key]:.4g}")
    return "\n".join(lines)


def checked_outputs(outputs: Optional[str]) -> tuple[str, ...]:
    """``--outputs`` parsed (:func:`graphreg.result.output_kinds.parse_outputs`), or the command ends with exit 2."""
    try:
        return parse_outputs(outputs)
    except GraphregError as error:
        fail(f"--{error}")


@app.command()
def register(
    fixed: Path = typer.Argument(..., help="Fixed image (e.g. inhale CT): NIfTI, MHA/MHD, NRRD, DICOM folder or DIR-Lab .img."),
    moving: Path = typer.Argument(..., help="Moving image (e.g. exhale CT), same formats."),
    fixed_mask: Optional[Path] = typer.Option(None, help="Fixed lung mask (computed when omitted)."),
    moving_mask: Optional[Path] = typer.Option(None, help="Moving lung mask (computed when omitted)."),
    method: str = typer.Option(DEFAULT_METHOD, help=f"Registration method: {methods_help()}."),
    config: Optional[Path] = typer.Option(None, help=f"YAML config overriding the defaults, or a preset name ({PRESETS})."),
    model: Optional[Path] = typer.Option(None, help="Trained weights (model.pt) of a learned method (default: its shipped weights)."),
    landmarks: Optional[Path] = typer.Option(None, help="CSV 'x,y,z' world-mm points on the fixed image to map into the moving one."),
    out: Path = typer.Option(Path("graphreg_out"), help="Output folder."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    overwrite: bool = typer.Option(False, help="Replace the results in an existing output folder."),
    report: bool = typer.Option(False, "--report", help="Also write figures and a self-contained report.html (graphreg viz)."),
    inverse: bool = typer.Option(False, "--inverse", help="Also write inverse_transform.h5 (moving -> fixed on the moving grid) and its round-trip error in report.json."),
    memory_budget: Optional[float] = typer.Option(None, "--memory-budget", metavar="GB",
                                                  help="Refuse to run (exit 2, saying which config keys to change) when the estimated peak memory exceeds GB."),
    threads: Optional[str] = threads_option(),
    outputs: Optional[str] = typer.Option(None, help=outputs_help()),
    region: Optional[str] = region_option(),
) -> None:
    """Register MOVING to FIXED; write the chosen outputs (default: field.nii.gz in ITK mm, warped.nii.gz,
    valid_mask.nii.gz, keypoints.csv; transform.h5 with --outputs ...,transform) and report.json.

    The last line gives the pipeline's and the whole command's wall time and the result's status from
    the quality checks (ok, suspect, failed; reasons in report.json); exit code 3 when it is failed.
    """
    from graphreg.api import register as run_registration
    from graphreg.io.landmarks import read_landmarks
    from graphreg.result.registration import file_checksum

    kinds = checked_outputs(outputs)
    points = None
    if landmarks is not None:
        marks = read_landmarks(landmarks)
        if marks.space != "world":
            fail(f"--landmarks {landmarks}: expected a world-mm CSV with an 'x,y,z' header")
        points = marks.points
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        fail(f"--out {out}: the folder already holds results; pass --overwrite to replace them")
    with command_threads(threads) as count:
        result = run_registration(fixed, moving, fixed_mask, moving_mask, method=method, config=config,
                                  device=device, progress=lambda line: typer.echo(line, err=True), model=model,
                                  memory_budget_gb=memory_budget, threads=count, region=region)
        inputs = {"fixed": str(fixed), "moving": str(moving), "fixed_mask": fixed_mask and str(fixed_mask),
                  "moving_mask": moving_mask and str(moving_mask)}
        checksums = {name: file_checksum(path) for name, path in inputs.items() if path}
        result.save(out, fixed_landmarks_mm=points, overwrite=overwrite,
                    outputs=(*kinds, "inverse") if inverse else kinds, started=STARTED, inputs=inputs,
                    input_sha256=checksums)
        if report:
            from graphreg.apps.viz.commands import viz_command

            viz_command(out, echo=typer.echo, warn=lambda line: typer.echo(line, err=True))
    if "region" in result.extras:
        typer.echo(result.extras["region"]["summary"])
    status = f"; status {result.status}" if result.status else ""
    typer.echo(f"wrote {out}: pipeline {result.timings['total']:.1f} s, total {time.perf_counter() - STARTED:.1f} s"
               f"{status}")
    if result.status == "failed":  # the field is written for inspection, but must not pass as a result
        raise typer.Exit(EXIT_FAILED_CHECKS)


@app.command()
def apply(result_dir: Path = typer.Argument(..., help="A folder written by 'graphreg register' (transform.h5 or field.nii.gz, report.json)."),
          image: Optional[Path] = typer.Option(None, help="Image to warp (forward: one in moving space, onto the fixed grid)."),
          labels: Optional[Path] = typer.Option(None, help="Label map to warp by nearest neighbour (no new labels)."),
          points: Optional[Path] = typer.Option(None, help="Points to map: CSV 'x,y,z' world mm, DIR-Lab .txt or Learn2Reg .csv (forward: fixed points into the moving image)."),
          inverse: bool = typer.Option(False, "--inverse", help="Map moving -> fixed: images in fixed space onto the moving grid, moving points into the fixed image."),
          interpolation: str = typer.Option("linear", help="Image interpolation: linear | bspline."),
          default: Optional[float] = typer.Option(None, help="Value outside the source image (default: image minimum; labels 0)."),
          out: Path = typer.Option(..., help="Output file (image format for images and labels; points keep their input format).")) -> None:
    """Warp an image or label map, or map points, through a registration result, either way."""
    from graphreg.result.apply import apply_result

    written = apply_result(result_dir, out, image=image, labels=labels, points=points, inverse=inverse,
                           interpolation=interpolation, default=default, echo=typer.echo)
    typer.echo(f"wrote {written}")


@app.command()
def ventilation(result_dir: Path = typer.Argument(..., help="A folder written by 'graphreg register' or 'graphreg demo'."),
                inhale: str = typer.Option("auto", help="Which image is inhale: fixed | moving | auto (the larger lung volume)."),
                out: Optional[Path] = typer.Option(None, help="Output folder (default: RESULT_DIR/ventilation)."),
                fixed: Optional[Path] = typer.Option(None, help="Fixed image (default: from report.json)."),
                fixed_mask: Optional[Path] = typer.Option(None, help="Fixed lung mask (default: from report.json)."),
                moving: Optional[Path] = typer.Option(None, help="Moving image (default: the folder's warped.nii.gz, else report.json)."),
                hu_smoothing: float = typer.Option(3.0, metavar="MM", help="Gaussian sigma (mm) of the HU images inside the lungs before the HU formula (0: none)."),
                overwrite: bool = typer.Option(False, help="Replace the results in an existing output folder.")) -> None:
    """Regional ventilation maps in the fixed frame (Jacobian and HU based, + = expansion exhale -> inhale), mass check, summary per lung and third."""
    from graphreg.apps.ventilation_command import ventilation_result

    written = ventilation_result(result_dir, out, inhale=inhale, fixed=fixed, moving=moving, fixed_mask=fixed_mask,
                                 overwrite=overwrite, hu_smoothing_mm=hu_smoothing, echo=typer.echo)
    typer.echo(f"wrote {written}")


@app.command("4d")
def four_d(phases: list[Path] = typer.Argument(..., help="Phase images in breathing order, one folder of them, or one 4D NIfTI/MHA."),
           out: Path = typer.Option(..., help="Output folder: one result folder per phase, summary.json, the figures."),
           reference: str = typer.Option("0", help="Reference (fixed) phase: index or name."),
           points: Optional[Path] = typer.Option(None, help="CSV 'x,y,z' world-mm points in the reference phase -> trajectories.csv/.png."),
           midposition: bool = typer.Option(False, "--midposition", help="Also write the mid-position image (mean position over the phases)."),
           ventilation: bool = typer.Option(False, "--ventilation", help="Also write each phase's ventilation maps (PHASE/ventilation/)."),
           inhale: str = typer.Option("auto", help="With --ventilation, which image is inhale: fixed (the reference) | moving (each phase) | auto (per phase)."),
           cold: bool = typer.Option(False, "--cold", help="Register each phase on its own instead of warm-starting from its neighbour."),
           lungs: Optional[Path] = typer.Option(None, help="Reference lung mask (computed when omitted)."),
           method: str = typer.Option(DEFAULT_METHOD, help=f"Registration method: {methods_help()}."),
           config: Optional[Path] = typer.Option(None, help=f"YAML config overriding the defaults, or a preset name ({PRESETS})."),
           device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
           overwrite: bool = typer.Option(False, help="Replace the results in an existing output folder."),
           threads: Optional[str] = threads_option(),
           outputs: Optional[str] = typer.Option(None, help=outputs_help("Applies to every phase."))) -> None:
    """Register every phase of a 4D-CT to the reference phase (warm-started from the neighbouring phase); trajectories, mid-position image, ventilation."""
    from graphreg.apps.fourd_command import run_4d

    kinds = checked_outputs(outputs)
    with command_threads(threads) as count:
        summary = run_4d(phases, out, reference=reference, points=points, midposition=midposition,
                         ventilation=ventilation, inhale=inhale, warm=not cold, lungs=lungs, method=method, config=config,
                         device=device, threads=count, outputs=kinds, overwrite=overwrite, started=STARTED,
                         echo=lambda line: typer.echo(line, err=True))
    typer.echo(f"wrote {out}: {len(summary['phases'])} phases, registration {summary['seconds_registration']['total']:.1f} s, "
               f"total {time.perf_counter() - STARTED:.1f} s")


@app.command()
def train(config: Path = typer.Option(..., help=f"Training recipe: a YAML file or a shipped recipe's name ({', '.join(TRAINING_RECIPES)})."),
          out: Path = typer.Option(Path("runs/train"), help="Folder for checkpoints, history and the final model.pt."),
          variant: Optional[str] = typer.Option(None, help="Recipe section merged over it, e.g. 'gpu' for the full recipe."),
          max_minutes: Optional[float] = typer.Option(None, help="Wall-time budget; stops with a checkpoint (resume later)."),
          resume: bool = typer.Option(True, help="Continue from the latest checkpoint in --out."),
          threads: Optional[str] = threads_option()) -> None:
    """Train a learned registration model from a YAML recipe (seeded, resumable, checkpointed)."""
    from graphreg.training import train_from_config

    with command_threads(threads):
        result = train_from_config(config, out, resume=resume, max_minutes=max_minutes, variant=variant)
    stopped = "" if result.stopped == "completed" else f" ({result.stopped}: run the same command again to continue)"
    typer.echo(f"trained to step {result.step}{stopped}; wrote {out}")


@app.command()
def viz(result_dir: Path = typer.Argument(..., help="A folder written by 'graphreg register' or 'graphreg demo'."),
        fixed: Optional[Path] = typer.Option(None, help="Fixed image (default: from report.json)."),
        moving: Optional[Path] = typer.Option(None, help="Moving image (default: from report.json)."),
        fixed_mask: Optional[Path] = typer.Option(None, help="Fixed lung mask (default: from report.json)."),
        moving_mask: Optional[Path] = typer.Option(None, help="Moving lung mask (default: from report.json)."),
        fixed_landmarks: Optional[Path] = typer.Option(None, help="Fixed landmarks, CSV x,y,z mm."),
        moving_landmarks: Optional[Path] = typer.Option(None, help="Moving landmarks, CSV x,y,z mm."),
        out: Optional[Path] = typer.Option(None, help="Output folder (default: RESULT_DIR/viz)."),
        no_3d: bool = typer.Option(False, "--no-3d", help="Skip the 3D point-cloud scenes."),
        interactive: bool = typer.Option(False, help="Open an interactive 3D window when a display exists."),
        threads: Optional[str] = threads_option()) -> None:
    """Slice figures, 3D point-cloud scenes (PNG + .ply) and a self-contained report.html of a result."""
    from graphreg.apps.viz.commands import viz_command

    with command_threads(threads):
        viz_command(result_dir, fixed=fixed, moving=moving, fixed_mask=fixed_mask, moving_mask=moving_mask,
                    fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks, out_dir=out,
                    render_3d=not no_3d, interactive=interactive, echo=typer.echo,
                    warn=lambda line: typer.echo(line, err=True))


@app.command()
def demo(out: Path = typer.Option(Path("graphreg_demo"), help="Output folder (report.json, field, warped image)."),
         method: str = typer.Option(DEFAULT_METHOD, help=f"Registration method: {methods_help()}."),
         device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
         overwrite: bool = typer.Option(True, help="Replace an earlier demo result in --out."),
         threads: Optional[str] = threads_option(),
         outputs: Optional[str] = typer.Option(None, help=outputs_help())) -> None:
    """Register the bundled demo pair and print the landmark TRE before and after."""
    from graphreg.apps.demo import run_demo

    kinds = checked_outputs(outputs)
    with command_threads(threads) as count:
        report = run_demo(out, method=method, device=device, overwrite=overwrite,
                          progress=lambda line: typer.echo(line, err=True), threads=count, outputs=kinds,
                          started=STARTED)
    status = (report.get("quality") or {}).get("status")
    typer.echo(f"method {report['method']}: TRE {report['tre_before_mm']:.2f} mm -> {report['tre_after_mm']:.2f} mm "
               f"(p75 {report['tre_after_p75_mm']:.2f} mm); wrote {out}/report.json: pipeline "
               f"{report['seconds_total']:.1f} s, total {time.perf_counter() - STARTED:.1f} s"
               f"{f'; status {status}' if status else ''}")
    if status == "failed":
        raise typer.Exit(EXIT_FAILED_CHECKS)


@app.command()
def batch(pairs: Path = typer.Argument(..., help="CSV: fixed, moving[, fixed_mask, moving_mask, landmarks, moving_landmarks, id]; paths relative to the CSV."),
          out: Path = typer.Option(..., help="Output folder: one result folder per pair (DIR/<id>/), <id>.error.txt, summary.csv."),
          method: str = typer.Option(DEFAULT_METHOD, help=f"Registration method: {methods_help()}."),
          config: Optional[Path] = typer.Option(None, help=f"YAML config overriding the defaults, or a preset name ({PRESETS})."),
          model: Optional[Path] = typer.Option(None, help="Trained weights (model.pt) of a learned method (default: its shipped weights)."),
          device: Optional[str] = typer.Option(None, help="cpu or cuda[:N] (default: Dask worker i uses GPU i mod n_gpus, else CPU)."),
          workers: int = typer.Option(1, help="Pairs registered in parallel (worker processes of a local Dask cluster)."),
          scheduler: Optional[str] = typer.Option(None, help="local (this process) | processes (Dask LocalCluster) | dask (a running Dask scheduler); default: local for 1 worker, else processes."),
          scheduler_address: Optional[str] = typer.Option(None, help="Address of a running Dask scheduler, e.g. tcp://10.0.0.1:8786 (implies --scheduler dask)."),
          threads: Optional[str] = threads_option(
              "CPU threads of each worker (default: $GRAPHREG_THREADS, else the cores this process may use "
              "divided among the local workers); recorded in each report.json."),
          outputs: Optional[str] = typer.Option(None, help=outputs_help("Applies to every pair.")),
          region: Optional[str] = region_option(REGION_HELP + " Applies to every pair.")) -> None:
    """Register every pair of a CSV table: resumable (finished pairs are skipped), failures isolated, summary.csv."""
    from graphreg.apps.batch import run_batch

    kinds = checked_outputs(outputs)
    result = run_batch(pairs, out, method=method, config=config, model=model, device=device, workers=workers,
                       scheduler=scheduler, scheduler_address=scheduler_address,
                       progress=lambda line: typer.echo(line, err=True), threads=threads, outputs=kinds,
                       region=region)
    counts = result.counts
    typer.echo(f"{counts['ok']} registered, {counts['skipped']} skipped, {counts['failed']} failed; "
               f"wrote {result.summary_path}")
    if result.n_failed:
        raise typer.Exit(1)


app.add_typer(bench_app, name="bench", help="Make the benchmark pairs and run methods on them side by side.")
app.add_typer(l2r_app, name="l2r", help="Learn2Reg task folders: register a split into a submission, evaluate it.")


def main() -> None:
    """Console-script entry point: run the app, turning library errors into one-line messages."""
    try:
        app()
    except GraphregError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
