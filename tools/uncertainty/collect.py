"""Per-keypoint spread, graph-stage and final errors, and candidate predictors, for #23 item 4.

python tools/uncertainty/collect.py PAIRS_DIR OUT.npz METHOD[,METHOD]  (in-process, the methods' default configs)
"""
import sys, time
import numpy as np
from scipy import ndimage
from graphreg.apps.bench.sources import open_pairs
from graphreg.apps.bench.methods import get_method

pairs_dir, out, methods = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
data = {}
for ref in open_pairs(pairs_dir):
    pair = ref.load()
    gt = pair.load_gt_field().to("cpu")
    mask = np.asarray(pair.fixed_mask.array) > 0
    depth_mm = ndimage.distance_transform_edt(mask, sampling=pair.fixed_mask.grid.spacing_zyx)
    for m in methods:
        t = time.time()
        res = get_method(m)(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, "cpu")
        p, d, s = (np.asarray(a, np.float64) for a in res.keypoints)
        field = res.field.to("cpu")
        true = gt.transform_points(p) - p
        final = field.transform_points(p) - p
        idx = np.clip(np.round(pair.fixed_mask.grid.world_to_voxel(p)).astype(int), 0, np.array(mask.shape) - 1)
        depth = depth_mm[idx[:, 0], idx[:, 1], idx[:, 2]]
        lm = np.linalg.norm(field.transform_points(np.asarray(pair.fixed_landmarks_mm)) - np.asarray(pair.moving_landmarks_mm), axis=1)
        data[f"{ref.name}/{m}"] = dict(points=p, graph=d, spread=s, true=true, final=final, depth=depth, lm_err=lm)
        print(ref.name, m, f"{time.time() - t:.0f}s", "final kp err %.3f" % np.linalg.norm(final - true, axis=1).mean(),
              "graph err %.3f" % np.linalg.norm(d - true, axis=1).mean(), "TRE %.3f" % lm.mean(), flush=True)
np.savez(out, **{f"{k}|{kk}": v for k, dd in data.items() for kk, v in dd.items()})
