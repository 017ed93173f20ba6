"""Robustness sweep: the default method on benchmark pairs whose moving image is perturbed.

Usage::

    python tools/robustness_sweep.py --pairs /work/bench_data/mm2 [--max-pairs 3] [--quick]
        [--config YAML] [--json sweep.json] [--device cpu]

For every pair folder (:func:`graphreg.datasets.pairs.read_pair`) and every perturbation of the
moving image (:func:`perturbations`) it runs ``graphreg.api.register(method="corrfield")`` and
reports the landmark TRE (mean, 75th percentile) before and after, the folding of the field
inside the fixed lungs, and failures. A case fails when the registration raises, when the field
or the mapped landmarks hold NaN/Inf, or when more than :data:`MAX_FOLDING_PERCENT` % of the lung
voxels fold (Jacobian determinant <= 0). The exit code is 1 when any case fails.

Perturbations (each applied to the moving image only; the ground truth follows):

- ``noise``: additive Gaussian noise of ``level`` HU standard deviation (seeded).
- ``intensity``: ``a * HU + b`` (a calibration difference between scanners).
- ``fov``: the moving image and mask lose the slices below ``level`` of the moving lungs'
  cranio-caudal extent (an exhale scan that misses the lung base). The TRE is also reported
  over the landmarks whose moving position is still inside the cropped image (``tre_covered``).
- ``translation``: the moving image, mask and landmarks are moved by ``level`` mm along
  :data:`TRANSLATION_DIRECTION` (world x, y, z), i.e. its origin shifts by that vector.

Convention:
    Landmarks world mm ``(x, y, z)``; TRE in mm; folding in percent of the fixed lung voxels.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from graphreg.datasets.pairs import PairData, read_pair
from graphreg.errors import GraphregError
from graphreg.core.geometry import Grid
from graphreg.ops.metrics import landmark_errors, summarize_errors
from graphreg.core.volume import Volume

#: a case with more folding than this (percent of fixed lung voxels) fails
MAX_FOLDING_PERCENT = 1.0
#: unit direction (world x, y, z) of the large initial translations
TRANSLATION_DIRECTION = np.array([1.0, 1.0, 1.0]) / math.sqrt(3.0)


@dataclass(frozen=True)
class Perturbation:
    """One change of the moving image: ``kind`` in ``none | noise | intensity | fov | translation``.

    ``level``: noise sigma (HU), removed fraction of the lung extent (fov), translation (mm); for
    ``intensity`` the pair ``(scale, shift_hu)``.
    """

    kind: str
    level: object = None

    @property
    def label(self) -> str:
        if self.kind == "none":
            return "none"
        if self.kind == "noise":
            return f"noise {self.level:g} HU"
        if self.kind == "intensity":
            scale, shift = self.level
            return f"intensity x{scale:g} {shift:+g} HU"
        if self.kind == "fov":
            return f"fov -{100 * self.level:.0f}% base"
        return f"translation {self.level:g} mm"


def perturbations(quick: bool = False) -> list[Perturbation]:
    """The sweep: every kind at several levels, or (``quick``) each kind once at a hard level."""
    if quick:
        return [Perturbation("noise", 60.0), Perturbation("intensity", (1.2, 100.0)),
                Perturbation("fov", 0.25), Perturbation("translation", 40.0)]
    return [Perturbation("none"),
            Perturbation("noise", 20.0), Perturbation("noise", 50.0), Perturbation("noise", 100.0),
            Perturbation("intensity", (1.0, 150.0)), Perturbation("intensity", (1.25, -100.0)),
            Perturbation("intensity", (0.8, 50.0)),
            Perturbation("fov", 0.2), Perturbation("fov", 0.3),
            Perturbation("translation", 10.0), Perturbation("translation", 20.0),
            Perturbation("translation", 40.0)]


def _cranio_caudal_axis(grid: Grid) -> int:
    """Array axis (0 = z, 1 = y, 2 = x) whose direction is closest to world z."""
    direction = np.asarray(grid.direction, dtype=np.float64).reshape(3, 3)  # columns: index x, y, z
    return 2 - int(np.argmax(np.abs(direction[2])))


def crop_lung_base(pair: PairData, fraction: float) -> PairData:
    """``pair`` with the moving image and mask cut above the lowest ``fraction`` of the moving lungs.

    The lung base is the inferior end (lowest world z, ITK LPS). Landmarks are unchanged (the
    ones in the removed part simply have no image content any more).
    """
    if not 0.0 < fraction < 1.0:
        raise GraphregError(f"fraction: expected a number in (0, 1), got {fraction!r}")
    grid = pair.moving.grid
    axis = _cranio_caudal_axis(grid)
    lungs = np.flatnonzero((pair.moving_mask.array > 0).any(axis=tuple(a for a in range(3) if a != axis)))
    first, last = int(lungs[0]), int(lungs[-1])
    index = np.zeros((2, 3))
    index[:, axis] = (first, last)
    base_is_first = grid.voxel_to_world(index)[0, 2] < grid.voxel_to_world(index)[1, 2]
    removed = int(round(fraction * (last - first + 1)))
    start, stop = [0, 0, 0], list(grid.shape)
    if base_is_first:
        start[axis] = first + removed
    else:
        stop[axis] = last + 1 - removed
    return replace(pair, moving=pair.moving.cropped(start, stop),
                   moving_mask=pair.moving_mask.cropped(start, stop))


def translate_moving(pair: PairData, distance_mm: float) -> PairData:
    """``pair`` with the moving image, mask and landmarks moved by ``distance_mm`` (world)."""
    shift = distance_mm * TRANSLATION_DIRECTION

    def moved(volume: Volume) -> Volume:
        g = volume.grid
        return Volume(volume.array, Grid(g.shape, g.spacing, tuple(np.asarray(g.origin) + shift), g.direction))

    return replace(pair, moving=moved(pair.moving), moving_mask=moved(pair.moving_mask),
                   moving_landmarks_mm=pair.moving_landmarks_mm + shift)


def apply_perturbation(pair: PairData, perturbation: Perturbation, seed: int = 0) -> PairData:
    """A copy of ``pair`` with ``perturbation`` applied to its moving side (see the module doc)."""
    kind, level = perturbation.kind, perturbation.level
    if kind == "none":
        return pair
    if kind == "noise":
        rng = np.random.default_rng(seed)
        noisy = pair.moving.array.astype(np.float32) + rng.normal(0.0, level, pair.moving.array.shape).astype(np.float32)
        return replace(pair, moving=Volume(noisy, pair.moving.grid))
    if kind == "intensity":
        scale, shift = level
        return replace(pair, moving=Volume(pair.moving.array.astype(np.float32) * scale + shift, pair.moving.grid))
    if kind == "fov":
        return crop_lung_base(pair, level)
    if kind == "translation":
        return translate_moving(pair, level)
    raise GraphregError(f"perturbation: expected kind none, noise, intensity, fov or translation, got {kind!r}")


def _inside(grid: Grid, points_mm: np.ndarray) -> np.ndarray:
    index = grid.world_to_voxel(points_mm)
    return np.all((index >= -0.5) & (index < np.asarray(grid.shape) - 0.5), axis=1)


def run_case(pair: PairData, perturbation: Perturbation, config=None, device: str = "cpu",
             seed: int = 0) -> dict:
    """Register one perturbed pair with the default method; never raises (failures are reported).

    Returns:
        a row: ``pair``, ``perturbation``, ``tre_before_mean_mm``, ``tre_mean_mm``,
        ``tre_p75_mm``, ``tre_covered_mean_mm`` (fov only), ``folding_percent``,
        ``std_log_jacobian``, ``seconds``, ``ok`` and ``failure`` (None or the reason).
    """
    from graphreg.api import register

    row = {"pair": pair.name, "perturbation": perturbation.label, "kind": perturbation.kind, "ok": False,
           "failure": None}
    start = time.perf_counter()
    try:
        case = apply_perturbation(pair, perturbation, seed)
        target = case.moving_landmarks_mm
        row["tre_before_mean_mm"] = float(landmark_errors(case.fixed_landmarks_mm, target).mean())
        result = register(case.fixed, case.moving, case.fixed_mask, case.moving_mask, method="corrfield",
                          config=config, device=device)
        if not bool(np.isfinite(result.working_field.displacement.detach().cpu().numpy()).all()):
            raise FloatingPointError("the displacement field holds NaN/Inf")
        mapped = result.transform_points(case.fixed_landmarks_mm)
        if not np.isfinite(mapped).all():
            raise FloatingPointError("the mapped landmarks hold NaN/Inf")
        errors = landmark_errors(mapped, target)
        summary = summarize_errors(errors)
        row.update(tre_mean_mm=summary["mean_mm"], tre_p75_mm=summary["p75_mm"])
        if perturbation.kind == "fov":
            covered = _inside(case.moving.grid, target)
            row["covered_fraction"] = float(covered.mean())
            row["tre_covered_mean_mm"] = float(errors[covered].mean()) if covered.any() else None
        jacobian = result.jacobian_stats(case.fixed_mask)
        row.update(folding_percent=jacobian["folding_percent"], std_log_jacobian=jacobian["std_log_jacobian"])
        if not math.isfinite(jacobian["std_log_jacobian"]):
            raise FloatingPointError("the Jacobian statistics are not finite")
        if jacobian["folding_percent"] >= MAX_FOLDING_PERCENT:
            row["failure"] = f"folding {jacobian['folding_percent']:.2f} % >= {MAX_FOLDING_PERCENT} %"
        else:
            row["ok"] = True
    except Exception as error:  # the sweep reports every failure instead of stopping
        row["failure"] = f"{type(error).__name__}: {error}"
        row["traceback"] = traceback.format_exc(limit=6)
    row["seconds"] = time.perf_counter() - start
    return row


def pair_folders(paths: Sequence[str | Path], max_pairs: Optional[int] = None) -> list[Path]:
    """Pair folders from folders that are pairs themselves or hold ``pair_*`` folders."""
    folders: list[Path] = []
    for path in map(Path, paths):
        if (path / "fixed.nii.gz").is_file():
            folders.append(path)
        else:
            folders.extend(sorted(p for p in path.iterdir() if p.is_dir() and (p / "fixed.nii.gz").is_file()))
    if not folders:
        raise GraphregError(f"--pairs: expected pair folders (see graphreg.datasets.pairs), found none in {list(paths)}")
    return folders[:max_pairs] if max_pairs else folders


def sweep(folders: Sequence[Path], cases: Sequence[Perturbation], config=None, device: str = "cpu",
          seed: int = 0, echo=print) -> list[dict]:
    """:func:`run_case` for every pair folder and perturbation; ``echo`` gets one line per case."""
    rows = []
    for folder in folders:
        pair = read_pair(folder)
        for perturbation in cases:
            row = run_case(pair, perturbation, config, device, seed)
            rows.append(row)
            if echo:
                echo(format_row(row))
    return rows


def _number(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


HEADER = (f"{'pair':<10} {'perturbation':<24} {'TRE0':>6} {'TRE':>6} {'p75':>6} {'TREcov':>6} "
          f"{'fold%':>7} {'sdlogJ':>6} {'s':>6}  status")


def format_row(row: dict) -> str:
    """One table line of :func:`run_case`'s row."""
    status = "ok" if row["ok"] else f"FAIL ({row['failure']})"
    return (f"{row['pair']:<10} {row['perturbation']:<24} {_number(row.get('tre_before_mean_mm')):>6} "
            f"{_number(row.get('tre_mean_mm')):>6} {_number(row.get('tre_p75_mm')):>6} "
            f"{_number(row.get('tre_covered_mean_mm')):>6} {_number(row.get('folding_percent'), 3):>7} "
            f"{_number(row.get('std_log_jacobian'), 3):>6} {row['seconds']:>6.1f}  {status}")


