"""Benchmark figures: TRE per method and runtime against TRE.

Rows are plain dicts, one per (method, pair) run, as :mod:`graphreg.apps.bench.runner` writes them.
Keys used:

    ==================  ========  ==============================================================
    key                 required  meaning
    ==================  ========  ==============================================================
    ``method``          yes       method name (str); one box / colour per method
    ``pair``            yes       pair name (str)
    ``tre_mean_mm``     yes [1]_  mean landmark TRE of the pair after registration (mm)
    ``seconds_total``   yes       wall time of the registration (s)
    ``tre_mm``          no        per-landmark TRE list (mm); when every row of a method has it,
                                  that method's box shows all landmarks, otherwise its pairs'
                                  means
    ``status``          no        rows whose status is not ``"ok"`` are left out
    ==================  ========  ==============================================================

.. [1] or, as the benchmark runner nests it, ``row["tre"]["mean_mm"]``.

Other keys are ignored. Methods appear in the order of their first row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from graphreg.apps.bench.runner import group_name
from graphreg.errors import GraphregError, InputFileError

REQUIRED_KEYS = ("method", "pair", "tre_mean_mm", "seconds_total")


def load_rows(path) -> list[dict]:
    """Rows from a benchmark JSON file: a list of row objects, or an object with a ``"rows"`` list."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputFileError(f"{path}: not a readable benchmark JSON file ({error})") from error
    rows = content.get("rows") if isinstance(content, dict) else content
    if not isinstance(rows, list):
        raise InputFileError(f"{path}: expected a list of rows or an object with a 'rows' list")
    return check_rows(rows)


def check_rows(rows: Sequence[dict]) -> list[dict]:
    """Validate and normalise rows (see the module docstring).

    Returns:
        The successful rows as dicts with ``method``, ``pair``, ``tre_mean_mm``,
        ``seconds_total`` (floats) and ``tre_mm`` (array or None).

    Raises:
        GraphregError: no successful rows, a row without a required key, or a non-finite
            number (the message names the row index and the key).
    """
    clean = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise GraphregError(f"rows[{i}]: expected a dict, got {type(row).__name__}")
        if row.get("status", "ok") != "ok":
            continue
        tre_mean = row.get("tre_mean_mm")
        if tre_mean is None and isinstance(row.get("tre"), dict):
            tre_mean = row["tre"].get("mean_mm")
        missing = [key for key in ("method", "pair", "seconds_total") if row.get(key) is None]
        if tre_mean is None:
            missing.append("tre_mean_mm")
        if missing:
            raise GraphregError(f"rows[{i}]: missing keys {missing}; every row needs {list(REQUIRED_KEYS)} "
                                "(tre_mean_mm may also be given as tre.mean_mm)")
        numbers = {}
        for key, value in (("tre_mean_mm", tre_mean), ("seconds_total", row["seconds_total"])):
            try:
                numbers[key] = float(value)
            except (TypeError, ValueError):
                numbers[key] = float("nan")
            if not np.isfinite(numbers[key]):
                raise GraphregError(f"rows[{i}].{key}: expected a finite number, got {value!r}")
        tre_mm = None
        if row.get("tre_mm") is not None:
            tre_mm = np.asarray(row["tre_mm"], dtype=np.float64).ravel()
            if tre_mm.size == 0 or not np.isfinite(tre_mm).all():
                raise GraphregError(f"rows[{i}].tre_mm: expected a non-empty list of finite mm values")
        clean.append({"method": str(group_name(row)), "pair": str(row["pair"]), **numbers, "tre_mm": tre_mm})
    if not clean:
        raise GraphregError(f"rows: expected at least one successful benchmark row, got {len(rows)} rows "
                            "and none with status 'ok'")
    return clean


def _by_method(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(row["method"]), []).append(row)
    return groups


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained", dpi=100)


#: the TRE axis turns logarithmic when the largest value exceeds this many times the smallest of the
#: methods' medians
LOG_AXIS_RATIO = 10.0


