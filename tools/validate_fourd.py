"""Validate ``graphreg 4d`` on a synthetic breathing cycle with exact truth (docs/fourd.md).

The POPI end-inhale phase (``../shared/data/popi_light/phase_00.nii.gz``), cropped to the lungs
plus 20 mm, is the reference; :func:`graphreg.datasets.breathing4d.breathing_sequence` makes the
other phases (mass-preserving density, noise, hysteresis). Every phase is registered to phase 0
cold and warm-started (:func:`graphreg.analysis.fourd.register_4d`); reported per phase: the trajectory
error ``|T_i(p) - p_i|`` over the landmarks; over the cycle: wall time, the jitter of the error
(RMS of its cyclic second difference over the phases: how unsmooth it is in time) and the error
of the hysteresis (the vector between the positions at ``t`` and ``1 - t``, which share the
diaphragm's amplitude and differ only by the chest's lag).

Usage::

    python tools/validate_fourd.py [--phases 8] [--out /work/bench_data_outputs/fourd] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from graphreg.datasets.benchmark import low_resolution
from graphreg.datasets.breathing4d import breathing_sequence
from graphreg.ops.lungmask import lung_mask
from graphreg.analysis.fourd import register_4d
from graphreg.io.images import read_image

SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "popi_light" / "phase_00.nii.gz"


def _summary(positions: np.ndarray, truth: np.ndarray) -> dict:
    error = positions - truth  # (P, N, 3)
    length = np.linalg.norm(error, axis=2)
    second = np.roll(error, -1, axis=1) - 2 * error + np.roll(error, 1, axis=1)
    count = truth.shape[1]
    pairs = [(i, count - i) for i in range(1, (count + 1) // 2) if i != count - i]
    loop_true = np.stack([truth[:, i] - truth[:, j] for i, j in pairs], axis=1)
    loop_est = np.stack([positions[:, i] - positions[:, j] for i, j in pairs], axis=1)
    return {"error_mean_mm_per_phase": length.mean(axis=0).round(3).tolist(),
            "error_p95_mm_per_phase": np.percentile(length, 95, axis=0).round(3).tolist(),
            "error_mean_mm": float(length[:, 1:].mean()),
            "jitter_rms_mm": float(np.sqrt((np.linalg.norm(second, axis=2) ** 2).mean())),
            "hysteresis_true_mean_mm": float(np.linalg.norm(loop_true, axis=2).mean()),
            "hysteresis_error_mean_mm": float(np.linalg.norm(loop_est - loop_true, axis=2).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", type=int, default=8)
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/work/bench_data_outputs/fourd"))
    parser.add_argument("--modes", nargs="+", choices=("cold", "warm"), default=["cold", "warm"])
    args = parser.parse_args()
    args.modes = [mode == "warm" for mode in args.modes]
    ct = read_image(SOURCE)
    ct, lungs = low_resolution(ct, lung_mask(ct), 4.0, 20.0)
    sequence = breathing_sequence(ct, lungs, np.random.default_rng(args.seed), count=args.phases)
    truth = sequence.positions_mm
    report = {"grid": ct.grid.describe(), "phases": args.phases, "landmarks": len(sequence.points_mm),
              "jacobian_min": sequence.jacobian_min,
              "true_peak_to_peak_mm": float(np.ptp(truth, axis=1).max(axis=1).mean())}
    results = {}
    for warm in args.modes:
        tick = time.perf_counter()
        result = register_4d(sequence.phases, 0, sequence.lungs, warm=warm, threads=args.threads, progress=print)
        label = "warm" if warm else "cold"
        results[label] = result.trajectories(sequence.points_mm)
        report[label] = {"seconds": time.perf_counter() - tick, **_summary(results[label], truth),
                         "status": {name: result.registrations[i].status for i, name in enumerate(result.names)
                                    if i in result.registrations}}
        print(label, json.dumps(report[label]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"validation_{'_'.join(results)}.json").write_text(json.dumps(report, indent=2))
    _figure(truth, results, args.out / f"validation_trajectories_{'_'.join(results)}.png")
    print(json.dumps(report, indent=2))


def _figure(truth: np.ndarray, results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4.2), layout="constrained")
    panels = figure.subplots(1, 3)
    chosen = np.argsort(-np.ptp(truth[:, :, 2], axis=1))[:3]  # the three points that move most
    phases = np.arange(truth.shape[1] + 1)
    styles = {"truth": dict(linewidth=2.5, alpha=0.5), "cold": dict(linestyle="--", marker="o"),
              "warm": dict(linestyle=":", marker="s")}
    for axis, axes in enumerate(panels):
        for colour, point in zip(("C0", "C1", "C2"), chosen):
            for label, data in (("truth", truth), *results.items()):
                shift = data[point, :, axis] - data[point, 0, axis]
                axes.plot(phases, np.append(shift, shift[0]), label=f"{label} p{point}", markersize=3, color=colour,
                          **styles[label])
        axes.set_title(f"d{'xyz'[axis]} (mm) over the cycle (phase {truth.shape[1]} = 0)")
        axes.set_xlabel("phase")
    panels[0].legend(fontsize=6, ncol=3)
    figure.savefig(path, dpi=100, facecolor="white")


if __name__ == "__main__":
    main()
