"""Where the reference data lives: ``$GRAPHREG_DATA`` or ``../shared/data`` beside the repository."""

from __future__ import annotations

import os
from pathlib import Path


def reference_data_dir() -> Path:
    """The folder holding ``popi00/`` and ``dirlab/`` (override with ``GRAPHREG_DATA``)."""
    override = os.environ.get("GRAPHREG_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


POPI_CT = reference_data_dir() / "popi00" / "popi_00.nii.gz"
DIRLAB_4DCT_DIR = reference_data_dir() / "dirlab" / "4dct"
