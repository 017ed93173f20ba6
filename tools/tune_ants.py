"""Try a few ANTs SyN settings on benchmark pairs and print TRE, folding and time (Markdown table).

Each setting runs in its own process per pair (the benchmark runner's isolation), so its timings
and peak memory are those of a user's run. The settings tried and the table they gave are in
docs/benchmark.md ("ANTs settings").

Usage: python tools/tune_ants.py PAIRS_DIR [PAIR_NAME ...] [--json OUT.json]
"""

import argparse
import functools
import json

import numpy as np

from graphreg.apps.bench.peers import AntsSettings, ants_method
from graphreg.apps.bench.runner import run_isolated, scalar_metrics
from graphreg.apps.bench.sources import open_pairs

#: the settings tried, by label (CC radius 4 with 80-40-20 iterations did not finish one 2 mm pair
#: in 19 minutes on the busy shared host, so every candidate stops at half resolution or does few
#: full-resolution iterations)
CANDIDATES = {
    "cc2-40-20-0": AntsSettings(metric_radius=2, iterations=(40, 20, 0)),
    "cc4-40-20-0": AntsSettings(metric_radius=4, iterations=(40, 20, 0)),
    "cc2-80-40-10": AntsSettings(metric_radius=2, iterations=(80, 40, 10)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs_dir")
    parser.add_argument("names", nargs="*", help="pair folder names (default: all)")
    parser.add_argument("--settings", default=",".join(CANDIDATES), help="comma-separated labels")
    parser.add_argument("--json", help="write every row here")
    args = parser.parse_args()
    pairs = [p for p in open_pairs(args.pairs_dir) if not args.names or p.name in args.names]
    rows = []
    print("| setting | pair | TRE mean mm | p75 mm | max mm | folding % | SDlogJ | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for label in args.settings.split(","):
        method = functools.partial(ants_method, settings=CANDIDATES[label])
        for pair in pairs:
            row = run_isolated(f"ants:{label}", method, pair, "cpu")
            rows.append(row)
            m = scalar_metrics(row)
            cells = [m["tre_mean_mm"], m["tre_p75_mm"], m["tre_max_mm"], m["folding_percent"],
                     m["std_log_jacobian"], m["seconds_total"]]
            text = " | ".join("-" if v is None else f"{v:.3f}" for v in cells)
            print(f"| {label} | {pair.name} | {text} |" + ("" if row["status"] == "ok" else f" {row['error']}"),
                  flush=True)
        tres = [scalar_metrics(r)["tre_mean_mm"] for r in rows if r["method"] == f"ants:{label}"]
        if all(t is not None for t in tres):
            print(f"| {label} | mean | {np.mean(tres):.3f} | | | | | |", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
