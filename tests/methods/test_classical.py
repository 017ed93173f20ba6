"""Classical SimpleITK baselines recover a known smooth displacement on a small synthetic pair."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from graphreg import Grid, Volume
from graphreg.methods.classical import register_classical
from graphreg.errors import ConfigError
from graphreg.result.registration import Registration
from graphreg.core.spatial import warp

SHAPE = (30, 32, 34)
CONFIG = {"preprocess": {"prealign": False, "spacing_mm": 3.0, "crop_margin_mm": 9.0}}


@pytest.fixture(scope="module")
def pair():
    """Textured 'lungs' in a body; the moving image is the fixed one under a smooth Gaussian bump
    ``v`` (moving -> fixed), whose fixed -> moving inverse ``u(x) = -v(x + u(x))`` is the answer."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij")
    centre = [(n - 1) / 2 for n in SHAPE]
    lungs = np.zeros(SHAPE, bool)
    for side in (-1, 1):
        lungs |= (((z - centre[0]) / 10.5) ** 2 + ((y - centre[1]) / 9.5) ** 2
                  + ((x - centre[2] - side * 7) / 5.5) ** 2) < 1
    texture = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.2)
    hu = np.where(lungs, -800.0 + 600.0 * texture / texture.std(), 40.0)
    bump = np.exp(-(((z - centre[0]) / 8) ** 2 + ((y - centre[1]) / 9) ** 2 + ((x - centre[2]) / 10) ** 2) / 2)
    v = torch.tensor(np.stack([1.5 * bump, 0.75 * bump, np.zeros(SHAPE)]))[None]
    moving = warp(torch.tensor(hu)[None, None], v)[0, 0].numpy()
    u = -v.clone()
    for _ in range(20):
        u = -warp(v, u)
    grid = Grid(SHAPE, (3.0, 3.0, 3.0), origin=(10.0, -20.0, 30.0))
    mask = Volume(lungs.astype(np.uint8), grid)
    return Volume(hu.astype(np.float32), grid), Volume(moving.astype(np.float32), grid), mask, u.float(), lungs


def _error(registration, u, lungs):
    """Mean end-point error (voxels) inside the lungs, and the mean ground-truth magnitude."""
    inside = torch.from_numpy(lungs)
    error = (registration.field.displacement - u)[0].norm(dim=0)[inside].mean()
    return float(error), float(u[0].norm(dim=0)[inside].mean())


@pytest.mark.parametrize("variant", ["fast-symmetric", "diffeomorphic"])
def test_demons_recovers_smooth_shift(pair, variant):
    fixed, moving, mask, u, lungs = pair
    options = {"variant": variant, "shrink_factors": [2, 1], "iterations": [40, 20], "smoothing_sigmas": [1.0, 0.0],
               "field_sigma_mm": 4.0}
    result = register_classical(fixed, moving, mask, mask, method="demons", config=CONFIG, options=options)
    assert isinstance(result, Registration) and result.method == "demons"
    assert result.field.grid == fixed.grid
    error, before = _error(result, u, lungs)
    assert before > 0.8
    assert error < 0.3 * before


@pytest.mark.slow
def test_bspline_ffd_recovers_smooth_shift(pair):
    fixed, moving, mask, u, lungs = pair
    options = {"control_spacing_mm": 15.0, "shrink_factors": [2, 1], "smoothing_sigmas": [1.0, 0.0],
               "iterations": 30, "sampling_percentage": 0.5}
    result = register_classical(fixed, moving, mask, mask, method="bspline-ffd", config=CONFIG, options=options)
    error, before = _error(result, u, lungs)
    assert error < 0.35 * before
    assert result.config["bspline-ffd"]["control_spacing_mm"] == 15.0


def test_identical_images_give_near_zero_field(pair):
    fixed, _, mask, _, _ = pair
    options = {"shrink_factors": [1], "iterations": [10], "smoothing_sigmas": [0.0]}
    result = register_classical(fixed, fixed, mask, mask, method="demons", config=CONFIG, options=options)
    assert result.field.displacement.abs().max() < 0.05


def test_exception_bad_method_and_options(pair):
    fixed, moving, mask, _, _ = pair
    with pytest.raises(ConfigError, match="method"):
        register_classical(fixed, moving, mask, mask, method="elastic")
    with pytest.raises(ConfigError, match="demons.step"):
        register_classical(fixed, moving, mask, mask, method="demons", options={"step": 1})
    with pytest.raises(ConfigError, match="one length"):
        register_classical(fixed, moving, mask, mask, method="demons", options={"iterations": [5]})
    with pytest.raises(ConfigError, match="variant"):
        register_classical(fixed, moving, mask, mask, method="demons", config=CONFIG,
                           options={"variant": "thirion"})


def test_bspline_ffd_samples_at_least_min_samples_per_level(pair):
    """1e-4 of the shrunk lung mask is no voxel at all, which ITK rejects; the floor keeps it working."""
    fixed, moving, mask, _, _ = pair
    options = {"shrink_factors": [4, 1], "smoothing_sigmas": [1.0, 0.0], "iterations": 2,
               "sampling_percentage": 1e-4, "min_samples": 500}
    result = register_classical(fixed, moving, mask, mask, method="bspline-ffd", config=CONFIG, options=options)
    assert torch.isfinite(result.field.displacement).all()
    with pytest.raises(ConfigError, match="min_samples"):
        register_classical(fixed, moving, mask, mask, method="bspline-ffd", config=CONFIG,
                           options={**options, "min_samples": 0})
