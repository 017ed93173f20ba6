"""Plain-text table of benchmark rows (see :mod:`graphreg.apps.bench.runner` for the row keys).

One line per (method, pair, direction: ``fwd`` as stored, ``rev`` swapped), then per method and
direction a ``median`` and a ``mean`` line over the pairs that succeeded, then (when peers ran)
graphreg's time as a ratio to each peer's (:func:`~graphreg.apps.bench.runner.peer_ratios`). Units: TRE in mm, folding in percent of lung voxels,
time in seconds, memory in MiB. For keypoint methods on pairs with a ground truth, ``kp err`` is
the mean error of the graph stage's keypoint displacements (mm) and ``rho_u`` the rank correlation
of the per-keypoint uncertainty with that error (see
:func:`~graphreg.apps.bench.runner.keypoint_uncertainty_scores`). Stage times are shown compactly as
``name=seconds`` in the last column.
"""

from __future__ import annotations

from typing import Optional, Sequence

from graphreg.apps.bench.runner import scalar_metrics, summarize

_DIRECTION_CELLS = {"forward": "fwd", "reverse": "rev"}

_COLUMNS = (  # header, width, alignment
    ("method", 23, "<"), ("pair", 12, "<"), ("dir", 3, "<"), ("TRE0", 6, ">"), ("TRE", 6, ">"),
    ("±std", 5, ">"), ("p75", 6, ">"), ("max", 6, ">"), ("SDlogJ", 6, ">"), ("fold%", 6, ">"), ("Dice", 5, ">"),
    ("kp err", 6, ">"), ("rho_u", 5, ">"), ("total s", 8, ">"), ("peak MB", 8, ">"), ("stages s", 0, "<"),
)


def _number(value: Optional[float], digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _stages(timings: dict) -> str:
    return " ".join(f"{name}={seconds:.1f}" for name, seconds in timings.items())


def _line(cells: Sequence[str]) -> str:
    parts = []
    for (header, width, align), cell in zip(_COLUMNS, cells):
        parts.append(f"{cell:{align}{width}}" if width else cell)
    return "  ".join(parts).rstrip()


def _metric_cells(m: dict) -> list[str]:
    return [_number(m["tre_before_mean_mm"], 2), _number(m["tre_mean_mm"], 2), _number(m["tre_std_mm"], 2),
            _number(m["tre_p75_mm"], 2), _number(m["tre_max_mm"], 2), _number(m["std_log_jacobian"], 3),
            _number(m["folding_percent"], 2), _number(m["dice"], 3), _number(m["keypoint_error_mean_mm"], 2),
            _number(m["uncertainty_spearman"], 2), _number(m["seconds_total"], 1),
            _number(m["peak_rss_mb"], 0)]


def format_table(rows: Sequence[dict], summary: Optional[dict] = None) -> str:
    """The benchmark table as text (``summary`` defaults to :func:`~graphreg.apps.bench.runner.summarize`)."""
    summary = summarize(rows) if summary is None else summary
    header = _line([c[0] for c in _COLUMNS])
    lines = [header, "-" * len(header)]
    for row in rows:
        name = [row["method"], str(row["pair"])[:12], _DIRECTION_CELLS.get(row.get("direction", "forward"), "?")]
        if row["status"] != "ok":
            lines.append(_line(name + ["FAILED: " + str(row.get("error"))[:100]]).rstrip())
            continue
        lines.append(_line(name + _metric_cells(scalar_metrics(row)) + [_stages(row.get("timings", {}))]))
    if summary:
        lines.append("-" * len(header))
    for method, entry in summary.items():
        label = f"n={entry['n_ok']}/{entry['n_pairs']}"
        for statistic in ("median", "mean"):
            stages = entry.get("stages_median", {}) if statistic == "median" else {}
            direction = _DIRECTION_CELLS.get(entry.get("direction", "forward"), "?")
            lines.append(_line([method, f"{statistic} {label}"[:12], direction]
                               + _metric_cells(entry[statistic]) + [_stages(stages)]))
    ratios = format_peer_ratios(summary)
    return "\n".join(lines + ([""] + ratios.splitlines() if ratios else []))


def format_peer_ratios(summary: dict) -> str:
    """The ``vs_peers`` entries of a summary as a small table ("" when there are none)."""
    rows = [(method, peer, r) for method, entry in summary.items()
            for peer, r in entry.get("vs_peers", {}).items()]
    if not rows:
        return ""
    width = max(12, *(len(method) for method, _, _ in rows))
    header = (f"{'method':<{width}}  {'vs peer':<12}  {'pairs':>5}  {'time ratio':>10}  {'speed-up':>8}  "
              f"{'TRE':>6}  {'peer TRE':>8}  {'RSS ratio':>9}")
    lines = ["graphreg time / peer time on the same pairs (median of per-pair ratios; < 1 = graphreg faster; "
             "without the peer's package import, e.g. itk's)",
             header, "-" * len(header)]
    for method, peer, r in rows:
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        lines.append(f"{method:<{width}}  {peer[:12]:<12}  {r['n_pairs']:>5}  {r['time_ratio']:>10.3f}  "
                     f"{speedup:>8}  {_number(r['tre_mean_mm'], 2):>6}  {_number(r['peer_tre_mean_mm'], 2):>8}  "
                     f"{_number(r['peak_rss_ratio'], 2):>9}")
    return "\n".join(lines)


__all__ = ["format_peer_ratios", "format_table"]
