"""``graphreg bench``: make the benchmark pairs and run registration methods on them (Typer).

Usage::

    graphreg bench make                                    # the realistic 2 mm pairs in bench_data/realistic
    graphreg bench make --set easy --out bench_data/native # the POPI CT warped, native grid
    graphreg bench run --methods identity,corrfield,elastix --json bench.json   # on bench_data/realistic
    graphreg bench run --pairs bench_data/realistic --methods corrfield --directions both   # + exhale->inhale
    graphreg bench run --methods corrfield,corrfield@docs/time_accuracy/io5.yaml   # another config per method
    graphreg bench contention --json contention.json       # default threads vs fixed counts, busy host
    graphreg bench summary bench.json --into README.md     # the run as the README's Markdown table
    python -m graphreg.apps.bench.commands run --help            # the same without the main CLI

Errors the user can cause are printed as one line ``error: ...`` with exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from graphreg.apps.cli_common import command_threads, fail, threads_option
from graphreg.errors import GraphregError
from graphreg.io.resources import asset_path

#: Where ``bench make`` writes and ``bench run`` reads by default.
DEFAULT_PAIRS = Path("bench_data") / "realistic"
DEFAULT_METHODS = "identity,corrfield,elastix,convexadam"
#: ``--directions`` values and the directions each registers
DIRECTION_CHOICES = {"forward": ("forward",), "reverse": ("reverse",), "both": ("forward", "reverse")}

bench_app = typer.Typer(
    name="bench",
    help="Benchmark: make registration pairs with known motion and run methods on them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@bench_app.command()
def run(
    pairs: Path = typer.Option(DEFAULT_PAIRS, help="Folder of pairs: generated pair_*/ folders, DIR-Lab caseN/ "
                               "or copdN/ folders, or a Learn2Reg task folder (layout detected)."),
    methods: str = typer.Option(DEFAULT_METHODS, help="Comma-separated method names (see `graphreg bench methods`); "
                                 "NAME@CONFIG runs a keypoint method with a YAML config or preset."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Write every row and the per-method summary "
                                             "to this JSON file (updated after each run)."),
    device: str = typer.Option("cpu", help="Torch device for the methods: cpu or cuda[:N]."),
    isolate: bool = typer.Option(True, "--isolate/--no-isolate", help="Run each method x pair in a fresh "
                                 "process (clean peak memory, a crash fails only that run)."),
    layout: str = typer.Option("auto", help="Pair folder layout: auto, generated, dirlab or learn2reg."),
    split: str = typer.Option("val", help="Learn2Reg pair list: val, test or train."),
    limit: Optional[int] = typer.Option(None, min=1, help="Use only the first N pairs."),
    timeout: Optional[float] = typer.Option(None, min=1.0, help="Seconds after which one isolated run is "
                                            "stopped and recorded as failed."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a TRE box plot per method and a "
                                        "runtime-vs-TRE scatter (PNG) into this folder."),
    directions: str = typer.Option("forward", help="forward (fixed -> moving as stored), reverse (swapped: "
                                   "images, masks and landmarks) or both."),
    threads: Optional[str] = threads_option(),
) -> None:
    """Run methods on every pair and print TRE, Jacobian, Dice, time and memory per pair and method."""
    import os

    from graphreg.runtime.threads import ENV_VAR
    from graphreg.apps.bench.runner import run_benchmark, summarize
    from graphreg.apps.bench.sources import open_pairs
    from graphreg.apps.bench.table import format_table

    if not pairs.exists():
        hint = (f"; make it with `graphreg bench make --out {pairs}` (the realistic 2 mm set; `--set easy` for "
                f"the warped-CT set)"
                if pairs == DEFAULT_PAIRS else "")
        fail(f"--pairs: folder {pairs} not found{hint}")
    if directions not in DIRECTION_CHOICES:
        fail(f"--directions: expected one of {', '.join(DIRECTION_CHOICES)}, got {directions!r}")
    try:
        refs = open_pairs(pairs, layout=layout, split=split)[:limit]
        names = [m.strip() for m in methods.split(",") if m.strip()]
        typer.echo(f"{len(refs)} pairs from {pairs}, methods {', '.join(names)}, device {device}"
                   f"{', isolated processes' if isolate else ''}")

        def report(row: dict) -> None:
            status = "ok" if row["status"] == "ok" else f"FAILED ({row['error']})"
            tre = (row.get("tre") or {}).get("mean_mm")
            tre_text = f", TRE {tre:.2f} mm" if tre is not None else ""
            seconds = row.get("seconds_total")
            direction = "" if row.get("direction", "forward") == "forward" else f" ({row['direction']})"
            typer.echo(f"  {row['method']} on {row['pair']}{direction}: {status}{tre_text}"
                       f"{f', {seconds:.1f} s' if seconds is not None else ''}")

        with command_threads(threads) as count:
            if threads is not None:  # the isolated runs are child processes
                os.environ[ENV_VAR] = str(count)
            rows = run_benchmark(refs, names, device=device, json_path=json_file, isolate=isolate,
                                 timeout_s=timeout, progress=report, directions=DIRECTION_CHOICES[directions])
    except GraphregError as error:
        fail(str(error))
    typer.echo("")
    typer.echo(format_table(rows, summarize(rows)))
    if json_file is not None:
        typer.echo(f"rows and summary written to {json_file}")
    if plot is not None:
        from graphreg.apps.viz.bench_plots import write_bench_plots

        for path in write_bench_plots(rows, plot).values():
            typer.echo(f"wrote {path}")


@bench_app.command()
def make(
    out: Path = typer.Option(DEFAULT_PAIRS, help="Output folder for the pair_*/ folders."),
    kind: str = typer.Option("realistic", "--set", help="realistic: two acquisitions of a new patient per "
                             "pair (own grids, noise, sliding); easy: the one CT warped (same grid and noise)."),
    low_res: bool = typer.Option(False, "--low-res", help="4 mm isotropic lung-cropped pairs (quick tests)."),
    spacing: Optional[float] = typer.Option(None, "--spacing", help="Isotropic spacing (mm) of lung-cropped "
                                            "pairs; default: 2 for the realistic set, the CT's native grid "
                                            "for the easy set."),
    count: Optional[int] = typer.Option(None, "--count", min=1, help="Number of realistic pairs (default 11: "
                                        "every DIR-Lab landmark set once)."),
    seed: int = typer.Option(0, help="Random seed of the synthetic motion and noise."),
) -> None:
    """Make the benchmark pairs (new patients from the POPI CT breathing DIR-Lab motion, exact landmarks)."""
    from graphreg.datasets.benchmark import make_benchmark_command

    if kind not in ("realistic", "easy"):
        fail(f"--set: expected realistic or easy, got {kind}")
    if spacing is not None and not spacing > 0:
        fail(f"--spacing: expected a positive spacing in mm, got {spacing}")
    if count is not None and kind == "easy":
        fail("--count: only the realistic set has a variable number of pairs")
    try:
        make_benchmark_command(out, low_res=low_res, seed=seed, spacing_mm=spacing, kind=kind, count=count)
    except GraphregError as error:
        fail(str(error))


@bench_app.command("methods")
def list_methods() -> None:
    """List the registered methods (and which optional packages are missing)."""
    from graphreg.apps.bench.methods import available_methods

    for name, description in available_methods().items():
        typer.echo(f"{name:>12}  {description}")


@bench_app.command("scaling")
def scaling(
    pair: Path = typer.Option(Path("bench_data") / "mm2" / "pair_01", "--pair", help="One pair folder."),
    out: Path = typer.Option(Path("scaling"), help="Folder for scaling.json, scaling.txt and the PNG plots."),
    curves: str = typer.Option("keypoints,search_radius,spacing,image_size",
                               help="Comma-separated curves: keypoints, search_radius, spacing, image_size."),
    threads: int = typer.Option(1, min=1, help="torch threads of each measured run."),
    timeout: Optional[float] = typer.Option(None, min=1.0, help="Seconds after which one configuration is "
                                            "stopped and recorded as failed."),
) -> None:
    """Time and peak memory of the pipeline vs keypoints, search range, spacing and image size, with
    the expected complexity and the fitted log-log slope per stage (one fresh process per setting)."""
    import json

    from graphreg.io.atomic import atomic_write_text
    from graphreg.io.jsonable import to_jsonable
    from graphreg.apps.bench.scaling import format_scaling, plot_scaling, run_sweep

    if not pair.is_dir():
        fail(f"--pair: folder {pair} not found")
    try:
        document = run_sweep(pair, [c.strip() for c in curves.split(",") if c.strip()], threads=threads,
                             timeout_s=timeout, progress=typer.echo)
    except GraphregError as error:
        fail(str(error))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "scaling.json", json.dumps(to_jsonable(document), indent=2) + "\n")
    text = format_scaling(document)
    atomic_write_text(out / "scaling.txt", text + "\n")
    typer.echo("")
    typer.echo(text)
    for path in plot_scaling(document, out).values():
        typer.echo(f"wrote {path}")
    typer.echo(f"wrote {out / 'scaling.json'} and {out / 'scaling.txt'}")


@bench_app.command("contention")
def contention(
    pair: Path = typer.Option(asset_path("demo"), "--pair",
                              help="Pair folder with fixed/moving(.nii.gz) and their *_mask.nii.gz (default: the demo pair)."),
    config: Optional[Path] = typer.Option(None, help="YAML config of every run (default: graphreg's 2 mm default)."),
    settings: str = typer.Option("default,1,2", help="Comma-separated: default (no --threads), N (--threads N), "
                                 "spin (default threads, OpenMP spinning as before docs/threads.md)."),
    scenarios: str = typer.Option("alone,pair,busy", help="Comma-separated: alone, pair (two at once), "
                                  "busy (beside a 2-thread CPU burner)."),
    repeats: int = typer.Option(3, help="Runs of every scenario and setting (the table shows medians)."),
    json_file: Path = typer.Option(Path("contention.json"), "--json", help="Every run and the medians."),
    timeout: float = typer.Option(600.0, min=1.0, help="Seconds after which one run is stopped and recorded as failed."),
) -> None:
    """Registration time alone, two at once and beside a busy process: default threads against fixed
    counts (each run a fresh `graphreg register` process); prints the medians and writes JSON."""
    import json
    import signal
    import sys

    from graphreg.io.atomic import atomic_write_text
    from graphreg.io.jsonable import to_jsonable
    from graphreg.apps.bench.contention import format_contention, run_contention

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the runs it started, then end
    try:
        document = run_contention(pair, config, [s.strip() for s in settings.split(",") if s.strip()],
                                  [s.strip() for s in scenarios.split(",") if s.strip()], repeats, timeout,
                                  progress=typer.echo)
    except GraphregError as error:
        fail(str(error))
    atomic_write_text(json_file, json.dumps(to_jsonable(document), indent=2) + "\n")
    typer.echo("")
    typer.echo(format_contention(document))
    typer.echo(f"wrote {json_file}")


@bench_app.command("summary")
def summary(
    json_file: Path = typer.Argument(..., help="A `graphreg bench run --json` file."),
    into: Optional[Path] = typer.Option(None, "--into", help="Replace the block between the "
                                        "'<!-- benchmark-summary: begin/end -->' markers of this Markdown "
                                        "file (e.g. README.md) instead of printing."),
) -> None:
    """The run as a Markdown table (date, commit, machine; TRE, folding, seconds; time ratios to peers)."""
    import json

    from graphreg.io.atomic import atomic_write_text
    from graphreg.apps.bench.markdown import markdown_summary, replace_block

    try:
        document = json.loads(json_file.read_text(encoding="utf-8"))
        block = markdown_summary(document)
        if into is None:
            typer.echo(block)
            return
        atomic_write_text(into, replace_block(into.read_text(encoding="utf-8"), block))
    except (OSError, ValueError) as error:
        fail(f"{json_file if into is None else into}: {error}")
    except GraphregError as error:
        fail(str(error))
    typer.echo(f"updated {into}")


if __name__ == "__main__":
    bench_app()
