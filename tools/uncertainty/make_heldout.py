"""Held-out calibration pairs (docs/uncertainty.md): training anatomies (never the benchmark's), other motion sets and seeds.

python tools/uncertainty/make_heldout.py OUT_DIR COUNT
"""
import sys
from pathlib import Path
import numpy as np
from graphreg.datasets.acquisition import Acquisition, SourceCT, realistic_pair
from graphreg.datasets.anatomy import TRAINING_ANATOMIES, Anatomy, MotionPattern
from graphreg.datasets.benchmark import POPI_CT, REALISTIC_SETS
from graphreg.datasets.pairs import write_pair

out, count = Path(sys.argv[1]), int(sys.argv[2])
source = SourceCT.load(POPI_CT)  # run from the repository root (POPI_CT is under ../shared)
acq = Acquisition(spacing_mm=(2.0,) * 3)
for i in range(count):
    set_name = REALISTIC_SETS[(5 + i) % len(REALISTIC_SETS)]  # benchmark pairs 1-5 use sets 0-4
    anatomy = Anatomy.draw(TRAINING_ANATOMIES.start + 9500 + i, "training")
    pattern = MotionPattern.draw(set_name, np.random.default_rng([77, 313, i]))
    pair = realistic_pair(source, anatomy, pattern, [77, i], acq, 300, f"pair_{i + 1:02d}",
                          meta={"source": f"dirlab-{set_name}", "purpose": "calibration (held out)"})
    write_pair(pair, out / pair.name)
    print(pair.name, set_name, pair.meta["initial_tre_mm"]["mean_mm"], flush=True)
