"""Checks that keep a registration from being silently wrong.

Every check gives a :class:`Check` (name, verdict, measured value, limit); the limits live in
:mod:`graphreg.checks.limits` (measured reasons in ``docs/quality_checks.md``).

- :mod:`graphreg.checks.masks`: automatic lung masks checked before use, fallbacks.
- :mod:`graphreg.checks.prealign`: the lungs' centre-of-mass translation against a
  mask-independent translation search.
- :mod:`graphreg.checks.outcome`: a finished registration judged without ground truth,
  giving its ``status`` (``ok`` / ``suspect`` / ``failed``).
- :mod:`graphreg.checks.pair`: the three above wired around
  :func:`graphreg.methods.keypoint.preprocess.working_pair` for every method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

#: statuses from best to worst
STATUSES = ("ok", "suspect", "failed")


@dataclass(frozen=True)
class Check:
    """One check's outcome.

    Attributes:
        name: short identifier, e.g. ``"moving_mask.two_lungs"``.
        verdict: ``"ok"``, ``"suspect"`` or ``"failed"``.
        value: the measured number (None when it could not be measured).
        limit: the rule it was held to, e.g. ``">= 0.2"``.
        detail: one sentence for the log when the verdict is not ``ok``.
    """

    name: str
    verdict: str
    value: Optional[float]
    limit: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.verdict == "ok"

    def to_dict(self) -> dict:
        value = None if self.value is None else round(float(self.value), 4)
        return {"name": self.name, "verdict": self.verdict, "value": value, "limit": self.limit,
                "detail": self.detail}


def worst(verdicts: Sequence[str]) -> str:
    """The worst of ``verdicts`` (``"ok"`` for none)."""
    return max(verdicts, key=STATUSES.index, default="ok")


def lower_limit(name: str, value: Optional[float], failed: Optional[float], suspect: Optional[float],
                what: str) -> Check:
    """A check that ``value`` stays at or above its limits (``failed`` below the first, ``suspect``
    below the second; either may be None). A missing value fails."""
    return _bounded(name, value, failed, suspect, what, below_is_bad=True)


def upper_limit(name: str, value: Optional[float], failed: Optional[float], suspect: Optional[float],
                what: str) -> Check:
    """A check that ``value`` stays at or below its limits (mirror of :func:`lower_limit`)."""
    return _bounded(name, value, failed, suspect, what, below_is_bad=False)


def _bounded(name, value, failed, suspect, what, below_is_bad: bool) -> Check:
    sign = ">=" if below_is_bad else "<="
    opposite = "<" if below_is_bad else ">"
    limit = f"{sign} {suspect if suspect is not None else failed:g}"
    if suspect is not None and failed is not None:
        limit += f" (failed {opposite} {failed:g})"
    if value is None or value != value:  # NaN
        return Check(name, "failed", None, limit, f"{what}: could not be measured")
    for verdict, bound in (("failed", failed), ("suspect", suspect)):
        if bound is not None and (value < bound if below_is_bad else value > bound):
            return Check(name, verdict, float(value), limit, f"{what} {value:.3g} (limit {sign} {bound:g})")
    return Check(name, "ok", float(value), limit)


__all__ = ["STATUSES", "Check", "lower_limit", "upper_limit", "worst"]
