"""The synthetic benchmarks made from the POPI CT with DIR-Lab motion: "realistic" and "easy".

The **realistic** set (:func:`make_realistic_benchmark`, the default of ``graphreg bench make``):
pair ``pair_NN`` is benchmark anatomy ``NN - 1`` (:class:`~graphreg.datasets.anatomy.Anatomy`)
breathing the motion of DIR-Lab set ``REALISTIC_SETS[NN - 1]``, both images acquired on their own
grids with their own noise (:mod:`graphreg.datasets.acquisition`).

The **easy** set, described below, warps the one CT; both images share grid and texture.

Pair ``pair_NN`` moves the end-inhale POPI CT (phase 00 of the POPI model, Vandemeulebroucke et
al., ICCR 2007) with the real end-inhale -> end-exhale landmark motion of DIR-Lab 4DCT case
``NN`` (Castillo et al., Phys Med Biol 2009), amplitude 1, no jitter; see
:mod:`graphreg.datasets.breathing`. Every pair folder follows :mod:`graphreg.datasets.pairs`.

Convention:
    ``spacing_mm=None`` keeps the CT's native grid (512 x 512 x 141, 0.98 x 0.98 x 2 mm);
    a ``spacing_mm`` first crops the CT to the lungs plus :data:`LOW_RES_MARGIN_MM` and resamples
    it to that isotropic spacing. :data:`STANDARD_SPACING_MM` (2 mm, ground truth on a 4 mm
    control grid) is the set the published peer timings refer to; ``low_res=True`` is shorthand
    for :data:`LOW_RES_SPACING_MM` with the ground truth on an 8 mm control grid (about 16 MB for
    the whole set, for tests and quick experiments). Pair ``NN``
    draws its randomness (noise, landmark start) from ``numpy.random.default_rng([seed, NN])``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from graphreg.io.images import read_image
from graphreg.core.volume import Volume, bounding_box
from graphreg.datasets.acquisition import Acquisition, SourceCT, realistic_pair
from graphreg.datasets.anatomy import BENCHMARK_ANATOMIES, MOTION_SETS, Anatomy, MotionPattern
from graphreg.datasets.breathing import dirlab_motion, synthesize_pair
from graphreg.ops.lungmask import lung_mask
from graphreg.datasets.pairs import write_pair
from graphreg.datasets.paths import POPI_CT

#: DIR-Lab 4DCT cases, one pair each.
CASES = tuple(range(1, 11))
#: Isotropic spacing (mm) of the low-resolution set.
LOW_RES_SPACING_MM = 4.0
#: Isotropic spacing (mm) of the standard lung-cropped set.
STANDARD_SPACING_MM = 2.0
#: Control-grid spacing (mm) of the ground-truth field of the native set (finest used).
CONTROL_MM = 4.0
#: Margin (mm) around the lungs kept in the low-resolution set.
LOW_RES_MARGIN_MM = 20.0
#: Motion set of each realistic pair, in pair order: COPD first, then the ten 4DCT cases.
REALISTIC_SETS = ("copd1",) + tuple(s for s in MOTION_SETS if s != "copd1")
#: Seed component of a realistic pair's motion placement.
_PATTERN_STREAM = 313


def low_resolution(ct: Volume, lung: Volume, spacing_mm: float = LOW_RES_SPACING_MM,
                   margin_mm: float = LOW_RES_MARGIN_MM) -> tuple[Volume, Volume]:
    """``ct`` cropped to ``lung`` plus ``margin_mm`` and resampled to ``spacing_mm`` isotropic.

    Returns:
        The int16 CT and its uint8 lung mask on the new grid (mask resampled linearly and
        thresholded at 0.5).
    """
    margin = np.ceil(margin_mm / np.array(ct.grid.spacing_zyx)).astype(int)
    start, stop = bounding_box(lung.array, margin=margin)
    grid = ct.grid.cropped(start, stop).with_spacing((spacing_mm,) * 3)
    small = ct.resampled(grid, "linear", default=-1024.0)
    small = Volume(np.round(small.array).astype(np.int16), grid)
    mask = lung.resampled(grid, "linear", 0.0)
    return small, Volume((mask.array >= 0.5).astype(np.uint8), grid)


def load_source(ct_path: str | os.PathLike = POPI_CT,
                spacing_mm: Optional[float] = None) -> tuple[Volume, Volume]:
    """The fixed CT (int16 HU) and its lung mask (:func:`lung_mask`), optionally cropped to the
    lungs and resampled to ``spacing_mm`` isotropic (see :func:`low_resolution`)."""
    ct = read_image(ct_path)
    ct = Volume(np.asarray(ct.array).astype(np.int16), ct.grid)
    lung = lung_mask(ct)
    if spacing_mm is not None:
        return low_resolution(ct, lung, spacing_mm)
    return ct, lung


def control_spacing(spacing_mm: Optional[float]) -> float:
    """Ground-truth control-grid spacing (mm) for a set made at ``spacing_mm`` (None: native)."""
    return CONTROL_MM if spacing_mm is None else max(CONTROL_MM, 2.0 * float(spacing_mm))


def make_pair(case: int, ct: Volume, lung: Volume, seed: int = 0, amplitude: float = 1.0,
              name: Optional[str] = None, control_mm: float = CONTROL_MM):
    """One benchmark-style pair: DIR-Lab ``case`` motion applied to ``ct``.

    Returns:
        :class:`~graphreg.datasets.pairs.PairData`; ``meta`` records the source, amplitude and
        seed.
    """
    name = name or f"pair_{case:02d}"
    motion = dirlab_motion(case, ct, lung, amplitude=amplitude, control_mm=control_mm)
    meta = {"source": f"dirlab-4dct-case{case}", "motion": "dirlab", "dirlab_case": int(case),
            "amplitude": float(amplitude), "seed": int(seed), "fixed_ct": POPI_CT.name}
    return synthesize_pair(ct, motion, lung, np.random.default_rng([int(seed), int(case)]),
                           name=name, meta=meta)


def make_benchmark(out_dir: str | os.PathLike, low_res: bool = False, seed: int = 0,
                   cases=CASES, ct_path: str | os.PathLike = POPI_CT, progress=None,
                   spacing_mm: Optional[float] = None) -> list[dict]:
    """Write the benchmark pairs ``pair_01`` .. ``pair_10`` into ``out_dir``.

    Args:
        out_dir: output folder (created); one sub-folder per pair.
        low_res: make the small low-resolution set (see module docstring); shorthand for
            ``spacing_mm=LOW_RES_SPACING_MM``.
        seed: base seed of the pairs' randomness.
        cases: DIR-Lab 4DCT cases to use (default all ten).
        ct_path: the fixed CT.
        progress: optional callable ``progress(row)`` called after each pair.
        spacing_mm: isotropic spacing (mm) of a lung-cropped set; None keeps the native grid.

    Returns:
        One dict per pair: ``name``, ``case``, initial TRE ``tre_mean_mm``, ``tre_p75_mm``,
        ``tre_max_mm``, ``jacobian_min``, ``inverse_residual_mm`` (max in the moving lungs),
        ``seconds``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if low_res:
        spacing_mm = LOW_RES_SPACING_MM
    ct, lung = load_source(ct_path, spacing_mm)
    rows = []
    for case in cases:
        start = time.perf_counter()
        pair = make_pair(case, ct, lung, seed, control_mm=control_spacing(spacing_mm))
        pair.meta["low_res"] = spacing_mm is not None
        pair.meta["spacing_mm"] = spacing_mm
        write_pair(pair, out / pair.name)
        row = _pair_row(pair, int(case), pair.meta["jacobian_min"], start)
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def _pair_row(pair, case, jacobian_min: float, started: float) -> dict:
    """The summary row of a written pair (see :func:`make_benchmark`)."""
    tre = pair.meta["initial_tre_mm"]
    return {"name": pair.name, "case": case, "tre_mean_mm": tre["mean_mm"], "tre_p75_mm": tre["p75_mm"],
            "tre_max_mm": tre["max_mm"], "jacobian_min": jacobian_min,
            "inverse_residual_mm": pair.meta["inverse_residual_mm"]["lung_max"],
            "seconds": time.perf_counter() - started}


