"""Where and from what code a benchmark ran: the commit and the machine, recorded in its JSON."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Optional


def source_commit() -> Optional[str]:
    """The git commit of the graphreg source being run (``+dirty`` when it has uncommitted changes),
    or None outside a git checkout (an installed wheel)."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """``cpu`` (model), ``cores`` (logical CPUs this process may use), ``gpu`` (CUDA device name
    or None), ``load_average`` (1-minute, when recorded), ``python``, ``torch``, ``platform``."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": _cpu_model(), "cores": cores,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


__all__ = ["machine", "source_commit"]
