"""Run registration methods over a set of pairs and measure accuracy, regularity, time and memory.

Every (method, pair) run yields one *row* (a JSON-ready dict):

=====================  ==========================================================================
key                    value
=====================  ==========================================================================
``method``, ``pair``   names
``direction``          ``"forward"`` (fixed -> moving as stored) or ``"reverse"`` (swapped: images,
                       masks and landmarks; see :func:`~graphreg.apps.bench.sources.reverse_pair`)
``status``             ``"ok"`` or ``"failed"``
``error``              ``None``, or ``"Type: message"`` of the failure (not installed, exception,
                       worker crash or time-out)
``device``             torch device string the method was given
``n_landmarks``        landmark pairs of the pair
``tre_before``         :func:`graphreg.ops.metrics.summarize_errors` of fixed vs moving landmarks
                       (``mean_mm``, ``std_mm``, ``p25_mm``, ``p50_mm``, ``p75_mm``, ``max_mm``,
                       ``n_points``), ``None`` without landmarks
``tre``                the same after registration: ``field.transform_points(fixed) - moving``
``jacobian``           :func:`graphreg.ops.metrics.jacobian_stats` inside the fixed lung mask
                       (``std_log_jacobian``, ``folding_percent``, ``jacobian_min``, ``jacobian_max``)
``dice_before``        Dice of the fixed lung mask and the moving mask resampled on the fixed grid
``dice``               Dice of the fixed lung mask and the moving mask warped (nearest neighbour)
``timings``            seconds per stage as the method reports them
``seconds_total``      wall-clock seconds of the whole method call
``peak_rss_mb``        peak resident memory (MiB) of the process up to the end of the method call
``baseline_rss_mb``    its peak before the call (interpreter, libraries, the loaded pair)
``peak_gpu_mb``        ``torch.cuda.max_memory_allocated`` during the call (CUDA devices), else None
``memory_measure``     ``"ru_maxrss"`` (fresh process per run) or ``"sampled"`` (in-process polling)
``extras``             the method's own extras
``traceback``          (failed runs with an exception only) the last frames of its traceback
=====================  ==========================================================================

Metrics are computed after the memory is read, so they do not count against the method.
:func:`summarize` aggregates rows per method and direction (:func:`group_name`; median and mean
over the pairs that succeeded) and, for graphreg's methods, their time as a ratio to each peer's
on the same pairs and direction (:func:`peer_ratios`).

With ``isolate=True`` each run happens in a fresh ``spawn``-ed process: memory numbers are clean
(the kernel's ``ru_maxrss`` of that process) and a crash, a segfault in a native library or a
time-out fails that run only.
"""

from __future__ import annotations

import datetime
import functools
import json
import multiprocessing
import os
import resource
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from graphreg.io.jsonable import to_jsonable
from graphreg.errors import ConfigError, GraphregError
from graphreg.apps.bench.methods import MethodUnavailableError, get_method, method_label, needs_ground_truth
from graphreg.apps.bench.sources import DIRECTIONS, PairRef, in_direction, pair_direction

#: Scalar metrics of a row that :func:`summarize` aggregates and tables show.
SUMMARY_METRICS = ("tre_before_mean_mm", "tre_mean_mm", "tre_std_mm", "tre_p75_mm", "tre_max_mm",
                   "std_log_jacobian", "folding_percent", "dice_before", "dice", "seconds_total",
                   "peak_rss_mb", "keypoint_error_mean_mm", "uncertainty_spearman")

#: Methods of other packages that graphreg is compared with (see :func:`peer_ratios`).
PEER_METHODS = ("elastix", "convexadam", "ants")

#: Methods that are neither graphreg's own registration nor a peer (no ratio is computed for them).
REFERENCE_METHODS = ("identity",)

_MB = 1024.0 * 1024.0


# ---------------------------------------------------------------------- memory
def _ru_maxrss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MB if sys.platform == "darwin" else peak / 1024.0


class _RssSampler:
    """Polls this process's RSS (psutil) in a thread; :attr:`peak_mb` is the largest value seen."""

    def __init__(self, interval_s: float = 0.02) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.peak_mb = self._process.memory_info().rss / _MB
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / _MB)
            self._stop.wait(self._interval)

    def __enter__(self) -> "_RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / _MB)


