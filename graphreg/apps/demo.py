"""``graphreg demo``: register the bundled demo pair and report the landmark TRE before and after."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from graphreg.errors import GraphregError
from graphreg.io.resources import asset_path

#: the embedded demo pair (made by ``tools/make_demo_assets.py``), stored at 3 mm
DEMO_PAIR = asset_path("demo")


def run_demo(out, method: str = "corrfield", device: Optional[str] = None, overwrite: bool = True,
             config=None, progress: Optional[Callable[[str], None]] = None, threads: Optional[int] = None,
             outputs=None, started: Optional[float] = None) -> dict:
    """Register the demo pair as ``graphreg register`` would (same defaults), write the result folder
    ``out`` and return its report.

    The report (also ``out/report.json``) holds at least ``tre_before_mm``, ``tre_after_mm``,
    ``seconds_total`` and ``method``. ``threads``: as for :func:`graphreg.register`; ``outputs``
    and ``started`` are passed to :meth:`graphreg.Registration.save`.
    """
    from graphreg.api import register
    from graphreg.datasets.pairs import read_pair
    from graphreg.ops.metrics import landmark_errors, summarize_errors

    if not DEMO_PAIR.is_dir():
        raise GraphregError(f"demo pair not found at {DEMO_PAIR}; run tools/make_demo_assets.py")
    pair = read_pair(DEMO_PAIR)
    result = register(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, method=method,
                      config=config, device=device, progress=progress, threads=threads)
    before = summarize_errors(landmark_errors(pair.fixed_landmarks_mm, pair.moving_landmarks_mm))
    after = summarize_errors(landmark_errors(result.transform_points(pair.fixed_landmarks_mm),
                                             pair.moving_landmarks_mm))
    tre = {"tre_before_mm": before["mean_mm"], "tre_before_p75_mm": before["p75_mm"],
           "tre_after_mm": after["mean_mm"], "tre_after_p75_mm": after["p75_mm"],
           "tre_after_max_mm": after["max_mm"], "n_landmarks": after["n_points"]}
    result.save(out, fixed_landmarks_mm=pair.fixed_landmarks_mm, overwrite=overwrite, outputs=outputs,
                started=started, pair=str(DEMO_PAIR), **tre)
    return json.loads((Path(out) / "report.json").read_text(encoding="utf-8"))
