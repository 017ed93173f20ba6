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

For comparison, the same keypoint values interpolated by normalised Gaussian convolution
(``gauss<sigma>``: Gaussian-weighted mean of the keypoints' predicted errors, sigma in mm; a convex
combination, so positive and local, but not the displacements' densifier).
"""
import json
import sys
import time

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import spearmanr

from graphreg.api import register
from graphreg.apps.bench.sources import open_pairs
from graphreg.core.config import load_config
from graphreg.core.field import DisplacementField
from graphreg.methods.keypoint.densify import densify
from graphreg.methods.keypoint.densify import densify_options
from graphreg.result.uncertainty import SCALES


def graph_stage_field(reg) -> DisplacementField:
    """The keypoint displacements densified on the working grid as the pipeline densifies them."""
    grid = reg.working_field.grid
    cfg = load_config(reg.config)
    points = torch.from_numpy(grid.world_to_voxel(reg.keypoints_mm))
    vectors = torch.from_numpy(grid.mm_vectors_to_voxel(reg.keypoint_displacements_mm))
    dense = densify(points, vectors, grid.shape, method=cfg.densify.method, **densify_options(cfg))
    return DisplacementField(dense.float(), grid)


#: sigmas (mm) of the normalised-convolution comparison maps
GAUSS_SIGMAS_MM = (4.0, 8.0)


def gauss_map(reg, sigma_mm: float) -> np.ndarray:
    """The keypoints' predicted errors splatted to their nearest working voxel and averaged with
    Gaussian weights: blur(values) / blur(counts); voxels the blur does not reach take the nearest
    reached voxel's value."""
    grid = reg.working_field.grid
    scale = SCALES[reg.method].scale_median
    voxels = np.clip(np.round(grid.world_to_voxel(reg.keypoints_mm)).astype(int), 0, np.array(grid.shape) - 1)
    sums, counts = np.zeros(grid.shape), np.zeros(grid.shape)
    np.add.at(sums, tuple(voxels.T), scale * np.asarray(reg.keypoint_uncertainty_mm))
    np.add.at(counts, tuple(voxels.T), 1.0)
    sigma = [sigma_mm / s for s in grid.spacing_zyx]
    sums, counts = ndimage.gaussian_filter(sums, sigma), ndimage.gaussian_filter(counts, sigma)
    reached = counts > 1e-12
    out = np.where(reached, sums / np.where(reached, counts, 1.0), 0.0)
    index = ndimage.distance_transform_edt(~reached, return_distances=False, return_indices=True)
    return out[tuple(index)]


def scores(predicted, bound, error):
    return {"spearman": float(spearmanr(predicted, error)[0]),
            "median_predicted_over_actual": float(np.median(predicted) / np.median(error)),
            "coverage_p90": float(np.mean(error <= bound)),
            "mean_error_mm": float(error.mean()), "mean_predicted_mm": float(predicted.mean())}


def main(pairs_dir, methods, out_path, max_voxels=100_000):
    variants = ["map"] + [f"gauss{sigma:g}" for sigma in GAUSS_SIGMAS_MM]
    pooled = {m: {key: [] for key in variants + ["e_graph", "e_final"]} for m in methods}
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
            maps = {"map": error_map.array[tuple(voxels.T)].astype(np.float64)}
            for sigma in GAUSS_SIGMAS_MM:
                maps[f"gauss{sigma:g}"] = gauss_map(reg, sigma)[tuple(voxels.T)]
            ratio = SCALES[method].scale_p90 / SCALES[method].scale_median
            row = {"voxels": int(len(voxels)), "register_s": seconds, "map_s": map_seconds,
                   "map_zero_share": float(np.mean(maps["map"] <= 0))}
            for name, predicted in maps.items():
                suffix = "" if name == "map" else "_" + name
                row["graph_stage" + suffix] = scores(predicted, ratio * predicted, e_graph)
                row["final" + suffix] = scores(predicted, ratio * predicted, e_final)
                pooled[method][name].append(predicted)
            rows[f"{ref.name}/{method}"] = row
            pooled[method]["e_graph"].append(e_graph)
            pooled[method]["e_final"].append(e_final)
            print(ref.name, method, f"register {seconds:.0f} s, map {map_seconds:.1f} s",
                  json.dumps(rows[f"{ref.name}/{method}"]), flush=True)
    summary = {}
    for method, parts in pooled.items():
        ratio = SCALES[method].scale_p90 / SCALES[method].scale_median
        summary[method] = {}
        for name in variants:
            predicted = np.concatenate(parts[name])
            suffix = "" if name == "map" else "_" + name
            for target, key in (("graph_stage", "e_graph"), ("final", "e_final")):
                entry = scores(predicted, ratio * predicted, np.concatenate(parts[key]))
                entry["spearman_median_over_pairs"] = float(np.median(
                    [row[target + suffix]["spearman"] for run, row in rows.items() if run.endswith("/" + method)]))
                summary[method][target + suffix] = entry
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump({"pairs": pairs_dir, "max_voxels": max_voxels, "pooled": summary, "per_pair": rows}, handle, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","), sys.argv[3], *(int(a) for a in sys.argv[4:5]))