# ---------------------------------------------------------------------- one run
def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _base_row(method: str, pair, device: str) -> dict:
    return {"method": method, "pair": getattr(pair, "name", "?"), "direction": pair_direction(pair),
            "status": "ok", "error": None, "device": device,
            "n_landmarks": 0, "tre_before": None, "tre": None, "jacobian": None,
            "dice_before": None, "dice": None, "timings": {}, "seconds_total": None,
            "peak_rss_mb": None, "baseline_rss_mb": None, "peak_gpu_mb": None,
            "memory_measure": None, "extras": {}}


def _mask_dice(fixed_mask, warped_mask) -> float:
    from graphreg.ops.metrics import dice

    return dice(np.asarray(fixed_mask.array) > 0, np.asarray(warped_mask.array) > 0, labels=[True])[True]


def evaluate_run(method_name: str, fn: Callable, pair, device: str, isolated: bool) -> dict:
    """Run ``fn`` on ``pair`` (a PairData or :class:`PairRef`) in this process and measure it.

    Exceptions of the method or the metrics are caught and recorded in the row.
    """
    row = _base_row(method_name, pair, device)
    try:
        if isinstance(pair, PairRef):
            pair = pair.load()
        _measure(row, fn, pair, device, isolated)
    except Exception as error:  # noqa: BLE001 - every failure is recorded, the benchmark goes on
        row["status"] = "failed"
        row["error"] = _error_text(error)
        row["traceback"] = traceback.format_exc(limit=-6)
    return to_jsonable(row)


def _measure(row: dict, fn: Callable, pair, device: str, isolated: bool) -> None:
    from graphreg.core.field import DisplacementField
    from graphreg.ops.metrics import jacobian_stats, landmark_errors, summarize_errors

    fixed_lm = np.asarray(pair.fixed_landmarks_mm, dtype=np.float64)
    moving_lm = np.asarray(pair.moving_landmarks_mm, dtype=np.float64)
    row["n_landmarks"] = int(len(fixed_lm))
    if len(fixed_lm):
        row["tre_before"] = summarize_errors(landmark_errors(fixed_lm, moving_lm))

    call = fn
    if needs_ground_truth(fn):
        if not pair.has_ground_truth:
            raise GraphregError(f"method {row['method']!r}: needs a pair with a ground-truth field "
                                f"(generated pairs have one); {row['pair']!r} has none")
        call = functools.partial(fn, truth=pair.load_gt_field())
    cuda = device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    if isolated:
        row["baseline_rss_mb"] = _ru_maxrss_mb()
        start = time.perf_counter()
        result = call(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, device)
        row["seconds_total"] = time.perf_counter() - start
        row["peak_rss_mb"] = _ru_maxrss_mb()
        row["memory_measure"] = "ru_maxrss"
    else:
        with _RssSampler() as sampler:
            row["baseline_rss_mb"] = sampler.peak_mb
            start = time.perf_counter()
            result = call(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, device)
            row["seconds_total"] = time.perf_counter() - start
        row["peak_rss_mb"] = sampler.peak_mb
        row["memory_measure"] = "sampled"
    if cuda:
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / _MB
    row["timings"] = {str(k): float(v) for k, v in result.timings.items()}
    row["extras"] = dict(result.extras)

    field = result.field
    if not isinstance(field, DisplacementField):
        raise GraphregError(f"method {row['method']!r}: expected MethodResult.field to be a "
                            f"DisplacementField, got {type(field).__name__}")
    if not field.grid.same_as(pair.fixed.grid):
        raise GraphregError(f"method {row['method']!r}: expected the field on the fixed grid "
                            f"[{pair.fixed.grid.describe()}], got [{field.grid.describe()}]")
    field = field.to("cpu")
    if len(fixed_lm):
        row["tre"] = summarize_errors(landmark_errors(field.transform_points(fixed_lm), moving_lm))
    if result.keypoints is not None and pair.has_ground_truth:
        row.update(keypoint_uncertainty_scores(result.keypoints, pair.load_gt_field()))
    mask = np.asarray(pair.fixed_mask.array) > 0 if pair.fixed_mask is not None else None
    row["jacobian"] = jacobian_stats(field, mask if mask is not None and mask.any() else None)
    if pair.fixed_mask is not None and pair.moving_mask is not None:
        identity = DisplacementField.identity(pair.fixed.grid)
        row["dice_before"] = _mask_dice(pair.fixed_mask, identity.warp(pair.moving_mask, "nearest"))
        row["dice"] = _mask_dice(pair.fixed_mask, field.warp(pair.moving_mask, "nearest"))


