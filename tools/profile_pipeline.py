"""Profile the default graphreg pipeline on one benchmark pair: seconds per stage and top ops.

Usage::

    OMP_NUM_THREADS=1 python tools/profile_pipeline.py /work/bench_data/mm2/pair_01 \
        --repeats 3 --threads 1 --out profile.txt

What it prints (and writes to ``--out``):

* per stage: the median (and min, max) over ``--repeats`` runs of :attr:`Registration.timings`,
  plus ``field_resample`` — resampling the working-grid field onto the fixed image's grid
  (:attr:`Registration.field`, computed lazily and not part of ``timings``) — and ``end_to_end``
  (``register`` + ``field``), and ``end_to_end_cpu``, the CPU seconds of this process over the same span
  (less sensitive than wall time to other jobs sharing the machine);
* the TRE of the pair's landmarks after registration (mm), to check that a speed-up did not cost
  accuracy;
* with ``--profiler`` (default on), one more run under ``torch.profiler``: the ops with the most
  *self* CPU time (time inside the op, not its children), which is where the seconds go.

Convention:
    Times are wall-clock seconds (``time.perf_counter``) with ``torch.set_num_threads(--threads)``;
    set ``OMP_NUM_THREADS`` to the same value so that libraries outside torch agree.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence


def run_once(pair, method: str = "corrfield", config=None) -> tuple[dict, object]:
    """One registration of ``pair`` (:class:`~graphreg.datasets.pairs.PairData`) -> (stage seconds, result).

    The stage seconds are :attr:`Registration.timings` plus ``field_resample``, ``end_to_end`` and
    ``end_to_end_cpu`` (``time.process_time``).
    """
    import torch

    from graphreg.api import register

    start, cpu_start = time.perf_counter(), time.process_time()
    registration = register(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask,
                            method=method, config=config, device="cpu", threads=torch.get_num_threads())
    before_field = time.perf_counter()
    registration.field  # noqa: B018 - cached property: resample onto the fixed grid now, timed
    end = time.perf_counter()
    timings = {str(k): float(v) for k, v in registration.timings.items()}
    timings["field_resample"] = end - before_field
    timings["end_to_end"] = end - start
    timings["end_to_end_cpu"] = time.process_time() - cpu_start
    return timings, registration


def tre_mm(registration, pair) -> dict:
    """TRE summary (mm) of the pair's landmarks mapped by ``registration``."""
    from graphreg.ops.metrics import landmark_errors, summarize_errors

    mapped = registration.transform_points(pair.fixed_landmarks_mm)
    return summarize_errors(landmark_errors(mapped, pair.moving_landmarks_mm))


def stage_table(runs: Sequence[dict]) -> str:
    """Median / min / max seconds per stage over ``runs`` (dicts of stage -> seconds)."""
    stages = list(dict.fromkeys(stage for run in runs for stage in run))
    lines = [f"{'stage':<16} {'median s':>9} {'min s':>8} {'max s':>8}", "-" * 44]
    for stage in stages:
        values = [run[stage] for run in runs if stage in run]
        lines.append(f"{stage:<16} {statistics.median(values):9.3f} {min(values):8.3f} {max(values):8.3f}")
    return "\n".join(lines)


def op_table(pair, method: str, config, rows: int) -> str:
    """``torch.profiler`` table of the ``rows`` ops with the most self CPU time over one run."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_once(pair, method, config)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pair", type=Path, help="a pair folder (graphreg.datasets.pairs.read_pair)")
    parser.add_argument("--method", default="corrfield", help="graphreg.register method (default corrfield)")
    parser.add_argument("--config", default=None, help="YAML config overrides")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the table shows their median")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--rows", type=int, default=25, help="ops listed by the profiler table")
    parser.add_argument("--profiler", action=argparse.BooleanOptionalAction, default=True,
                        help="add one torch.profiler run and its top-ops table")
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats: expected >= 1, got {args.repeats}")

    import torch

    from graphreg.datasets.pairs import read_pair

    torch.set_num_threads(args.threads)
    pair = read_pair(args.pair)
    report = [f"pair {args.pair} ({pair.fixed.grid.describe()}), method {args.method}, "
              f"torch {torch.__version__}, {args.threads} thread(s), {args.repeats} run(s)"]
    runs, tre = [], None
    for index in range(args.repeats):
        timings, registration = run_once(pair, args.method, args.config)
        runs.append(timings)
        tre = tre_mm(registration, pair)
        print(f"run {index + 1}: end to end {timings['end_to_end']:.2f} s, TRE {tre['mean_mm']:.3f} mm",
              file=sys.stderr)
    report += ["", "seconds per stage:", stage_table(runs), "",
               f"TRE mm: mean {tre['mean_mm']:.3f}, p75 {tre['p75_mm']:.3f}, max {tre['max_mm']:.3f} "
               f"(before registration {pair.meta.get('initial_tre_mm', {}).get('mean_mm', float('nan')):.3f})"]
    if args.profiler:
        report += ["", "top ops by self CPU time (torch.profiler, one run):",
                   op_table(pair, args.method, args.config, args.rows)]
    text = "\n".join(report)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
