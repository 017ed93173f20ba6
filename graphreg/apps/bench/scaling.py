"""Scaling curves of the keypoint pipeline: time and peak memory against problem size.

Four curves, each varying one setting of the default ``corrfield`` pipeline on one pair:

=================  ====================================  ======================================
curve              varied                                x axis of the fit
=================  ====================================  ======================================
``keypoints``      ``keypoints.num_points`` (500-8000)   keypoints actually used ``N``
``search_radius``  radius of the first search level      candidate displacements ``L``
``spacing``        working spacing (1.0-2.5 mm)          working-grid voxels ``V``
``image_size``     central crop of the fixed image       working-grid voxels ``V``
=================  ====================================  ======================================

Every configuration runs in a fresh ``spawn``-ed process (:mod:`multiprocessing`), so its peak
memory is that process's own ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (MiB): ``peak_rss_mb``
over the whole run, ``baseline_rss_mb`` after imports and reading the pair, and
``delta_rss_mb`` = their difference, the memory the registration itself added.

For every stage the curve names, the expected complexity is stated as an exponent range
``(low, high)`` of ``seconds ~ x ** p`` and compared with the least-squares slope of
``log(seconds)`` against ``log(x)`` (``consistent`` when the slope lies within the range widened
by :data:`SLOPE_TOLERANCE`; small problems carry fixed overheads, so measured slopes tend to fall
below the asymptotic exponent).

Convention:
    Seconds are wall-clock (``time.perf_counter``) with ``torch.set_num_threads(threads)`` in the
    child; stage names are those of :attr:`graphreg.result.registration.Registration.timings` plus
    ``field_resample`` (the working field resampled onto the fixed grid) and ``end_to_end``.
    The sweep uses :data:`BASE_OVERRIDES` (fewer instance-optimisation steps: its time is linear in
    the step count, so the curves keep their shape and the sweep stays short).
"""

from __future__ import annotations

import copy
import datetime
import math
import multiprocessing
import os
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from graphreg.errors import ConfigError, GraphregError

#: Config overrides applied to every configuration of a sweep (merged under the curve's own).
BASE_OVERRIDES: dict = {"instance_opt": {"iterations": 3}}

#: A measured slope counts as consistent within ``[low - tol, high + tol]`` of the expected range.
SLOPE_TOLERANCE = 0.3

_MB = 1024.0


@dataclass(frozen=True)
class StageExpectation:
    """Expected complexity of one stage along a curve: ``seconds ~ x ** p`` with ``p`` in ``[low, high]``."""

    low: float
    high: float
    complexity: str


@dataclass(frozen=True)
class Curve:
    """One scaling curve.

    Attributes:
        name: curve name.
        varied: what is varied (for the report).
        x_key: the measured quantity the fit uses (``n_keypoints``, ``candidates``, ``working_voxels``).
        values: the settings swept.
        configure: ``value -> (config overrides, crop fraction of the fixed image)``.
        stages: stage name -> :class:`StageExpectation`.
        memory: expected complexity of the added memory (text).
        measure: the function of this module run per value (:func:`measure_configuration` or
            :func:`measure_keypoint_stages`).
    """

    name: str
    varied: str
    x_key: str
    values: tuple
    configure: Callable[[float], tuple[dict, float]]
    stages: dict = dataclass_field(default_factory=dict)
    memory: str = ""
    measure: str = "measure_configuration"


#: The keypoint and search-range curves do not need the instance optimisation (it does not depend
#: on either): leaving it out keeps the sweep short.
_NO_INSTANCE_OPT = {"instance_opt": {"enabled": False}}


def _keypoints(value):
    return {"keypoints": {"num_points": int(value)}}, 1.0


def _radius(value):
    return {"levels": [{"radius": int(value), "step": 2.0}, {"radius": 4, "step": 1.0}], **_NO_INSTANCE_OPT}, 1.0


def _spacing(value, crop: float = 0.5):
    return {"preprocess": {"spacing_mm": float(value)}}, crop


def _crop(value):
    return {}, float(value)


LINEAR = StageExpectation(1.0, 1.0, "O(V): a fixed number of filters / samples per voxel")