def keypoint_uncertainty_scores(keypoints: tuple, gt_field) -> dict:
    """How well a keypoint method's per-keypoint uncertainty predicts its true error.

    Args:
        keypoints: ``(points_mm (N, 3), displacements_mm (N, 3), uncertainty_mm (N,))`` as in
            :attr:`MethodResult.keypoints`.
        gt_field: the pair's ground-truth :class:`~graphreg.core.field.DisplacementField`.

    Returns:
        ``keypoint_error``: :func:`~graphreg.ops.metrics.summarize_errors` of
        ``|p + d - gt(p)|`` (mm) and ``uncertainty_spearman``: the rank correlation of the
        uncertainty with that error (``None`` when undefined).
    """
    from graphreg.ops.metrics import landmark_errors, rank_correlation, summarize_errors

    points, displacements, uncertainty = (np.asarray(a, dtype=np.float64) for a in keypoints)
    errors = landmark_errors(points + displacements, gt_field.to("cpu").transform_points(points))
    rho = rank_correlation(uncertainty, errors) if len(errors) >= 2 else float("nan")
    return {"keypoint_error": summarize_errors(errors),
            "uncertainty_spearman": None if np.isnan(rho) else rho}


def _child(connection, method_name: str, fn: Callable, pair, device: str) -> None:
    """Worker process entry: one run, the row sent back through ``connection``."""
    try:
        connection.send(evaluate_run(method_name, fn, pair, device, isolated=True))
    finally:
        connection.close()


def _exit_reason(code: Optional[int]) -> str:
    if code is not None and code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (killed: out of memory?)" if name == "SIGKILL" else ""
        return f"worker process died with {name}{hint}"
    return f"worker process exited with code {code} without a result"


