"""Lung mask: an analytic two-lung phantom with a trachea, and the real POPI CT."""


import numpy as np
import pytest
from scipy import ndimage

from graphreg.datasets.lungmask import lung_mask
from graphreg.datasets.paths import POPI_CT
from graphreg.errors import GeometryError, GraphregError
from graphreg.geometry import Grid
from graphreg.io.images import read_image
from graphreg.volume import Volume

POPI = POPI_CT


def _phantom(spacing=2.0):
    """Body (40 HU) in air, two ellipsoidal lungs (-850 HU) joined by a trachea (-1000 HU).

    Axis z grows towards the head (identity direction, LPS). Returns the volume and the analytic
    lung volume in ml.
    """
    shape = (70, 80, 100)  # z, y, x
    z, y, x = np.meshgrid(*[np.arange(n) * spacing for n in shape], indexing="ij")
    hu = np.full(shape, -1000.0)
    body = ((x - 100) / 90) ** 2 + ((y - 80) / 70) ** 2 <= 1
    hu[body] = 40.0
    radii = np.array([50.0, 40.0, 30.0])  # z, y, x in mm
    lungs = np.zeros(shape, dtype=bool)
    for cx in (60.0, 140.0):
        lungs |= ((z - 70) / radii[0]) ** 2 + ((y - 80) / radii[1]) ** 2 + ((x - cx) / radii[2]) ** 2 <= 1
    hu[lungs] = -850.0
    # trachea from the top slice down to z = 100 mm, then two main bronchi into the lungs
    trachea = ((x - 100) ** 2 + (y - 80) ** 2 <= 8**2) & (z >= 100)
    for cx in (60.0, 140.0):
        t = np.clip((x - 100) / (cx - 100), 0, 1)
        along = (np.abs(x - (100 + t * (cx - 100))) < 1e-6) | True
        bronchus = ((z - (100 - 15 * t)) ** 2 + (y - 80) ** 2 <= 5**2) & (t > 0) & (t < 1) & along
        trachea |= bronchus
    hu[trachea & body] = -1000.0
    # vessels inside the lungs (to be filled)
    hu[lungs & ((x % 20) < 2) & ((y % 20) < 2)] = 40.0
    volume_ml = 2 * 4.0 / 3.0 * np.pi * radii.prod() / 1000.0
    grid = Grid(shape, (spacing,) * 3, (0.0, 0.0, 0.0))
    return Volume(hu.astype(np.int16), grid), volume_ml


def test_phantom_two_lungs_without_trachea():
    volume, volume_ml = _phantom()
    mask = lung_mask(volume)
    assert mask.array.dtype == np.uint8 and mask.grid == volume.grid
    labels, count = ndimage.label(mask.array)
    assert count == 2
    measured = mask.array.sum() * 8.0 / 1000.0
    assert measured == pytest.approx(volume_ml, rel=0.08)
    # the trachea above the lungs is not in the mask
    assert mask.array[62:, 38:42, 48:52].sum() == 0
    # vessels are filled: the mask is solid inside each lung
    assert mask.array[35, 40, 30] == 1 and mask.array[35, 40, 70] == 1


def test_exception():
    volume, _ = _phantom()
    with pytest.raises(GeometryError, match="working_spacing_mm"):
        lung_mask(volume, working_spacing_mm=0.0)
    solid = Volume(np.full((20, 20, 20), 40, dtype=np.int16), Grid((20, 20, 20)))
    with pytest.raises(GraphregError, match="volume"):
        lung_mask(solid)


@pytest.mark.skipif(not POPI.is_file(), reason="POPI reference CT not available")
def test_popi_two_lungs_plausible_volume():
    ct = read_image(POPI)
    mask = lung_mask(ct)
    labels, count = ndimage.label(mask.array)
    sizes = np.bincount(labels.ravel())[1:] * np.prod(ct.grid.spacing) / 1e6  # litres
    assert count == 2
    assert 3.0 < sizes.sum() < 8.0
    assert sizes.min() > 0.35 * sizes.sum()
    # left and right lungs lie on either side of the midline
    centres = ndimage.center_of_mass(mask.array, labels, [1, 2])
    mid_x = ct.grid.shape[2] / 2
    assert min(c[2] for c in centres) < mid_x < max(c[2] for c in centres)