#: The default curves (12 runs, sized to finish in about ten minutes on one free core for a 2 mm pair).
DEFAULT_CURVES: dict[str, Curve] = {
    "keypoints": Curve(
        "keypoints", "N random lung voxels as keypoints (a 2 mm pair has only ~10^3 Förstner maxima), "
        "first search level + TPS only", "n_keypoints",
        (500, 1000, 2000, 4000, 8000), _keypoints,
        {"search_1": StageExpectation(1.0, 1.0, "O(N L) patch correlation + O(N L^(4/3)) tree BP"),
         "densify": StageExpectation(1.0, 3.0, "TPS: O(N^3) solve + O(N G) evaluation on the coarse grid")},
        "O(N L) cost volume + O(N^2) TPS system", measure="measure_keypoint_stages"),
    "search_radius": Curve(
        "search_radius", "levels[0].radius (step 2 voxels); L = (2 r + 1)^3", "candidates",
        (4, 7, 10), _radius,
        {"search_1": StageExpectation(1.0, 4.0 / 3.0,
                                      "O(N L) patch correlation + O(N L^(4/3)) separable min-convolution BP")},
        "O(N L) cost volume and messages"),
    "spacing": Curve(
        "spacing", "preprocess.spacing_mm (fixed image cropped to its central 50 %)", "working_voxels",
        (1.0, 1.75, 2.5), _spacing,
        {"mind": LINEAR, "keypoints": LINEAR, "instance_opt": LINEAR,
         "search_1": StageExpectation(0.0, 1.0, "O(N L) per keypoint, plus O(V) box sums of the features")},
        "O(V) feature maps (12 channels x 2 images) and fields"),
    "image_size": Curve(
        "image_size", "central crop of the fixed image (fraction per axis)", "working_voxels",
        (0.5, 0.75, 1.0), _crop,
        {"mind": LINEAR, "keypoints": LINEAR, "instance_opt": LINEAR, "field_resample": LINEAR},
        "O(V) feature maps (12 channels x 2 images) and fields"),
}


# ---------------------------------------------------------------------- one configuration
def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def central_crop(volume, fraction: float):
    """The central ``fraction`` (per axis, ``0 < fraction <= 1``) of a :class:`~graphreg.core.volume.Volume`."""
    if not 0 < fraction <= 1:
        raise GraphregError(f"fraction: expected a crop fraction in (0, 1], got {fraction}")
    shape = np.asarray(volume.array.shape)
    size = np.maximum(1, np.round(shape * fraction).astype(int))
    start = (shape - size) // 2
    return volume.cropped(tuple(int(s) for s in start), tuple(int(s) for s in start + size))


def _rss_mb() -> float:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (_MB * _MB) if sys.platform == "darwin" else peak / _MB


def measure_configuration(pair_dir: str, overrides: dict, crop: float = 1.0, threads: int = 1) -> dict:
    """Register one pair with ``overrides`` in *this* process and measure it.

    The fixed image and its mask are cropped to their central ``crop`` fraction (the moving image
    is kept whole). Run it in a fresh process for a clean ``ru_maxrss`` (see :func:`run_sweep`).

    Returns:
        ``timings`` (seconds per stage, ``field_resample``, ``end_to_end`` and ``end_to_end_cpu`` --
        CPU seconds of the process, less sensitive than wall time to other jobs -- included),
        ``n_keypoints``, ``candidates`` (first level), ``working_voxels``, ``working_shape``,
        ``fixed_voxels``, ``peak_rss_mb``, ``baseline_rss_mb``, ``delta_rss_mb``.
    """
    import time

    import torch

    from graphreg.api import register
    from graphreg.core.config import load_config
    from graphreg.datasets.pairs import read_pair

    torch.set_num_threads(threads)
    pair = read_pair(pair_dir)
    fixed, fixed_mask = pair.fixed, pair.fixed_mask
    if crop < 1:
        fixed, fixed_mask = central_crop(fixed, crop), central_crop(fixed_mask, crop)
    config = load_config(overrides)
    baseline = _rss_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    registration = register(fixed, pair.moving, fixed_mask, pair.moving_mask, method="corrfield",
                            config=config, device="cpu", threads=threads)
    resample_start = time.perf_counter()
    registration.field  # noqa: B018 - cached property: the resampling is part of the measurement
    end = time.perf_counter()
    cpu_seconds = time.process_time() - cpu_start
    peak = _rss_mb()
    timings = {str(k): float(v) for k, v in registration.timings.items()}
    timings["field_resample"] = end - resample_start
    timings["end_to_end"] = end - start
    timings["end_to_end_cpu"] = cpu_seconds
    level = config.levels[0]
    working_shape = tuple(int(n) for n in registration.working_field.grid.shape)
    return {
        "timings": timings,
        "n_keypoints": int(registration.extras.get("n_keypoints", 0)),
        "candidates": int((2 * level.radius + 1) ** 3),
        "working_shape": working_shape,
        "working_voxels": int(np.prod(working_shape)),
        "fixed_voxels": int(np.prod(fixed.grid.shape)),
        "peak_rss_mb": peak,
        "baseline_rss_mb": baseline,
        "delta_rss_mb": peak - baseline,
    }


