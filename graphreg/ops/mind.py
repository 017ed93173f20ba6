"""MIND-SSC: modality-independent self-similarity context descriptors (torch).

Heinrich et al., "Towards realtime multimodal fusion for image-guided interventions using
self-similarity context", MICCAI 2013. For every voxel, 12 channels compare pairs of voxels of the
6-neighbourhood at distance ``dilation``: the 12 pairs of neighbours that lie on *different*
axes (they are ``sqrt(2) * dilation`` apart; the 3 opposite pairs are not used). Per channel::

    d_k(x) = box_radius( (I(x + a_k) - I(x + b_k))^2 )        patch distance
    d_k(x) <- d_k(x) - min_j d_j(x)
    v(x)   = mean_j d_j(x), clamped to [0.001, 1000] * mean_x v(x)   local variance
    MIND_k(x) = exp(-d_k(x) / v(x))

The descriptor is invariant to ``a * I + b`` for ``a > 0`` (differences cancel ``b``; ``d`` and
``v`` both scale with ``a^2``) and lies in ``(0, 1]``, with at least one channel equal to 1.

Convention:
    - Image ``(B, 1, D, H, W)`` any floating dtype, computed in float32 (or float64 when given);
      lengths in voxels; replicate padding at the borders.
    - Channel ``k`` compares neighbours ``NEIGHBOURS[PAIRS[k][0]]`` and
      ``NEIGHBOURS[PAIRS[k][1]]`` (offsets ``(z, y, x)`` in units of ``dilation``).
"""

from __future__ import annotations

import torch

from graphreg.errors import GraphregError, ShapeError, is_int_at_least
from graphreg.ops.filters import box_filter, shift

#: The 6-neighbourhood, offsets ``(z, y, x)`` in units of the dilation.
NEIGHBOURS = ((-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1))

#: The 12 pairs of :data:`NEIGHBOURS` indices that are ``sqrt(2)`` apart (lexicographic order).
PAIRS = tuple((i, j) for i in range(6) for j in range(i + 1, 6)
              if sum((a - b) ** 2 for a, b in zip(NEIGHBOURS[i], NEIGHBOURS[j])) == 2)


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2,
             out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """MIND-SSC descriptor of a 3D image.

    Args:
        image: the image, any intensity scale.
        radius: patch radius of the box filter that sums the squared differences (voxels);
            0 compares single voxels.
        dilation: distance of the 6-neighbourhood voxels from the centre (voxels, >= 1).
        out_dtype: dtype of the result, e.g. ``torch.float16`` to halve the memory of the
            features on a GPU; default: the computation dtype (float32, or float64 for a float64
            image).

    Shapes:
        image: ``(B, 1, D, H, W)``.
        returns: ``(B, 12, D, H, W)``, values in ``(0, 1]``.

    Raises:
        ShapeError: ``image`` is not ``(B, 1, D, H, W)``.
        GraphregError: ``radius`` or ``dilation`` is not a valid integer.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 5 or image.shape[1] != 1:
        raise ShapeError(f"image: expected shape (B, 1, D, H, W), "
                         f"got {tuple(getattr(image, 'shape', ()))}")
    if not is_int_at_least(radius, 0):
        raise GraphregError(f"radius: expected an integer >= 0 voxels, got {radius!r}")
    if not is_int_at_least(dilation, 1):
        raise GraphregError(f"dilation: expected an integer >= 1 voxels, got {dilation!r}")
    dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    image = image.to(dtype)
    neighbours = [shift(image, tuple(dilation * o for o in n)) for n in NEIGHBOURS]
    distance = torch.cat([(neighbours[i] - neighbours[j]).square_() for i, j in PAIRS], dim=1)
    del neighbours
    distance = box_filter(distance, radius)

    distance = distance - distance.amin(dim=1, keepdim=True)
    variance = distance.mean(dim=1, keepdim=True)
    scale = variance.mean(dim=(1, 2, 3, 4), keepdim=True)
    # The floor keeps exp(-0 / v) = 1 (not NaN) where the image is constant everywhere.
    lower = (scale * 1e-3).clamp_min(torch.finfo(dtype).tiny)
    variance = torch.maximum(torch.minimum(variance, scale * 1e3), lower)
    mind = distance.div(variance).neg_().exp_()
    return mind if out_dtype is None else mind.to(out_dtype)