def make_realistic_benchmark(out_dir: str | os.PathLike, spacing_mm: float = STANDARD_SPACING_MM,
                             count: int = len(REALISTIC_SETS), seed: int = 0,
                             ct_path: str | os.PathLike = POPI_CT, progress=None,
                             source: Optional[SourceCT] = None, landmarks: int = 300) -> list[dict]:
    """Write the realistic pairs ``pair_01`` .. ``pair_{count}`` into ``out_dir``.

    Pair ``k`` (1-based): benchmark anatomy ``k - 1``, motion of ``REALISTIC_SETS[(k - 1) % 11]``
    placed by ``default_rng([seed, 313, k])``, acquired at ``spacing_mm`` isotropic (moving slices
    1.25 times thicker) with seed ``[seed, k]``, with ``landmarks`` landmark pairs. ``source``
    (default: :meth:`SourceCT.load` of ``ct_path``) is the denoised source CT.

    Returns:
        One dict per pair, as :func:`make_benchmark` (``case`` is the motion set's name).

    Raises:
        GraphregError: ``count`` exceeds the benchmark anatomy range.
    """
    from graphreg.errors import GraphregError

    if not 1 <= count <= len(BENCHMARK_ANATOMIES):
        raise GraphregError(f"count: expected 1..{len(BENCHMARK_ANATOMIES)} pairs, got {count}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = source if source is not None else SourceCT.load(ct_path)
    acquisition = Acquisition(spacing_mm=(float(spacing_mm),) * 3)
    rows = []
    for k in range(1, count + 1):
        start = time.perf_counter()
        set_name = REALISTIC_SETS[(k - 1) % len(REALISTIC_SETS)]
        anatomy = Anatomy.draw(BENCHMARK_ANATOMIES.start + k - 1, "benchmark")
        pattern = MotionPattern.draw(set_name, np.random.default_rng([int(seed), _PATTERN_STREAM, k]))
        pair = realistic_pair(source, anatomy, pattern, [int(seed), k], acquisition, landmarks, f"pair_{k:02d}",
                              meta={"source": f"dirlab-{set_name}", "motion": "dirlab-sliding",
                                    "fixed_ct": Path(ct_path).name, "spacing_mm": float(spacing_mm)})
        write_pair(pair, out / pair.name)
        row = _pair_row(pair, set_name, pair.meta["jacobian_lung_min"], start)
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`make_benchmark` rows."""
    lines = [f"{'pair':<8} {'case':>6} {'TRE mean':>9} {'p75':>7} {'max':>7} {'min J':>6} "
             f"{'inv res':>9} {'time s':>7}"]
    for r in rows:
        lines.append(f"{r['name']:<8} {r['case']!s:>6} {r['tre_mean_mm']:>9.2f} {r['tre_p75_mm']:>7.2f} "
                     f"{r['tre_max_mm']:>7.2f} {r['jacobian_min']:>6.3f} "
                     f"{r['inverse_residual_mm']:>9.1e} {r['seconds']:>7.1f}")
    return "\n".join(lines)


def make_benchmark_command(out: str | os.PathLike, low_res: bool = False, seed: int = 0,
                           spacing_mm: Optional[float] = None, kind: str = "easy",
                           count: Optional[int] = None) -> list[dict]:
    """Entry point for ``graphreg bench make [--out DIR] [--set realistic|easy] [--low-res | --spacing MM]
    [--seed N] [--count N]``.

    ``kind="realistic"`` makes :func:`make_realistic_benchmark` pairs (``spacing_mm`` default
    :data:`STANDARD_SPACING_MM`, ``low_res`` :data:`LOW_RES_SPACING_MM`; ``count`` default 11);
    ``"easy"`` the warped-CT pairs of :func:`make_benchmark`. Shows a tqdm progress bar, prints one
    line per pair (initial TRE in mm) and the table.
    """
    from tqdm.auto import tqdm

    total = len(CASES) if kind == "easy" else (count or len(REALISTIC_SETS))
    bar = tqdm(total=total, desc=f"{kind} benchmark pairs", unit="pair")

    def report(row: dict) -> None:
        bar.update(1)
        bar.write(f"{row['name']}: DIR-Lab {row['case']}, initial TRE {row['tre_mean_mm']:.2f} mm "
                  f"(p75 {row['tre_p75_mm']:.2f}, max {row['tre_max_mm']:.2f}), "
                  f"min J {row['jacobian_min']:.3f}, {row['seconds']:.0f} s")

    start = time.perf_counter()
    try:
        if kind == "easy":
            rows = make_benchmark(out, low_res=low_res, seed=seed, progress=report, spacing_mm=spacing_mm)
        else:
            spacing = LOW_RES_SPACING_MM if low_res else (spacing_mm or STANDARD_SPACING_MM)
            rows = make_realistic_benchmark(out, spacing, total, seed=seed, progress=report)
    finally:
        bar.close()
    print(format_table(rows))
    print(f"{len(rows)} pairs written to {out} in {time.perf_counter() - start:.0f} s")
    return rows
