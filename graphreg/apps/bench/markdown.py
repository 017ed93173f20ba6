"""The benchmark JSON (:func:`graphreg.apps.bench.runner.write_json`) as a Markdown summary for the
README and the benchmark pages: one row per method and direction, with graphreg's time ratio to
each peer, under a line that names the date, commit, machine and pairs of the run."""

from __future__ import annotations

import re
from typing import Optional

import numpy as np

from graphreg.errors import GraphregError
from graphreg.apps.bench.runner import compute_seconds, group_name, scalar_metrics, summarize

BEGIN, END = "<!-- benchmark-summary: begin -->", "<!-- benchmark-summary: end -->"


def _cell(value: Optional[float], digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _provenance(document: dict, pairs: list[str]) -> str:
    machine = document.get("machine") or {}
    commit = document.get("commit")
    where = f"{machine.get('cpu', 'unknown CPU')}, {machine.get('cores', '?')} cores"
    if machine.get("gpu"):
        where += f", {machine['gpu']}"
    load = machine.get("load_average")
    return (f"Measured {str(document.get('created', '?'))[:10]} with graphreg {document.get('graphreg_version', '?')}"
            f" ({'commit ' + commit[:10] + ('+dirty' if commit.endswith('+dirty') else '') if commit else 'no commit recorded'})"
            f" on {where}{f' (load average {load:g} at the end)' if load is not None else ''}: "
            f"{len(pairs)} pairs ({', '.join(pairs)}), each method × pair in a fresh process.")


def method_rows(rows: list[dict]) -> list[dict]:
    """Per method and direction (:func:`~graphreg.apps.bench.runner.group_name`, in run order):
    ``method``, ``n_ok``, ``n_pairs``, ``tre_mean_mm`` (mean of the per-pair means),
    ``tre_p75_mm`` (median of the per-pair p75), ``worst_pair_mm`` (largest per-pair mean),
    ``tre_max_mm`` (largest landmark error), ``folding_percent`` (mean), ``std_log_jacobian``
    (median) and ``seconds`` (median wall seconds of the method call, without a peer's package
    import: :func:`~graphreg.apps.bench.runner.compute_seconds`)."""
    table = []
    for method in dict.fromkeys(group_name(row) for row in rows):
        ok = [row for row in rows if group_name(row) == method and row["status"] == "ok"]
        metrics = [scalar_metrics(row) for row in ok]

        def values(key):
            return [m[key] for m in metrics if m[key] is not None]

        def stat(fn, key):
            found = values(key)
            return float(fn(found)) if found else None

        seconds = [s for s in (compute_seconds(row) for row in ok) if s is not None]
        table.append({"method": method, "n_ok": len(ok), "n_pairs": sum(group_name(r) == method for r in rows),
                      "tre_mean_mm": stat(np.mean, "tre_mean_mm"), "tre_p75_mm": stat(np.median, "tre_p75_mm"),
                      "worst_pair_mm": stat(np.max, "tre_mean_mm"), "tre_max_mm": stat(np.max, "tre_max_mm"),
                      "folding_percent": stat(np.mean, "folding_percent"),
                      "std_log_jacobian": stat(np.median, "std_log_jacobian"),
                      "seconds": float(np.median(seconds)) if seconds else None})
    return table


def markdown_summary(document: dict) -> str:
    """The Markdown block of a benchmark JSON: the provenance line and one row per method and
    direction, with graphreg's time as a fraction of each peer's on the same pairs and direction."""
    rows = document.get("rows")
    if not rows:
        raise GraphregError("benchmark JSON: expected a non-empty 'rows' list (written by `graphreg bench run "
                            "--json`), got none")
    pairs = sorted(dict.fromkeys(str(row["pair"]) for row in rows))
    summary = document.get("summary") or summarize(rows)
    lines = [_provenance(document, pairs), "",
             "| method | pairs | TRE mean mm | p75 mm | worst pair mm | max mm | folding % | SDlogJ | s / pair "
             "| time / peer's |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in method_rows(rows):
        ratios = ", ".join(f"{e['time_ratio']:.2f}× {peer}" for peer, e in
                           (summary.get(r["method"]) or {}).get("vs_peers", {}).items())
        lines.append(f"| {r['method']} | {r['n_ok']}/{r['n_pairs']} | {_cell(r['tre_mean_mm'], 2)} | "
                     f"{_cell(r['tre_p75_mm'], 2)} | {_cell(r['worst_pair_mm'], 2)} | {_cell(r['tre_max_mm'], 1)} | "
                     f"{_cell(r['folding_percent'], 3)} | {_cell(r['std_log_jacobian'], 3)} | {_cell(r['seconds'], 1)} | "
                     f"{ratios or '–'} |")
    lines += ["", "Time / peer's: median over the common pairs of graphreg's seconds divided by the peer's "
              "(a peer's package import left out)."]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between the :data:`BEGIN` and :data:`END` markers replaced by ``block``."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if len(pattern.findall(text)) != 1:
        raise GraphregError(f"--into: expected exactly one '{BEGIN}' … '{END}' block, "
                            f"found {len(pattern.findall(text))}")
    return pattern.sub(lambda _: f"{BEGIN}\n{block}\n{END}", text)


__all__ = ["BEGIN", "END", "markdown_summary", "method_rows", "replace_block"]