def format_table(rows: Sequence[dict]) -> str:
    """The sweep as a plain-text table with a per-perturbation summary."""
    lines = [HEADER] + [format_row(r) for r in rows]
    lines.append("")
    lines.append(f"{'perturbation':<24} {'cases':>5} {'fail':>4} {'TRE0':>6} {'TRE':>6} {'p75':>6} {'max fold%':>9}")
    for label in dict.fromkeys(r["perturbation"] for r in rows):
        group = [r for r in rows if r["perturbation"] == label]
        done = [r for r in group if r.get("tre_mean_mm") is not None]

        def mean(key):
            values = [r[key] for r in done if r.get(key) is not None]
            return float(np.mean(values)) if values else None

        folds = [r["folding_percent"] for r in done if r.get("folding_percent") is not None]
        lines.append(f"{label:<24} {len(group):>5} {sum(not r['ok'] for r in group):>4} "
                     f"{_number(mean('tre_before_mean_mm')):>6} {_number(mean('tre_mean_mm')):>6} "
                     f"{_number(mean('tre_p75_mm')):>6} {_number(max(folds) if folds else None, 3):>9}")
    failed = sum(not r["ok"] for r in rows)
    lines.append(f"\n{len(rows)} cases, {failed} failed")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", required=True, help="pair folders or folders of pair_* folders")
    parser.add_argument("--max-pairs", type=int, default=None, help="use the first N pairs")
    parser.add_argument("--quick", action="store_true", help="each perturbation kind once, at a hard level")
    parser.add_argument("--config", default=None, help="YAML config overriding the defaults (default: none)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    try:
        folders = pair_folders(args.pairs, args.max_pairs)
    except GraphregError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(HEADER, flush=True)
    rows = sweep(folders, perturbations(args.quick), args.config, args.device, args.seed,
                 echo=lambda line: print(line, flush=True))
    print()
    print(format_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps({"pairs": [str(f) for f in folders], "config": args.config,
                                         "max_folding_percent": MAX_FOLDING_PERCENT, "rows": rows}, indent=2))
    return 1 if any(not r["ok"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