def measure_keypoint_stages(pair_dir: str, overrides: dict, crop: float = 1.0, threads: int = 1) -> dict:
    """The keypoint-count-dependent stages alone, for any number of keypoints.

    ``keypoints.num_points`` voxels drawn at random (seeded by ``config.seed``) from the fixed lung
    mask on the working grid replace the Förstner keypoints (whose number is limited by the
    image), then the first search level (:func:`graphreg.methods.keypoint.driver.regularised_search`)
    and the densification run on them. Same result keys as :func:`measure_configuration`
    (``timings``: ``mind``, ``search_1``, ``densify``, ``end_to_end``, ``end_to_end_cpu``). Runs
    with :func:`graphreg.runtime.allocator.reusing_freed_memory`, as :func:`graphreg.register` does.
    """
    import time

    import torch

    from graphreg.runtime.allocator import reusing_freed_memory
    from graphreg.core.config import load_config
    from graphreg.datasets.pairs import read_pair
    from graphreg.methods.keypoint.densify import densify
    from graphreg.methods.keypoint.densify import densify_options
    from graphreg.methods.keypoint.driver import regularised_search
    from graphreg.ops.mind import mind_ssc
    from graphreg.methods.keypoint.preprocess import working_pair

    torch.set_num_threads(threads)
    config = load_config(overrides)
    pair = read_pair(pair_dir)
    fixed, fixed_mask = pair.fixed, pair.fixed_mask
    if crop < 1:
        fixed, fixed_mask = central_crop(fixed, crop), central_crop(fixed_mask, crop)
    work = working_pair(fixed, pair.moving, fixed_mask, pair.moving_mask, config.preprocess)
    baseline = _rss_mb()
    timings = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.no_grad(), reusing_freed_memory():
        fixed_features = mind_ssc(work.fixed, config.mind.radius, config.mind.dilation)
        moving_features = mind_ssc(work.moving, config.mind.radius, config.mind.dilation)
        timings["mind"] = time.perf_counter() - start
        inside = torch.nonzero(work.fixed_mask[0, 0])
        order = torch.randperm(len(inside), generator=torch.Generator().manual_seed(config.seed))
        keypoints = inside[order[:config.keypoints.num_points]].to(fixed_features.dtype)
        level, reg = config.levels[0], config.regulariser
        stage = time.perf_counter()
        sparse = regularised_search(fixed_features, moving_features, keypoints, level, reg.k, reg.symmetric,
                                    reg.inference)[0]
        timings["search_1"] = time.perf_counter() - stage
        stage = time.perf_counter()
        densify(keypoints, sparse, tuple(work.fixed.shape[2:]), method=config.densify.method,
                **densify_options(config))
        timings["densify"] = time.perf_counter() - stage
    timings["end_to_end"] = time.perf_counter() - start
    timings["end_to_end_cpu"] = time.process_time() - cpu_start
    peak = _rss_mb()
    working_shape = tuple(int(n) for n in work.grid.shape)
    return {"timings": timings, "n_keypoints": int(len(keypoints)), "candidates": int((2 * level.radius + 1) ** 3),
            "working_shape": working_shape, "working_voxels": int(np.prod(working_shape)),
            "fixed_voxels": int(np.prod(fixed.grid.shape)), "peak_rss_mb": peak, "baseline_rss_mb": baseline,
            "delta_rss_mb": peak - baseline}


def _child(connection, measure, pair_dir, overrides, crop, threads) -> None:
    import traceback

    try:
        connection.send(("ok", globals()[measure](pair_dir, overrides, crop, threads)))
    except Exception as error:  # noqa: BLE001 - reported to the parent, which records the failure
        connection.send(("failed", f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=-3)}"))
    finally:
        connection.close()


def measure_isolated(pair_dir: str, overrides: dict, crop: float = 1.0, threads: int = 1,
                     timeout_s: Optional[float] = None, measure: str = "measure_configuration") -> dict:
    """``measure`` (:func:`measure_configuration` or :func:`measure_keypoint_stages`) in a fresh
    ``spawn``-ed process; failures become ``{"error": ...}``."""
    if measure not in ("measure_configuration", "measure_keypoint_stages"):
        raise ConfigError(f"measure: expected measure_configuration or measure_keypoint_stages, got {measure!r}")
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, measure, str(pair_dir), overrides, crop, threads))
    process.start()
    sender.close()
    try:
        if receiver.poll(timeout_s):
            status, payload = receiver.recv()
        else:
            status, payload = "failed", f"TimeoutError: no result after {timeout_s} s"
    except EOFError:
        status, payload = "failed", f"worker process died (exit code {process.exitcode})"
    finally:
        receiver.close()
    if process.is_alive():
        process.terminate()
    process.join()
    return payload if status == "ok" else {"error": payload}


