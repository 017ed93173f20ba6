"""Measure how much the field of one registration changes with the CPU thread count.

Usage (the numbers in docs/reproducibility.md)::

    python tools/thread_reproducibility.py --threads 1,2,4 --repeats 2            # demo pair, 2 mm default
    python tools/thread_reproducibility.py --config configs/lowres_3mm.yaml --threads 1,2

Registers the demo pair (assets/demo) in this process once per thread count (and ``--repeats``
times for the first count), then prints, against the first count's field: whether the field is
bit-identical (``field_sha256``), the largest difference of the field in mm over the fixed grid,
and the difference of the mean landmark TRE in mm.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import graphreg  # noqa: F401  (before torch: the OpenMP wait policy)
from graphreg.api import register
from graphreg.datasets.pairs import read_pair
from graphreg.apps.demo import DEMO_PAIR
from graphreg.ops.metrics import landmark_errors
from graphreg.result.registration import array_checksum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--config", default=None, help="YAML config (default: graphreg's 2 mm default)")
    parser.add_argument("--repeats", type=int, default=2, help="runs with the first thread count (default 2)")
    args = parser.parse_args()
    pair = read_pair(DEMO_PAIR)
    counts = [int(t) for t in args.threads.split(",")]
    runs = []
    for count in [counts[0]] * args.repeats + counts[1:]:
        result = register(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, config=args.config,
                          device="cpu", threads=count)
        field = result.field.to_mm_array()
        tre = float(landmark_errors(result.transform_points(pair.fixed_landmarks_mm), pair.moving_landmarks_mm).mean())
        runs.append({"threads": count, "field": field, "sha": array_checksum(result.field.displacement.numpy()),
                     "tre": tre, "seconds": result.timings["total"]})
    first = runs[0]
    rows = []
    for run in runs:
        rows.append({"threads": run["threads"], "field_sha256": run["sha"][:16],
                     "identical": run["sha"] == first["sha"],
                     "max_abs_field_diff_mm": float(np.abs(run["field"] - first["field"]).max()),
                     "tre_mm": run["tre"], "tre_diff_mm": run["tre"] - first["tre"],
                     "seconds": round(run["seconds"], 1)})
    print(json.dumps({"config": args.config or "default (2 mm)", "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
