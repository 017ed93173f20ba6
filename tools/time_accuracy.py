"""Time-accuracy curves of the keypoint regularisers from `graphreg bench run --json` files (docs/time_accuracy.md).

A regulariser ``R`` is every method run at the default budget (``R``, no ``@``) that also ran
without instance optimisation (``R-noio``), e.g. ``corrfield``, ``graphregnet`` or an ablation
``graphregnet-one_anatomy``; its budgets are those of ``R-noio``, ``R@io5``, ``R@io10`` and ``R``
(docs/time_accuracy/io*.yaml) that every regulariser of the file ran. Prints one Markdown table
per file (mean TRE, median and mean wall seconds per budget, over the pairs every method finished)
and writes a PNG.

Usage: python tools/time_accuracy.py OUT.png NAME=RUN.json [NAME=RUN.json ...]
"""

import json
import sys

import numpy as np

#: method-name suffix -> (budget label, coarse + refinement Adam steps)
BUDGETS = {"-noio": ("0", 0), "@io5": ("5 + 0", 5), "@io10": ("10 + 1", 11), "": ("26 + 5 (default)", 31)}


def curves(document: dict) -> dict:
    """``{"curves": {regulariser: [(budget label, steps, mean TRE mm, mean seconds, median seconds), ...]}, ...}``."""
    ok = [r for r in document["rows"] if r["status"] == "ok" and r.get("direction", "forward") == "forward"]
    methods = {r["method"] for r in ok}
    regularisers = sorted(m for m in methods if "@" not in m and not m.endswith("-noio") and f"{m}-noio" in methods)
    budgets = {suffix: budget for suffix, budget in BUDGETS.items()
               if all(f"{reg}{suffix}" in methods for reg in regularisers)}
    names = [f"{reg}{suffix}" for reg in regularisers for suffix in budgets]
    pairs = set.intersection(*({r["pair"] for r in ok if r["method"] == name} for name in names))
    table = {}
    for reg in regularisers:
        for suffix, (label, steps) in budgets.items():
            rows = [r for r in ok if r["method"] == f"{reg}{suffix}" and r["pair"] in pairs]
            seconds = [r["seconds_total"] for r in rows]
            table.setdefault(reg, []).append((label, steps, float(np.mean([r["tre"]["mean_mm"] for r in rows])),
                                              float(np.mean(seconds)), float(np.median(seconds))))
    return {"pairs": sorted(pairs), "curves": table, "load": document["machine"].get("load_average")}


def markdown(name: str, result: dict) -> str:
    regularisers = list(result["curves"])
    lines = [f"**{name}** ({len(result['pairs'])} pairs; load average at the end {result['load']})", "",
             "| IO steps (coarse + refine) | " + " | ".join(f"{r} TRE mm | {r} s (median, mean)" for r in regularisers) + " |",
             "|---|" + "---|---|" * len(regularisers)]
    for points in zip(*(result["curves"][r] for r in regularisers)):
        cells = " | ".join(f"{tre:.3f} | {median:.1f}, {mean:.1f}" for _, _, tre, mean, median in points)
        lines.append(f"| {points[0][0]} | {cells} |")
    return "\n".join(lines)


def main(out_png: str, runs: list[str]) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter

    figure = Figure(figsize=(5.0 * len(runs), 4.0), layout="constrained", dpi=100)
    for index, spec in enumerate(runs):
        name, path = spec.split("=", 1)
        with open(path, encoding="utf-8") as handle:
            result = curves(json.load(handle))
        print(markdown(name, result) + "\n")
        axes = figure.add_subplot(1, len(runs), index + 1)
        for reg, marker in zip(result["curves"], "os^vD"):
            points = result["curves"][reg]
            axes.plot([p[4] for p in points], [p[2] for p in points], marker=marker, label=reg)
            for label, _, tre, _, seconds in points:
                axes.annotate(label.split(" (")[0], (seconds, tre), fontsize=7, xytext=(3, 3),
                              textcoords="offset points")
        axes.set(title=f"{name}: mean TRE against wall time",
                 xlabel="median seconds per pair (fresh process, 1 thread)",
                 ylabel="mean landmark TRE (mm)", yscale="log")
        axes.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))
        axes.yaxis.set_minor_formatter(FormatStrFormatter("%.2g"))
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.savefig(out_png)
    print(f"wrote {out_png}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
