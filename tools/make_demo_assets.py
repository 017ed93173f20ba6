"""Write the embedded demo pair ``assets/demo/`` (a small inhale/exhale pair with ground truth).

The POPI end-inhale CT, cropped to the lungs plus a margin and resampled to 3 mm isotropic
(int16), moved by the breathing of DIR-Lab 4DCT case 4 at amplitude 1 (see
:mod:`graphreg.datasets.breathing`), ground truth on an 8 mm control grid. The pair's randomness
(noise, landmark choice) uses seed :data:`DEMO_SEED`, distinct from the benchmark's seeds, and the
grid differs from both benchmark sets, so the demo pair is not a benchmark pair.

Usage::

    python tools/make_demo_assets.py [--out assets/demo]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from graphreg.datasets.benchmark import POPI_CT, load_source, low_resolution
from graphreg.datasets.breathing import dirlab_motion, synthesize_pair
from graphreg.datasets.pairs import write_pair

DEMO_CASE = 4
DEMO_SEED = 20240
DEMO_SPACING_MM = 3.0
DEMO_MARGIN_MM = 10.0
DEMO_CONTROL_MM = 8.0


def make_demo(out: Path) -> int:
    """Write the demo pair into ``out``; return its total size in bytes."""
    ct, lung = load_source(POPI_CT)
    ct, lung = low_resolution(ct, lung, DEMO_SPACING_MM, DEMO_MARGIN_MM)
    motion = dirlab_motion(DEMO_CASE, ct, lung, amplitude=1.0, control_mm=DEMO_CONTROL_MM)
    meta = {"source": f"dirlab-4dct-case{DEMO_CASE}", "motion": "dirlab", "dirlab_case": DEMO_CASE,
            "amplitude": 1.0, "seed": DEMO_SEED, "fixed_ct": POPI_CT.name,
            "note": "graphreg demo pair: POPI phase 00 (Vandemeulebroucke et al., ICCR 2007) moved "
                    "by DIR-Lab 4DCT case 4 landmark motion (Castillo et al., PMB 2009)"}
    pair = synthesize_pair(ct, motion, lung, np.random.default_rng(DEMO_SEED), name="demo", meta=meta)
    write_pair(pair, out)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    tre = pair.meta["initial_tre_mm"]
    print(f"demo pair written to {out}: {ct.grid.describe()}")
    print(f"initial TRE {tre['mean_mm']:.2f} mm (max {tre['max_mm']:.2f}), "
          f"min J {pair.meta['jacobian_min']:.3f}, total {size / 1e6:.2f} MB")
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets" / "demo")
    make_demo(parser.parse_args().out)


if __name__ == "__main__":
    main()