def run_isolated(method_name: str, fn: Callable, pair, device: str,
                 timeout_s: Optional[float] = None) -> dict:
    """:func:`evaluate_run` in a fresh ``spawn``-ed process; crashes and time-outs become failed rows."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, method_name, fn, pair, device))
    start = time.perf_counter()
    process.start()
    sender.close()
    row, timed_out = None, False
    try:
        if receiver.poll(timeout_s):
            row = receiver.recv()
        else:
            timed_out = True
    except EOFError:  # the child died before sending
        row = None
    finally:
        receiver.close()
    if timed_out:
        process.terminate()
        process.join(5)
        if process.is_alive():
            process.kill()
    process.join()
    if row is None:
        row = to_jsonable(_base_row(method_name, pair, device))
        row["status"] = "failed"
        row["error"] = (f"TimeoutError: no result after {timeout_s:g} s; worker terminated" if timed_out
                        else _exit_reason(process.exitcode))
        row["seconds_total"] = time.perf_counter() - start
    return row


# ---------------------------------------------------------------------- the benchmark
def run_benchmark(pairs: Iterable, methods: Sequence[Union[str, tuple[str, Callable]]],
                  device: str = "cpu", json_path: Union[str, os.PathLike, None] = None,
                  isolate: bool = True, timeout_s: Optional[float] = None,
                  progress: Optional[Callable[[dict], None]] = None,
                  directions: Sequence[str] = ("forward",)) -> list[dict]:
    """Run every method on every pair, in every direction asked for.

    Args:
        pairs: :class:`~graphreg.apps.bench.sources.PairRef` (loaded in the worker) or
            :class:`~graphreg.datasets.pairs.PairData` objects; iterated once, pair by pair.
        methods: registered method names (``NAME@CONFIG`` for a keypoint method with another config,
            see :func:`~graphreg.apps.bench.methods.get_method`), or ``(name, callable)`` for unregistered ones (with
            ``isolate=True`` the callable must be picklable: a module-level function or a
            ``functools.partial`` of one).
        device: torch device string passed to the methods.
        json_path: when given, rows and :func:`summarize` are written there (atomically) after
            every run, so a long benchmark leaves a usable file even when interrupted.
        isolate: run each (method, pair) in a fresh process (clean memory numbers, crash safety).
        timeout_s: with ``isolate``, a run taking longer is terminated and recorded as failed.
        progress: called with each finished row.
        directions: any of :data:`~graphreg.apps.bench.sources.DIRECTIONS`; ``"reverse"`` registers
            the pair swapped (moving -> fixed), scored with the same landmark pairs swapped.

    Returns:
        The rows (see the module docstring), pair-major: all methods and directions of pair 1,
        then pair 2, ...

    Raises:
        ConfigError: ``methods`` is empty or names an unknown method, or ``directions`` is empty
            or names an unknown direction.
    """
    resolved = _resolve_methods(methods)
    directions = list(dict.fromkeys(directions))
    if not directions or any(d not in DIRECTIONS for d in directions):
        raise ConfigError(f"directions: expected one or more of {DIRECTIONS}, got {directions!r}")
    rows: list[dict] = []
    for stored in pairs:
        for pair, (name, fn) in ((in_direction(stored, d), entry) for d in directions for entry in resolved):
            if isinstance(fn, MethodUnavailableError):
                row = to_jsonable(_base_row(name, pair, device))
                row.update(status="failed", error=_error_text(fn))
            elif isolate:
                row = run_isolated(name, fn, pair, device, timeout_s)
            else:
                row = evaluate_run(name, fn, pair, device, isolated=False)
            rows.append(row)
            if progress is not None:
                progress(row)
            if json_path is not None:
                write_json(rows, json_path)
    return rows


def _resolve_methods(methods) -> list[tuple[str, object]]:
    if isinstance(methods, str):
        methods = [m for m in methods.split(",") if m.strip()]
    if not methods:
        raise ConfigError("methods: expected at least one method name, got none")
    resolved = []
    for entry in methods:
        if isinstance(entry, tuple):
            name, fn = entry
            if not callable(fn):
                raise ConfigError(f"methods: expected (name, callable), got ({name!r}, {fn!r})")
            resolved.append((str(name), fn))
            continue
        name = str(entry).strip()
        try:
            resolved.append((method_label(name), get_method(name)))
        except MethodUnavailableError as error:  # recorded per pair, the others still run
            resolved.append((method_label(name), error))
    return resolved


# ---------------------------------------------------------------------- aggregation
def scalar_metrics(row: dict) -> dict[str, Optional[float]]:
    """The :data:`SUMMARY_METRICS` of one row (``None`` where not measured)."""
    tre, before, jac = row.get("tre") or {}, row.get("tre_before") or {}, row.get("jacobian") or {}
    return {
        "tre_before_mean_mm": before.get("mean_mm"),
        "tre_mean_mm": tre.get("mean_mm"),
        "tre_std_mm": tre.get("std_mm"),
        "tre_p75_mm": tre.get("p75_mm"),
        "tre_max_mm": tre.get("max_mm"),
        "std_log_jacobian": jac.get("std_log_jacobian"),
        "folding_percent": jac.get("folding_percent"),
        "dice_before": row.get("dice_before"),
        "dice": row.get("dice"),
        "seconds_total": row.get("seconds_total"),
        "peak_rss_mb": row.get("peak_rss_mb"),
        "keypoint_error_mean_mm": (row.get("keypoint_error") or {}).get("mean_mm"),
        "uncertainty_spearman": row.get("uncertainty_spearman"),
    }


def group_name(row: dict) -> str:
    """The summary entry of a row: its method, with `` (reverse)`` appended for the reverse direction."""
    direction = row.get("direction", "forward")
    return row["method"] if direction == "forward" else f"{row['method']} ({direction})"


def summarize(rows: Sequence[dict]) -> dict[str, dict]:
    """Per method and direction (keys :func:`group_name`): ``direction``, ``n_pairs``, ``n_ok``,
    ``n_failed``, ``median`` and ``mean`` of every :data:`SUMMARY_METRICS` entry over the pairs
    that succeeded (``None`` when none has it), and
    ``stages_median``: the median seconds of every stage."""
    summary: dict[str, dict] = {}
    for method in dict.fromkeys(group_name(row) for row in rows):
        mine = [row for row in rows if group_name(row) == method]
        ok = [row for row in mine if row["status"] == "ok"]
        values = {key: [v for v in (scalar_metrics(r)[key] for r in ok) if v is not None]
                  for key in SUMMARY_METRICS}
        stages = list(dict.fromkeys(stage for r in ok for stage in r.get("timings", {})))
        summary[method] = {
            "direction": mine[0].get("direction", "forward"),
            "n_pairs": len(mine),
            "n_ok": len(ok),
            "n_failed": len(mine) - len(ok),
            "median": {k: float(np.median(v)) if v else None for k, v in values.items()},
            "mean": {k: float(np.mean(v)) if v else None for k, v in values.items()},
            "stages_median": {s: float(np.median([r["timings"][s] for r in ok if s in r["timings"]]))
                              for s in stages},
        }
    for method, ratios in peer_ratios(rows).items():
        summary[method]["vs_peers"] = ratios
    return summary


def compute_seconds(row: dict) -> Optional[float]:
    """A run's wall seconds without the one-off import of its method's package.

    ``seconds_total`` less the run's ``import`` stage (recorded by methods that import a heavy
    package inside the call, such as elastix's ``itk``); None when the run has no time.
    """
    total = row.get("seconds_total")
    if total is None:
        return None
    return total - float((row.get("timings") or {}).get("import", 0.0))


def peer_ratios(rows: Sequence[dict], peers: Sequence[str] = PEER_METHODS) -> dict[str, dict]:
    """graphreg's wall time as a ratio to each peer's, on the pairs both finished.

    Every method that is not a peer and not in :data:`REFERENCE_METHODS` counts as a graphreg
    method. Rows of the reverse direction are compared with the peer's reverse rows, under the
    names of :func:`group_name` (``corrfield (reverse)``: ``{"elastix": ...}``). For each
    (graphreg method, peer) with at least one common successful pair:

    - ``n_pairs``: pairs both finished;
    - ``time_ratio``: median over those pairs of ``seconds(method) / seconds(peer)``
      (< 1: graphreg is faster); ``speedup``: its inverse. The seconds are
      :func:`compute_seconds`: a peer's one-off import of its package (elastix: importing itk,
      ~14 s in a fresh process) is left out, as graphreg's import of torch is (the worker has
      imported torch before it starts the clock);
    - ``tre_mean_mm`` / ``peer_tre_mean_mm``: mean over the same pairs of the per-pair mean TRE;
    - ``peak_rss_ratio``: median of ``peak_rss_mb(method) / peak_rss_mb(peer)``.

    Returns:
        ``{method: {peer: {...}}}``; methods without a common pair with any peer are left out.
    """
    by_key = {(group_name(row), row["pair"]): row for row in rows if row["status"] == "ok"}
    methods = {group_name(row): row for row in rows
               if row["method"] not in peers and row["method"] not in REFERENCE_METHODS}
    result: dict[str, dict] = {}
    for method, example in methods.items():
        for peer in peers:
            peer_key = group_name({**example, "method": peer})
            common = [pair for (name, pair) in by_key if name == method and (peer_key, pair) in by_key]
            times = [(compute_seconds(by_key[(method, p)]), compute_seconds(by_key[(peer_key, p)])) for p in common]
            times = [(a, b) for a, b in times if a is not None and b]
            if not times:
                continue
            ratio = float(np.median([a / b for a, b in times]))
            tre = [(scalar_metrics(by_key[(method, p)])["tre_mean_mm"],
                    scalar_metrics(by_key[(peer_key, p)])["tre_mean_mm"])
                   for p in common]
            tre = [(a, b) for a, b in tre if a is not None and b is not None]
            memory = [(by_key[(method, p)]["peak_rss_mb"], by_key[(peer_key, p)]["peak_rss_mb"]) for p in common]
            memory = [a / b for a, b in memory if a is not None and b]
            result.setdefault(method, {})[peer] = {
                "n_pairs": len(times),
                "time_ratio": ratio,
                "speedup": 1.0 / ratio if ratio > 0 else None,
                "tre_mean_mm": float(np.mean([a for a, _ in tre])) if tre else None,
                "peer_tre_mean_mm": float(np.mean([b for _, b in tre])) if tre else None,
                "peak_rss_ratio": float(np.median(memory)) if memory else None,
            }
    return result


def write_json(rows: Sequence[dict], path: Union[str, os.PathLike]) -> Path:
    """Write ``{"created", "graphreg_version", "commit", "machine", "rows", "summary"}`` to ``path``
    (atomically; see :mod:`graphreg.apps.bench.provenance`)."""
    from graphreg import __version__
    from graphreg.io.atomic import atomic_write_text
    from graphreg.apps.bench.provenance import machine, source_commit

    document = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "graphreg_version": __version__,
        "commit": source_commit(),
        "machine": machine(),
        "rows": list(rows),
        "summary": summarize(rows),
    }
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(to_jsonable(document), indent=2) + "\n")
    return path


__all__ = ["PEER_METHODS", "REFERENCE_METHODS", "SUMMARY_METRICS", "compute_seconds", "evaluate_run", "group_name",
           "peer_ratios", "run_benchmark",
           "run_isolated", "scalar_metrics", "summarize", "write_json"]
