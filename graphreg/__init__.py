"""graphreg: deformable registration of 3D lung CT by geometric graph learning on keypoints.

Conventions (see ``DESIGN.md`` of the project): volumes are ``(z, y, x)`` arrays or
``(B, C, D, H, W)`` tensors; geometry travels in :class:`graphreg.core.geometry.Grid`; displacement
fields are voxels ``(z, y, x)`` on the fixed grid pointing fixed -> moving.
"""

from graphreg.runtime.threads import configure_openmp

configure_openmp()  # before torch is imported: idle OpenMP threads sleep (docs/threads.md)

from graphreg.api import register  # noqa: E402
from graphreg.errors import GraphregError, ResourceError  # noqa: E402
from graphreg.core.field import DisplacementField  # noqa: E402
from graphreg.core.geometry import Grid  # noqa: E402
from graphreg.io import read_image, read_landmarks, write_image, write_landmarks  # noqa: E402
from graphreg.result.loaded import load_result  # noqa: E402
from graphreg.core.volume import Volume  # noqa: E402

__version__ = "0.1.0"

__all__ = ["DisplacementField", "GraphregError", "Grid", "ResourceError", "Volume", "__version__", "load_result",
           "read_image", "read_landmarks", "register", "write_image", "write_landmarks"]
