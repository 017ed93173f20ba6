"""The registration methods of ``graphreg.register``, in one table.

The API, the command line's help texts, checkpoint loading and the benchmark read this table; a
new method is one :class:`MethodInfo` here plus the code that runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from graphreg.errors import GraphregError

#: method families and the module that runs each
FAMILIES = {
    "keypoint": "graphreg.methods.keypoint (keypoints, correlation search, graph regulariser, densification, Adam)",
    "classical": "graphreg.methods.classical (SimpleITK)",
    "cnn": "graphreg.methods.cnn (dense network, then Adam instance optimisation)",
}


@dataclass(frozen=True)
class MethodInfo:
    """One registration method.

    Attributes:
        name: the name passed as ``method=`` / ``--method``.
        family: a key of :data:`FAMILIES`.
        description: one line for help texts and listings.
        weights: folder of the shipped ``model.pt`` under ``graphreg/assets`` (learned methods), else None.
        recipe: name of its training recipe in ``graphreg/configs`` (learned methods), else None.
    """

    name: str
    family: str
    description: str
    weights: Optional[str] = None
    recipe: Optional[str] = None

    @property
    def learned(self) -> bool:
        """Whether the method runs trained weights (shipped, or ``model=``)."""
        return self.weights is not None


METHODS: dict[str, MethodInfo] = {info.name: info for info in (
    MethodInfo("corrfield", "keypoint", "keypoint pipeline with the learning-free tree belief-propagation "
               "regulariser (corrField)"),
    MethodInfo("graphregnet", "keypoint", "keypoint pipeline with the learned GraphRegNet regulariser",
               weights="graphregnet", recipe="graphregnet"),
    MethodInfo("demons", "classical", "SimpleITK fast symmetric forces demons, 3-level pyramid"),
    MethodInfo("bspline-ffd", "classical", "SimpleITK cubic B-spline FFD, masked metric, L-BFGS-B, pyramid"),
    MethodInfo("voxelmorph", "cnn", "VoxelMorph-style diffeomorphic U-Net", weights="voxelmorph",
               recipe="voxelmorph"),
    MethodInfo("bspline-cnn", "cnn", "DIRNet-style B-spline CNN", weights="bspline_cnn", recipe="bspline_cnn"),
    MethodInfo("linear-deformable", "cnn", "linear + deformable network (Stergios et al.)",
               weights="linear_deformable", recipe="linear_deformable"),
)}

#: the method used when none is named
DEFAULT_METHOD = "corrfield"


def method_names(family: Optional[str] = None) -> tuple[str, ...]:
    """Names of the methods, all or of one family, in the table's order."""
    if family is not None and family not in FAMILIES:
        raise GraphregError(f"family: expected one of {', '.join(FAMILIES)}, got {family!r}")
    return tuple(name for name, info in METHODS.items() if family is None or info.family == family)


def method_info(name: str) -> MethodInfo:
    """The table entry of ``name``.

    Raises:
        GraphregError: unknown method (the message lists the known ones).
    """
    if name not in METHODS:
        raise GraphregError(f"method: expected one of {', '.join(METHODS)}, got {name!r}")
    return METHODS[name]


def methods_help() -> str:
    """``"corrfield (default) | graphregnet | ..."`` for command-line help texts."""
    return " | ".join(f"{name} (default)" if name == DEFAULT_METHOD else name for name in METHODS)
