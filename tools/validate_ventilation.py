"""Ventilation maps of a result on a generated pair against the pair's exact answer.

The pair (default: the demo pair) was made by :func:`graphreg.datasets.breathing.synthesize_pair`
with mass-preserving density change, so its ground-truth field gives the true Jacobian ``J`` and
the true ventilation ``1/J - 1`` (fixed = inhale); the HU formula is exact for it up to noise and
interpolation. Compared, inside the fixed lungs (all of them, and the lungs eroded by 2 voxels):
the maps of the result folder's field and the same maps from the ground-truth field (the floor of
each method on this pair), and, with ``--peer NAME``, the maps of a benchmark method's field on the
same pair (e.g. ``elastix``). Voxel-wise Spearman and mean absolute error.

    python tools/validate_ventilation.py RESULT_DIR [--pair PAIR_DIR] [--peer elastix] [--json OUT.json] [--figure OUT.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> dict:
    from scipy import ndimage

    from graphreg.datasets.pairs import read_pair
    from graphreg.apps.demo import DEMO_PAIR
    from graphreg.result.loaded import load_result
    from graphreg.analysis.ventilation import (HU_SMOOTHING_MM, agreement, jacobian_map, smooth_in_mask, tissue_mass,
                                      ventilation_from_jacobian, ventilation_maps)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result_dir")
    parser.add_argument("--pair", default=str(DEMO_PAIR))
    parser.add_argument("--peer", action="append", default=[], help="a `graphreg bench methods` name whose "
                        "field on the pair is compared too (repeatable)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--figure", default=None, help="PNG: the true map, graphreg's Jacobian and HU maps")
    args = parser.parse_args(argv)

    pair = read_pair(args.pair)
    lungs = pair.fixed_mask
    truth_field = pair.dense_gt_field()
    true_jac = jacobian_map(truth_field)
    truth = ventilation_from_jacobian(true_jac, fixed_is_inhale=True)
    eroded = ndimage.binary_erosion(lungs.array > 0, iterations=2)
    fields = {"graphreg": load_result(args.result_dir).field, "ground truth field": truth_field}
    for name in args.peer:
        from graphreg.apps.bench.methods import get_method

        fields[name] = get_method(name)(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, "cpu").field
    out = {"pair": args.pair, "result_dir": args.result_dir,
           "true_ventilation_mean": float(np.mean(truth[lungs.array > 0])), "fields": {}}
    for name, field in fields.items():
        warped = field.warp(pair.moving, default=-1000.0)
        rows = {}
        for sigma in (0.0, HU_SMOOTHING_MM):
            maps = ventilation_maps(field, pair.fixed, warped, lungs, hu_smoothing_mm=sigma)  # inhale: auto
            keys = ("ventilation_jacobian", "ventilation_hu") if sigma == 0 else ("ventilation_hu",)
            rows_maps_jac = maps.maps["ventilation_jacobian"].array
            for key in keys:
                estimate = maps.maps[key].array.astype(np.float64)
                label = key if key == "ventilation_jacobian" else f"{key} (hu_smoothing_mm {sigma:g})"
                rows[label] = {"lungs": agreement(estimate, truth, lungs.array),
                               "lungs_eroded_2vox": agreement(estimate, truth, eroded),
                               "mean": float(estimate[lungs.array > 0].mean())}
        smoothed = smooth_in_mask(rows_maps_jac, lungs.array, HU_SMOOTHING_MM, lungs.grid.spacing_zyx)
        rows[f"ventilation_jacobian (smoothed as the HU, {HU_SMOOTHING_MM:g} mm; this tool only)"] = {
            "lungs": agreement(smoothed, truth, lungs.array), "lungs_eroded_2vox": agreement(smoothed, truth, eroded),
            "mean": float(smoothed[lungs.array > 0].mean())}
        lung_jac = maps.maps["jacobian"].array.astype(np.float64)
        hu = {"fixed": pair.fixed.array.astype(np.float64), "warped": warped.array.astype(np.float64)}
        for region, mask in (("lungs", lungs.array > 0), ("lungs_eroded_2vox", eroded)):
            rows[f"mass_ratio_moving_to_fixed ({region})"] = (tissue_mass(hu["warped"][mask], lung_jac[mask])
                                                              / tissue_mass(hu["fixed"][mask], 1.0))
        rows["inhale_detected"] = maps.summary["inhale"]  # the truth: fixed
        out["fields"][name] = rows
        if name == "graphreg" and args.figure:
            from graphreg.apps.viz.slices import plot_ventilation, save_figure
            from graphreg.core.volume import Volume

            inside = lungs.array > 0
            shown = {"truth: 1/J_true - 1": Volume(np.where(inside, truth, 0).astype(np.float32), lungs.grid),
                     "graphreg, Jacobian": maps.maps["ventilation_jacobian"],
                     "graphreg, HU": maps.maps["ventilation_hu"]}
            save_figure(plot_ventilation(pair.fixed, shown, lungs), args.figure)
    text = json.dumps(out, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    print(text)
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
