"""Time-accuracy curves of the keypoint regularisers from `graphreg bench run --json` files (docs/time_accuracy.md).

Each file holds the methods ``R-noio``, ``R@io5``, ``R@io10`` and ``R`` for ``R`` in corrfield and
graphregnet (instance-optimisation budgets: docs/time_accuracy/io*.yaml). Prints one Markdown table
per file (mean TRE, median and mean wall seconds per budget, over the pairs every method finished) and writes a PNG.

Usage: python tools/time_accuracy.py OUT.png NAME=RUN.json [NAME=RUN.json ...]
"""

import json
import sys

import numpy as np

#: method-name suffix -> (budget label, coarse + refinement Adam steps)
BUDGETS = {"-noio": ("0", 0), "@io5": ("5 + 0", 5), "@io10": ("10 + 1", 11), "": ("26 + 5 (default)", 31)}
REGULARISERS = ("corrfield", "graphregnet")


def curves(document: dict) -> dict:
    """``{regulariser: [(budget label, steps, mean TRE mm, mean seconds, median seconds), ...]}``."""
    ok = [r for r in document["rows"] if r["status"] == "ok" and r.get("direction", "forward") == "forward"]
    names = [f"{reg}{suffix}" for reg in REGULARISERS for suffix in BUDGETS]
    pairs = set.intersection(*({r["pair"] for r in ok if r["method"] == name} for name in names))
    table = {}
    for reg in REGULARISERS:
        for suffix, (label, steps) in BUDGETS.items():
            rows = [r for r in ok if r["method"] == f"{reg}{suffix}" and r["pair"] in pairs]
            seconds = [r["seconds_total"] for r in rows]
            table.setdefault(reg, []).append((label, steps, float(np.mean([r["tre"]["mean_mm"] for r in rows])),
                                              float(np.mean(seconds)), float(np.median(seconds))))
    return {"pairs": sorted(pairs), "curves": table, "load": document["machine"].get("load_average")}


def markdown(name: str, result: dict) -> str:
    lines = [f"**{name}** ({len(result['pairs'])} pairs; load average at the start {result['load']})", "",
             "| IO steps (coarse + refine) | corrfield TRE mm | corrfield s (median, mean) "
             "| graphregnet TRE mm | graphregnet s (median, mean) |",
             "|---|---|---|---|---|"]
    for (label, _, tre_c, mean_c, med_c), (_, _, tre_g, mean_g, med_g) in zip(*(result["curves"][r] for r in REGULARISERS)):
        lines.append(f"| {label} | {tre_c:.3f} | {med_c:.1f}, {mean_c:.1f} | {tre_g:.3f} | {med_g:.1f}, {mean_g:.1f} |")
    return "\n".join(lines)


def main(out_png: str, runs: list[str]) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.0 * len(runs), 4.0), layout="constrained", dpi=100)
    for index, spec in enumerate(runs):
        name, path = spec.split("=", 1)
        with open(path, encoding="utf-8") as handle:
            result = curves(json.load(handle))
        print(markdown(name, result) + "\n")
        axes = figure.add_subplot(1, len(runs), index + 1)
        for reg, marker in zip(REGULARISERS, "os"):
            points = result["curves"][reg]
            axes.plot([p[4] for p in points], [p[2] for p in points], marker=marker, label=reg)
            for label, _, tre, _, seconds in points:
                axes.annotate(label.split(" (")[0], (seconds, tre), fontsize=7, xytext=(3, 3),
                              textcoords="offset points")
        axes.set(title=f"{name}: mean TRE against wall time",
                 xlabel="median seconds per pair (fresh process, 1 thread)",
                 ylabel="mean landmark TRE (mm)", yscale="log")
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.savefig(out_png)
    print(f"wrote {out_png}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
