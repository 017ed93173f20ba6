"""Optional dependencies: which pip extra brings which modules, checked where a feature starts.

The core (``pip install graphreg``) registers and writes results. Figures, cohort runs on a
Dask cluster, the benchmark's peers (checked by :mod:`graphreg.apps.bench.methods`), torch-cluster's
kNN (a pure-torch kNN builds the same graph without it) and the tests' tools are extras; a feature
that needs one of the first two calls :func:`require_extra` first, so a missing package is one clear line naming
the extra instead of an ``ImportError`` deep inside a run.
"""

from __future__ import annotations

import importlib.util

from graphreg.errors import GraphregError

#: extra -> (importable module, its PyPI package) pairs; ``pyproject.toml`` lists the same packages
EXTRAS: dict[str, tuple[tuple[str, str], ...]] = {
    "viz": (("matplotlib", "matplotlib"), ("skimage", "scikit-image"), ("open3d", "open3d-cpu")),
    "batch": (("distributed", "dask[distributed]"),),
}


class MissingExtraError(GraphregError):
    """An optional package that a feature needs is not installed."""


def missing_packages(extra: str) -> list[str]:
    """PyPI names of the packages of ``extra`` that cannot be imported here."""
    if extra not in EXTRAS:
        raise GraphregError(f"extra: expected one of {', '.join(EXTRAS)}, got {extra!r}")
    return [package for module, package in EXTRAS[extra] if importlib.util.find_spec(module) is None]


def require_extra(extra: str, feature: str) -> None:
    """Raise :class:`MissingExtraError` when a package of ``extra`` is missing.

    Args:
        extra: a key of :data:`EXTRAS`.
        feature: what needs it, for the message (e.g. ``"graphreg viz"``).
    """
    missing = missing_packages(extra)
    if missing:
        raise MissingExtraError(f"{feature} needs {', '.join(missing)}: pip install 'graphreg[{extra}]'")
