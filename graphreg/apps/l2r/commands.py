"""``graphreg l2r``: run and evaluate Learn2Reg task folders (Typer sub-app).

Usage::

    graphreg l2r example --out l2r_demo                       # a small task folder from the demo pair
    graphreg l2r run l2r_demo/LungCTdemo_dataset.json --out l2r_run --config lowres_3mm
    graphreg l2r evaluate l2r_demo/LungCTdemo_dataset.json l2r_run/submission --json

Errors the user can cause are printed as one line ``error: ...`` with exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from graphreg.methods.registry import DEFAULT_METHOD, methods_help
from graphreg.io.resources import preset_names

l2r_app = typer.Typer(
    name="l2r",
    help="Learn2Reg task folders: register a split into a submission, evaluate a submission.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_SPLIT_HELP = "Pair list of dataset.json: validation (registration_val), test (registration_test) or training (training_paired_images)."
_PAIR_HELP = "Only this pair (id as in the file name disp_<id>.nii.gz, e.g. 0001_0001); repeatable."


@l2r_app.command()
def run(dataset_json: Path = typer.Argument(..., help="The task's dataset.json (e.g. LungCT/LungCT_dataset.json)."),
        out: Path = typer.Option(..., help="Output folder: submission/disp_*.nii.gz, summary.csv, run.json."),
        split: str = typer.Option("validation", help=_SPLIT_HELP),
        method: str = typer.Option(DEFAULT_METHOD, help=f"Registration method: {methods_help()}."),
        config: Optional[Path] = typer.Option(None, help=f"YAML config overriding the defaults, or a preset name ({', '.join(preset_names())})."),
        model: Optional[Path] = typer.Option(None, help="Trained weights (model.pt) of a learned method (default: its shipped weights)."),
        device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
        pair: Optional[list[str]] = typer.Option(None, help=_PAIR_HELP),
        keep_results: bool = typer.Option(False, "--keep-results", help="Also save each pair's full result folder in OUT/results/<id>/.")) -> None:
    """Register every pair of a split and write the submission files (resumable: finished pairs are skipped)."""
    from graphreg.apps.l2r.run import run_l2r

    result = run_l2r(dataset_json, out, split=split, method=method, config=config, model=model, device=device,
                     pairs=pair, keep_results=keep_results, progress=lambda line: typer.echo(line, err=True))
    counts = result.counts
    typer.echo(f"{counts['ok']} registered, {counts['skipped']} skipped, {counts['failed']} failed; "
               f"wrote {result.submission_dir} and {result.summary_path}")
    if result.n_failed:
        raise typer.Exit(1)


@l2r_app.command()
def evaluate(dataset_json: Path = typer.Argument(..., help="The task's dataset.json."),
             submission_dir: Path = typer.Argument(..., help="Folder of disp_<id>.nii.gz files (e.g. OUT/submission of 'l2r run')."),
             split: str = typer.Option("validation", help=_SPLIT_HELP),
             pair: Optional[list[str]] = typer.Option(None, help=_PAIR_HELP),
             as_json: bool = typer.Option(False, "--json", help="Print one JSON object (cases and aggregates).")) -> None:
    """The official Learn2Reg metrics (TRE_kp / TRE_lm, LogJacDetStd, DSC) per pair and in the mean."""
    from graphreg.apps.l2r.evaluate import evaluate_submission, result_table

    result = evaluate_submission(dataset_json, submission_dir, split=split, pairs=pair)
    typer.echo(json.dumps(result, allow_nan=True) if as_json else result_table(result))


@l2r_app.command()
def example(out: Path = typer.Option(Path("l2r_example"), help="Folder for the task (dataset.json, imagesTr/, masksTr/, keypointsTr/)."),
            pairs: int = typer.Option(2, help="Number of validation pairs (each the demo pair)."),
            spacing: Optional[float] = typer.Option(None, help="Resample the 3 mm demo images to this isotropic spacing (mm).")) -> None:
    """Write a small Learn2Reg task folder made from the bundled demo pair (keypoints with known true positions)."""
    from graphreg.apps.l2r.example import write_example_task

    typer.echo(f"wrote {write_example_task(out, n_pairs=pairs, spacing_mm=spacing)}")