# ---------------------------------------------------------------------- fits and sweeps
def loglog_slope(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Least-squares slope of ``log(y)`` against ``log(x)`` (None with fewer than 2 distinct x > 0)."""
    points = [(math.log(a), math.log(b)) for a, b in zip(x, y) if a > 0 and b > 0]
    if len({p[0] for p in points}) < 2:
        return None
    lx, ly = np.array(points).T
    return float(np.polyfit(lx, ly, 1)[0])


def fit_curve(curve: Curve, points: Sequence[dict]) -> dict:
    """Slopes of every expected stage (and of the added memory) against the curve's x."""
    ok = [p for p in points if "error" not in p]
    x = [p[curve.x_key] for p in ok]
    fits = {}
    for stage, expected in curve.stages.items():
        slope = loglog_slope(x, [p["timings"].get(stage, 0.0) for p in ok])
        consistent = None if slope is None else bool(
            expected.low - SLOPE_TOLERANCE <= slope <= expected.high + SLOPE_TOLERANCE)
        fits[stage] = {"slope": slope, "expected": [expected.low, expected.high],
                       "complexity": expected.complexity, "consistent": consistent}
    for total in ("end_to_end", "end_to_end_cpu"):
        fits[total] = {"slope": loglog_slope(x, [p["timings"][total] for p in ok]),
                       "expected": None, "complexity": "sum of the stages", "consistent": None}
    memory = {"slope": loglog_slope(x, [p["delta_rss_mb"] for p in ok]), "complexity": curve.memory}
    return {"stages": fits, "memory": memory}


def run_sweep(pair_dir: Union[str, os.PathLike], curves: Optional[Sequence[str]] = None,
              values: Optional[dict] = None, threads: int = 1, base_overrides: Optional[dict] = None,
              timeout_s: Optional[float] = None, progress: Optional[Callable[[str], None]] = None) -> dict:
    """Measure the scaling curves on one pair.

    Args:
        pair_dir: a pair folder (:func:`graphreg.datasets.pairs.read_pair`).
        curves: names from :data:`DEFAULT_CURVES` (default: all).
        values: ``{curve: [values]}`` replacing a curve's default settings (small test sweeps).
        threads: torch threads in every child process.
        base_overrides: config overrides for every run (default :data:`BASE_OVERRIDES`).
        timeout_s: per-configuration limit; a run past it is recorded with an ``error``.
        progress: called with one line per finished configuration.

    Returns:
        A JSON-ready dict: ``created``, ``pair``, ``threads``, ``base_overrides``,
        ``memory_measure`` and ``curves``: per curve ``varied``, ``x_key``, ``points`` (one
        :func:`measure_configuration` dict per value, with ``value``) and ``fits``
        (:func:`fit_curve`).

    Raises:
        ConfigError: an unknown curve name, or ``values`` for a curve not swept.
    """
    names = list(DEFAULT_CURVES) if curves is None else list(curves)
    unknown = [n for n in names + list(values or {}) if n not in DEFAULT_CURVES]
    if unknown:
        raise ConfigError(f"curves: expected names from {sorted(DEFAULT_CURVES)}, got {unknown[0]!r}")
    if not names:
        raise ConfigError("curves: expected at least one curve name, got none")
    base = BASE_OVERRIDES if base_overrides is None else base_overrides
    say = progress or (lambda line: None)
    document = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pair": str(pair_dir), "threads": threads, "base_overrides": base,
        "memory_measure": "ru_maxrss (MiB) of a fresh spawned process per configuration; "
                          "delta_rss_mb = peak minus the peak after imports and reading the pair",
        "curves": {},
    }
    for name in names:
        curve = DEFAULT_CURVES[name]
        points = []
        for value in (values or {}).get(name, curve.values):
            overrides, crop = curve.configure(value)
            point = measure_isolated(str(pair_dir), _merge(base, overrides), crop, threads, timeout_s, curve.measure)
            point["value"] = value
            points.append(point)
            if "error" in point:
                say(f"{name}={value}: FAILED {point['error'].splitlines()[0]}")
            else:
                say(f"{name}={value}: {curve.x_key}={point[curve.x_key]}, "
                    f"{point['timings']['end_to_end']:.1f} s ({point['timings']['end_to_end_cpu']:.1f} s CPU), "
                    f"+{point['delta_rss_mb']:.0f} MiB")
        document["curves"][name] = {"varied": curve.varied, "x_key": curve.x_key, "points": points,
                                    "fits": fit_curve(curve, points)}
    return document


