"""graphreg: deformable registration of 3D lung CT by geometric graph learning on keypoints.

Conventions (see ``DESIGN.md`` of the project): volumes are ``(z, y, x)`` arrays or
``(B, C, D, H, W)`` tensors; geometry travels in :class:`graphreg.geometry.Grid`; displacement
fields are voxels ``(z, y, x)`` on the fixed grid pointing fixed -> moving.
"""

from .api import register
from .errors import GraphregError, ResourceError
from .field import DisplacementField
from .geometry import Grid
from .io import read_image, read_landmarks, write_image, write_landmarks
from .result import load_result
from .volume import Volume

__version__ = "0.1.0"

__all__ = ["DisplacementField", "GraphregError", "Grid", "ResourceError", "Volume", "__version__", "load_result",
           "read_image", "read_landmarks", "register", "write_image", "write_landmarks"]
