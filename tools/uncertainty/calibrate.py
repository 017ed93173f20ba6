"""Fit per-regulariser error scales on held-out pairs and score them on benchmark pairs (docs/uncertainty.md).

python tools/uncertainty/calibrate.py HELDOUT.npz BENCH.npz [BENCH2.npz ...] OUT.json
(the .npz files from tools/uncertainty/collect.py). For each regulariser, target error (final field
at the keypoints, graph stage) and predictor: scale_median = median(error / predictor) and
scale_p90 = its 90th percentile on the held-out keypoints; on each benchmark file the median of
predicted / actual, the Spearman correlation (pooled keypoints and the median over pairs) and the
fraction of keypoints under the 90 % bound. Predictor "loglinear": log error fitted by least squares
on log spread, log(disagreement + 0.05) and log(1 / (1 + depth)) on the held-out keypoints.
"""
import json
import sys

import numpy as np
from scipy.stats import spearmanr

PREDICTORS = ("spread", "disagree", "shallow", "loglinear")


def load(path):
    z = np.load(path)
    out = {}
    for key in z.files:
        run, field = key.split("|")
        out.setdefault(run, {})[field] = z[key]
    return out


def features(d):
    return {"e_final": np.linalg.norm(d["final"] - d["true"], axis=1),
            "e_graph": np.linalg.norm(d["graph"] - d["true"], axis=1),
            "spread": d["spread"], "disagree": np.linalg.norm(d["graph"] - d["final"], axis=1),
            "shallow": 1.0 / (1.0 + d["depth"])}


def design(f):
    return np.stack([np.log(f["spread"]), np.log(f["disagree"] + 0.05), np.log(f["shallow"]),
                     np.ones_like(f["spread"])], 1)


def runs_of(runs, method):
    per_pair = [features(d) for k, d in sorted(runs.items()) if k.split("/")[1] == method]
    return {k: np.concatenate([f[k] for f in per_pair]) for k in per_pair[0]}, per_pair


def main(held_path, bench_paths, out_path):
    held = load(held_path)
    benches = {p: load(p) for p in bench_paths}
    result = {}
    for method in sorted({k.split("/")[1] for k in held}):
        h, _ = runs_of(held, method)
        for target in ("e_final", "e_graph"):
            coef = np.linalg.lstsq(design(h), np.log(h[target] + 0.02), rcond=None)[0]

            def predictor(f, name):
                return np.exp(design(f) @ coef) if name == "loglinear" else f[name]

            for name in PREDICTORS:
                ratio = h[target] / np.maximum(predictor(h, name), 1e-9)
                a, b = float(np.median(ratio)), float(np.quantile(ratio, 0.9))
                row = {"scale_median": a, "scale_p90": b,
                       "heldout_spearman": float(spearmanr(predictor(h, name), h[target])[0])}
                if name == "loglinear":
                    row["coefficients"] = coef.tolist()
                for path, runs in benches.items():
                    pool, per_pair = runs_of(runs, method)
                    value, err = predictor(pool, name), pool[target]
                    row[path] = {
                        "n_keypoints": int(len(err)), "n_pairs": len(per_pair),
                        "median_pred_over_actual": float(np.median(a * value / np.maximum(err, 1e-9))),
                        "spearman_pooled": float(spearmanr(value, err)[0]),
                        "spearman_per_pair_median": float(np.median([spearmanr(predictor(f, name), f[target])[0]
                                                                     for f in per_pair])),
                        "coverage90": float(np.mean(err <= b * value)),
                        "mean_error_mm": float(err.mean()), "mean_predicted_mm": float((a * value).mean())}
                result[f"{method}|{target}|{name}"] = row
                cells = " ".join(f"[{p}: pred/actual {r['median_pred_over_actual']:.2f} rho {r['spearman_pooled']:.2f} "
                                 f"(pair median {r['spearman_per_pair_median']:.2f}) cover {100 * r['coverage90']:.0f}%]"
                                 for p, r in ((p, row[p]) for p in benches))
                print(f"{method:12s} {target:8s} {name:10s} a={a:.3f} b={b:.3f} "
                      f"held-out rho {row['heldout_spearman']:.2f} {cells}")
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:-1], sys.argv[-1])