# ---------------------------------------------------------------------- report
def format_scaling(document: dict) -> str:
    """Plain-text tables: per curve the points (x, stage seconds, memory), then the fitted slopes."""
    lines = [f"scaling on {document['pair']} ({document['threads']} thread(s)); memory: {document['memory_measure']}"]
    for name, entry in document["curves"].items():
        curve = DEFAULT_CURVES.get(name)
        stages = list(curve.stages) if curve else []
        header = f"{'value':>7} {entry['x_key']:>15} " + " ".join(f"{s:>13}" for s in stages) \
            + f" {'end_to_end':>10} {'cpu s':>7} {'peak MiB':>9} {'+MiB':>7}"
        lines += ["", f"{name}: {entry['varied']}", header, "-" * len(header)]
        for point in entry["points"]:
            if "error" in point:
                lines.append(f"{point['value']!s:>7} FAILED {point['error'].splitlines()[0]}")
                continue
            cells = " ".join(f"{point['timings'].get(s, float('nan')):13.2f}" for s in stages)
            lines.append(f"{point['value']!s:>7} {point[entry['x_key']]:>15} {cells} "
                         f"{point['timings']['end_to_end']:10.2f} {point['timings']['end_to_end_cpu']:7.1f} "
                         f"{point['peak_rss_mb']:9.0f} "
                         f"{point['delta_rss_mb']:7.0f}")
        for stage, fit in entry["fits"]["stages"].items():
            slope = "-" if fit["slope"] is None else f"{fit['slope']:.2f}"
            expected = "" if fit["expected"] is None else \
                f" expected {fit['expected'][0]:g}..{fit['expected'][1]:g} ({fit['complexity']})"
            verdict = {True: " consistent", False: " NOT consistent", None: ""}[fit["consistent"]]
            lines.append(f"  slope {stage:<14} {slope:>6}{expected}{verdict}")
        memory = entry["fits"]["memory"]
        slope = "-" if memory["slope"] is None else f"{memory['slope']:.2f}"
        lines.append(f"  slope {'memory (+MiB)':<14} {slope:>6} ({memory['complexity']})")
    return "\n".join(lines)


def plot_scaling(document: dict, out_dir: Union[str, os.PathLike]) -> dict[str, Path]:
    """One PNG per curve: stage seconds (log-log, with the fitted lines) and added memory vs x."""
    from graphreg.runtime.extras import require_extra

    require_extra("viz", "scaling plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, entry in document["curves"].items():
        ok = [p for p in entry["points"] if "error" not in p]
        if len(ok) < 2:
            continue
        x = np.array([p[entry["x_key"]] for p in ok], dtype=float)
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        for stage in list(entry["fits"]["stages"]):
            y = np.array([p["timings"].get(stage, np.nan) for p in ok])
            if not np.all(y > 0):
                continue
            slope = entry["fits"]["stages"][stage]["slope"]
            line, = left.loglog(x, y, "o-", label=f"{stage} (slope {slope:.2f})")
            if slope is not None:  # fitted line through the geometric means
                fit = np.exp(np.mean(np.log(y))) * (x / np.exp(np.mean(np.log(x)))) ** slope
                left.loglog(x, fit, ":", color=line.get_color())
        left.set_xlabel(entry["x_key"])
        left.set_ylabel("seconds")
        left.set_title(f"{name}: time per stage")
        left.legend(fontsize=7)
        right.plot(x, [p["delta_rss_mb"] for p in ok], "o-", label="added (peak - baseline)")
        right.plot(x, [p["peak_rss_mb"] for p in ok], "s--", label="peak RSS")
        right.set_xscale("log")
        right.set_xlabel(entry["x_key"])
        right.set_ylabel("MiB")
        right.set_title(f"{name}: memory (ru_maxrss of the run's process)")
        right.legend(fontsize=7)
        figure.tight_layout()
        path = out_dir / f"scaling_{name}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written[name] = path
    return written


__all__ = ["BASE_OVERRIDES", "Curve", "DEFAULT_CURVES", "SLOPE_TOLERANCE", "StageExpectation", "central_crop",
           "fit_curve", "format_scaling", "loglog_slope", "measure_configuration", "measure_isolated",
           "measure_keypoint_stages",
           "plot_scaling", "run_sweep"]