def plot_tre_boxplot(rows: Sequence[dict], title: str = "Landmark TRE per method"):
    """Box plot of TRE (mm) per method: all landmarks when ``tre_mm`` is given, else pair means.

    The TRE axis is logarithmic when one method's values reach :data:`LOG_AXIS_RATIO` times the
    smallest method median (so the accurate methods stay readable beside ``identity``); long method names
    are slanted.
    """
    groups = _by_method(check_rows(rows))
    data, labels = [], []
    for method, items in groups.items():
        if all(item["tre_mm"] is not None for item in items):
            values = np.concatenate([item["tre_mm"] for item in items])
            unit = "landmarks"
        else:
            values = np.array([item["tre_mean_mm"] for item in items])
            unit = "pairs"
        data.append(values)
        labels.append(f"{method}\n{values.size} {unit}\nmean {values.mean():.2f}")
    figure = _figure(max(4.0, 1.3 * len(data) + 1.5), 4.2)
    axes = figure.subplots()
    axes.boxplot(data, showmeans=True)
    long_names = max(len(method) for method in groups) > 16
    axes.set_xticks(range(1, len(labels) + 1), labels, fontsize=8, rotation=30 if long_names else 0,
                    ha="right" if long_names else "center")
    _tre_axis(axes, data, "TRE")
    axes.set_title(title, fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    return figure


def _tre_axis(axes, data: list[np.ndarray], label: str) -> None:
    """Make the y (TRE) axis logarithmic, with ticks at 1, 2, 5 x 10^k, when one value reaches
    :data:`LOG_AXIS_RATIO` times the smallest median of ``data`` (one array per method): one method
    far off the others (e.g. no registration) would flatten the rest on a linear axis. Labels the
    axis ``label`` in mm."""
    values = np.concatenate(data)
    log_axis = bool((values > 0).all() and values.max() > LOG_AXIS_RATIO * min(np.median(d) for d in data))
    if log_axis:
        from matplotlib.ticker import FormatStrFormatter, LogLocator, NullLocator

        axes.set_yscale("log")
        axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        axes.yaxis.set_minor_locator(NullLocator())
    axes.set_ylabel(f"{label} (mm, log scale)" if log_axis else f"{label} (mm)")


#: marker shapes cycled with the colours, so that up to 20 x 6 methods stay distinguishable
_MARKERS = ("D", "o", "s", "^", "v", "P")


def plot_runtime_vs_tre(rows: Sequence[dict], title: str = "Runtime against accuracy",
                        log_time: bool = True):
    """Scatter of ``seconds_total`` against ``tre_mean_mm``: one point per run, one colour and
    marker per method, a large marker at each method's mean (lower left is better). The legend
    sits beside the axes; the TRE axis is logarithmic as in :func:`plot_tre_boxplot`."""
    import matplotlib

    rows = check_rows(rows)
    groups = _by_method(rows)
    colors = matplotlib.colormaps["tab20"]
    figure = _figure(8.5, 4.2)
    axes = figure.subplots()
    tres = []  # one array of pair TREs per method, for the axis scale
    for k, (method, items) in enumerate(groups.items()):
        seconds = np.array([item["seconds_total"] for item in items])
        tre = np.array([item["tre_mean_mm"] for item in items])
        tres.append(tre)
        color, marker = colors(k % 20), _MARKERS[k % len(_MARKERS)]
        axes.scatter(seconds, tre, color=color, alpha=0.5, s=20, marker=marker)
        axes.scatter([seconds.mean()], [tre.mean()], color=color, s=120, marker=marker, edgecolors="black",
                     label=f"{method}: {tre.mean():.2f} mm, {seconds.mean():.1f} s")
    if log_time and all(row["seconds_total"] > 0 for row in rows):
        axes.set_xscale("log")
    axes.set_xlabel("seconds per registration")
    _tre_axis(axes, tres, "mean TRE")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return figure


def write_bench_plots(rows: Sequence[dict], out_dir) -> dict[str, Path]:
    """Both figures as ``out_dir/bench_tre_boxplot.png`` and ``out_dir/bench_runtime_vs_tre.png``."""
    from graphreg.runtime.extras import require_extra

    require_extra("viz", "benchmark plots")
    from graphreg.apps.viz.slices import save_figure

    out = Path(out_dir)
    return {"tre_boxplot": save_figure(plot_tre_boxplot(rows), out / "bench_tre_boxplot.png"),
            "runtime_vs_tre": save_figure(plot_runtime_vs_tre(rows), out / "bench_runtime_vs_tre.png")}
