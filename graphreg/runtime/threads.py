"""CPU threads: how many a run uses, and the OpenMP setting that keeps them from collapsing on a busy host.

The one place graphreg decides anything about threads (measured reasons: ``docs/threads.md``):

- :func:`configure_openmp` runs when ``graphreg`` is imported, before graphreg imports torch:
  unless the environment already says otherwise (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``), it
  sets ``OMP_WAIT_POLICY=PASSIVE`` so that idle OpenMP threads sleep instead of spinning.
  libgomp reads the variable once, when torch loads it; a program that imported torch before
  graphreg keeps the policy it started with (:func:`openmp_wait_policy` says which).
- :func:`resolve_threads`: the thread count of a run: the ``threads`` argument (``--threads``),
  else the environment variable ``GRAPHREG_THREADS``, else :func:`available_cores` (the CPUs this
  process may run on, capped by a cgroup CPU quota). The count never depends on the load, so the
  same command gives the same thread count, hence the same field (``docs/reproducibility.md``).
- :func:`use_threads`: torch's intra-op threads (MKL follows) and SimpleITK's default thread count
  for the duration of a run, restored afterwards.

This module imports neither torch nor SimpleITK at import time.
"""

from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from graphreg.errors import GraphregError

#: environment variable giving the default thread count
ENV_VAR = "GRAPHREG_THREADS"
#: the OpenMP wait policy graphreg sets when the environment names none
WAIT_POLICY = "PASSIVE"
_OPENMP_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
_CGROUP_ROOT = Path("/sys/fs/cgroup")

#: the wait policy libgomp started with in this process (set by :func:`configure_openmp`)
_policy_at_start: Optional[str] = None


def configure_openmp() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``.

    Takes effect only when torch (which loads libgomp) is not imported yet; records which policy
    this process's OpenMP runtime started with for :func:`openmp_wait_policy`.
    """
    global _policy_at_start
    if _policy_at_start is not None:
        return
    loaded = "torch" in sys.modules
    if not loaded and not any(key in os.environ for key in _OPENMP_KEYS):
        os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    if loaded:
        _policy_at_start = "set before graphreg was imported" if any(k in os.environ for k in _OPENMP_KEYS) \
            else "spinning (torch was imported before graphreg)"
    else:
        _policy_at_start = " ".join(f"{key}={os.environ[key]}" for key in _OPENMP_KEYS if key in os.environ)


def openmp_wait_policy() -> str:
    """How idle OpenMP threads wait in this process, e.g. ``"OMP_WAIT_POLICY=PASSIVE"``, or
    ``"spinning (torch was imported before graphreg)"`` (libgomp's default spin of about 3 ms)."""
    return _policy_at_start or "unknown"


def parse_threads(value, name: str = "threads") -> int:
    """``value`` as a thread count: an integer >= 1, or a string of one (from the environment).

    Raises:
        GraphregError: ``"threads: expected an integer >= 1, got '0'"`` for 0, negatives,
            fractions, booleans, empty or non-numeric text.
    """
    count = None
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            count = int(text)
    elif isinstance(value, int) and not isinstance(value, bool):
        count = value
    if count is None or count < 1:
        raise GraphregError(f"{name}: expected an integer >= 1, got {value!r}")
    return count


def _cgroup_cpu_limit(root: Path = _CGROUP_ROOT) -> Optional[float]:
    """CPUs allowed by a cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cores(cgroup_root: Path = _CGROUP_ROOT) -> int:
    """CPUs this process may use: its CPU affinity (``os.sched_getaffinity``), capped by a cgroup CPU
    quota rounded up (a container limited to 1.5 CPUs gets 2); at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def resolve_threads(threads=None, share: int = 1) -> int:
    """The thread count of a run: ``threads``, else ``$GRAPHREG_THREADS``, else :func:`available_cores`
    divided among ``share`` processes running at once (e.g. local batch workers; at least 1).

    Raises:
        GraphregError: ``threads`` or the environment variable is not an integer >= 1.
    """
    if threads is not None:
        return parse_threads(threads)
    if os.environ.get(ENV_VAR, "").strip():
        return parse_threads(os.environ[ENV_VAR], ENV_VAR)
    return max(1, available_cores() // share)


@contextmanager
def use_threads(threads=None) -> Iterator[int]:
    """Run the block with :func:`resolve_threads` ``(threads)`` torch intra-op threads and SimpleITK
    threads; yields the count and restores both settings afterwards."""
    import SimpleITK as sitk
    import torch

    count = resolve_threads(threads)
    before = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    torch.set_num_threads(count)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(before[0])
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before[1])


def thread_report(count: int) -> dict:
    """What ``report.json`` records about the threads of a run."""
    return {"threads": count, "openmp_wait_policy": openmp_wait_policy()}


__all__ = ["ENV_VAR", "available_cores", "configure_openmp", "openmp_wait_policy", "parse_threads",
           "resolve_threads", "thread_report", "use_threads"]
