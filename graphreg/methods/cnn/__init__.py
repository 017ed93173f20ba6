"""Dense CNN registration baselines: VoxelMorph-style U-Net, DIRNet-style B-spline network and the
linear + deformable network, with scaling-and-squaring integration and inference.

Every network takes ``forward(fixed, moving)`` images ``(B, 1, D, H, W)`` and returns a displacement
``(B, 3, D, H, W)`` in voxels ``(z, y, x)``, fixed -> moving; importing this package registers the
architectures ``"voxelmorph"``, ``"bspline-cnn"`` and ``"linear-deformable"`` for
:func:`graphreg.training.checkpoint.load_model`.
"""

from graphreg.methods.cnn.bspline_net import BSplineNet
from graphreg.methods.cnn.integrate import ScalingAndSquaring, integrate_velocity
from graphreg.methods.cnn.linear_deformable import LinearDeformableNet
from graphreg.methods.cnn.register import register_cnn
from graphreg.methods.cnn.unet import UNet3d, VoxelMorph

__all__ = ["BSplineNet", "LinearDeformableNet", "ScalingAndSquaring", "UNet3d", "VoxelMorph",
           "integrate_velocity", "register_cnn"]
