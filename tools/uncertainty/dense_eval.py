"""Does the dense uncertainty map mean something? Score it against ground-truth fields (#23 item 4).

python tools/uncertainty/dense_eval.py PAIRS_DIR METHOD[,METHOD] OUT.json [VOXELS]

For each pair and keypoint method (default config, in-process, one thread): the map
(``Registration.uncertainty_map``, working grid) at up to VOXELS (default 100000) fixed lung voxels
of the working grid (evenly strided), against
  - the dense graph-stage error: |densified keypoint displacements - truth| (the config's densifier,
    i.e. the field before instance optimisation), and
  - the final field's error: |working field - truth|.
Per pair and pooled: Spearman of map vs error, median predicted / actual, and the share of voxels
whose error is under the map's 90 % bound (map * scale_p90 / scale_median).
"""
import json
import sys
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from graphreg.api import register
from graphreg.apps.bench.sources import open_pairs
from graphreg.core.config import load_config
from graphreg.core.field import DisplacementField
from graphreg.methods.keypoint.densify import densify
from graphreg.methods.keypoint.driver import densify_options
from graphreg.result.uncertainty import SCALES


def graph_stage_field(reg) -> DisplacementField:
    """The keypoint displacements densified on the working grid as the pipeline densifies them."""
    grid = reg.working_field.grid
    cfg = load_config(reg.config)
    points = torch.from_numpy(grid.world_to_voxel(reg.keypoints_mm))
    vectors = torch.from_numpy(grid.mm_vectors_to_voxel(reg.keypoint_displacements_mm))
    dense = densify(points, vectors, grid.shape, method=cfg.densify.method, **densify_options(cfg))
    return DisplacementField(dense.float(), grid)


def scores(predicted, bound, error):
    return {"spearman": float(spearmanr(predicted, error)[0]),
            "median_predicted_over_actual": float(np.median(predicted) / np.median(error)),
            "coverage_p90": float(np.mean(error <= bound)),
            "mean_error_mm": float(error.mean()), "mean_predicted_mm": float(predicted.mean())}


def main(pairs_dir, methods, out_path, max_voxels=100_000):
    pooled = {m: {"map": [], "e_graph": [], "e_final": []} for m in methods}
    rows = {}
    for ref in open_pairs(pairs_dir):
        pair = ref.load()
        truth = pair.load_gt_field().to("cpu")
        for method in methods:
            start = time.time()
            reg = register(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, method=method,
                           device="cpu", threads=1)
            seconds = time.time() - start
            start = time.time()
            error_map = reg.uncertainty_map()
            map_seconds = time.time() - start
            lungs = reg.fixed_lungs.resampled(error_map.grid, "nearest").array > 0
            voxels = np.argwhere(lungs)
            voxels = voxels[:: max(1, len(voxels) // max_voxels)]
            points = error_map.grid.voxel_to_world(voxels.astype(np.float64))
            true = truth.transform_points(points) - points
            e_graph = np.linalg.norm(graph_stage_field(reg).transform_points(points) - points - true, axis=1)
            e_final = np.linalg.norm(reg.transform_points(points) - points - true, axis=1)
            predicted = error_map.array[tuple(voxels.T)].astype(np.float64)
            scale = SCALES[method]
            bound = predicted * scale.scale_p90 / scale.scale_median
            rows[f"{ref.name}/{method}"] = {"graph_stage": scores(predicted, bound, e_graph),
                                            "final": scores(predicted, bound, e_final),
                                            "voxels": int(len(voxels)), "register_s": seconds, "map_s": map_seconds,
                                            "map_zero_share": float(np.mean(predicted <= 0))}
            for key, values in (("map", predicted), ("e_graph", e_graph), ("e_final", e_final)):
                pooled[method][key].append(values)
            print(ref.name, method, f"register {seconds:.0f} s, map {map_seconds:.1f} s",
                  json.dumps(rows[f"{ref.name}/{method}"]), flush=True)
    summary = {}
    for method, parts in pooled.items():
        predicted = np.concatenate(parts["map"])
        scale = SCALES[method]
        bound = predicted * scale.scale_p90 / scale.scale_median
        summary[method] = {"graph_stage": scores(predicted, bound, np.concatenate(parts["e_graph"])),
                           "final": scores(predicted, bound, np.concatenate(parts["e_final"]))}
        for target in ("graph_stage", "final"):
            summary[method][target]["spearman_median_over_pairs"] = float(np.median(
                [row[target]["spearman"] for key, row in rows.items() if key.endswith("/" + method)]))
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump({"pairs": pairs_dir, "max_voxels": max_voxels, "pooled": summary, "per_pair": rows}, handle, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","), sys.argv[3], *(int(a) for a in sys.argv[4:5]))
