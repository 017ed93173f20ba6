"""Lung mask: an analytic two-lung phantom with a trachea, and the real POPI CT."""


import numpy as np
import pytest
from scipy import ndimage

from graphreg.ops.lungmask import lung_mask
from graphreg.datasets.paths import POPI_CT
from graphreg.errors import GeometryError, GraphregError
from graphreg.core.geometry import Grid
from graphreg.io.images import read_image
from graphreg.core.volume import Volume

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


def _popi_4mm():
    return read_image(POPI).with_spacing((4.0, 4.0, 4.0))


def _padding_cases(ct, lungs):
    """The real CT with the padding and field-of-view defects of real scans (name, image)."""
    a = ct.array
    zs = np.flatnonzero(lungs.array.any(axis=(1, 2)))
    low, high = zs.min(), zs.max()
    _, y, x = np.meshgrid(*[np.arange(n) for n in a.shape], indexing="ij")
    outside = (y - a.shape[1] / 2) ** 2 + (x - a.shape[2] / 2) ** 2 > (0.46 * a.shape[2]) ** 2
    for name, edit in (("-1024 band at the lung base", lambda b: b.__setitem__(slice(0, low + 3), -1024)),
                       ("-1024 band at the apex", lambda b: b.__setitem__(slice(high - 2, None), -1024)),
                       ("-2048 outside a reconstruction circle", lambda b: b.__setitem__(outside, -2048)),
                       ("-3024 circle and a -1024 band", lambda b: (b.__setitem__(outside, -3024),
                                                                   b.__setitem__(slice(0, low + 3), -1024)))):
        changed = a.copy()
        edit(changed)
        yield name, Volume(changed, ct.grid)
    yield "lung base and apex cut by the field of view", ct.cropped((low + 3, 0, 0), (high - 3,) + a.shape[1:])


@pytest.mark.skipif(not POPI.is_file(), reason="POPI reference CT not available")
def test_popi_padding_and_field_of_view_cases():
    from graphreg.checks.masks import mask_checks

    ct = _popi_4mm()
    reference = lung_mask(ct)
    for name, image in _padding_cases(ct, reference):
        mask = lung_mask(image)
        expected = reference.resampled(mask.grid, "nearest").array > 0
        found = mask.array > 0
        dice = 2 * (expected & found).sum() / (expected.sum() + found.sum())
        assert dice > 0.97, name
        assert all(check.passed for check in mask_checks(mask, image, "mask")), name
