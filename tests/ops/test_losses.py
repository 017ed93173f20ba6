"""Similarity and regularisation losses: analytic values, invariances, masks, errors, gradcheck."""

import pytest
import torch

from graphreg.errors import ConfigError, GraphregError, ShapeError
from graphreg.ops.losses import (RegistrationLoss, bending_loss, diffusion_loss, mind_loss, mse_loss,
                             ncc_loss)
from graphreg.core.spatial import identity_grid, resize_field


def _image(shape=(9, 10, 11), seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((1, 1) + shape, generator=generator, dtype=dtype)


def test_mse_value_and_mask():
    fixed = torch.zeros(1, 1, 4, 4, 4)
    warped = fixed.clone()
    warped[..., :2, :, :] = 2.0
    assert mse_loss(fixed, warped).item() == pytest.approx(2.0)  # half the voxels differ by 2
    mask = torch.zeros_like(fixed)
    mask[..., 2:, :, :] = 1
    assert mse_loss(fixed, warped, mask=mask).item() == 0.0
    with pytest.raises(GraphregError, match="mask"):
        mse_loss(fixed, warped, mask=torch.zeros_like(fixed))


def test_ncc_identical_and_affine_invariant():
    image = _image(dtype=torch.float64)
    assert ncc_loss(image, image, window=3, eps=1e-12).item() == pytest.approx(0.0, abs=1e-8)
    assert ncc_loss(image, 3.0 * image + 0.5, window=3, eps=1e-12).item() == pytest.approx(0.0, abs=1e-8)
    other = _image(seed=1, dtype=torch.float64)
    assert ncc_loss(image, other, window=3).item() > 0.5


def test_mind_loss_zero_for_same_image_and_positive_otherwise():
    image = _image()
    assert mind_loss(image, image).item() == 0.0
    assert mind_loss(image, 2.0 * image + 1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert mind_loss(image, _image(seed=2)).item() > 1e-3


@pytest.mark.parametrize("gradient", [0.0, 0.1, 0.5])
def test_diffusion_of_linear_field(gradient):
    u = torch.zeros(1, 3, 6, 7, 8, dtype=torch.float64)
    u[:, 0] = gradient * identity_grid((6, 7, 8), dtype=torch.float64)[:, 0]  # u_z = g z
    u = u + torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64).view(1, 3, 1, 1, 1)  # a translation adds 0
    assert diffusion_loss(u).item() == pytest.approx(gradient ** 2)


def test_diffusion_skips_single_voxel_axes():
    u = torch.zeros(1, 3, 1, 6, 5, dtype=torch.float64)
    u[:, 1] = 0.2 * identity_grid((1, 6, 5), dtype=torch.float64)[:, 1]  # u_y = 0.2 y on a one-slice field
    assert diffusion_loss(u).item() == pytest.approx(0.2 ** 2)


def test_weighted_diffusion_counts_each_difference_with_both_end_weights():
    u = torch.zeros(1, 3, 6, 4, 5, dtype=torch.float64)
    u[:, 0] = 0.5 * identity_grid((6, 4, 5), dtype=torch.float64)[:, 0]  # u_z = 0.5 z
    weight = torch.full((1, 1, 6, 4, 5), 0.1, dtype=torch.float64)
    weight[:, :, :3] = 1.0  # z = 0, 1, 2 inside
    # along z: 5 differences per column, 2 inside-inside (weight 1), 1 across (0.1), 2 outside (0.01)
    assert diffusion_loss(u, weight).item() == pytest.approx(0.5 ** 2 * (2 + 0.1 + 2 * 0.01) / 5)
    assert diffusion_loss(u, torch.ones_like(weight)).item() == pytest.approx(diffusion_loss(u).item())
    with pytest.raises(ShapeError, match="weight"):
        diffusion_loss(u, weight[:, :, :5])


def test_bending_of_analytic_fields():
    grid = identity_grid((7, 8, 9), dtype=torch.float64)
    z, y, x = grid[0]
    affine = torch.stack([0.3 * x + 1.0, 0.2 * z - y, 0.1 * y]).unsqueeze(0)
    assert bending_loss(affine).item() == pytest.approx(0.0, abs=1e-12)
    quadratic = torch.zeros_like(affine)
    quadratic[0, 0] = 0.7 * z ** 2 / 2
    assert bending_loss(quadratic).item() == pytest.approx(0.7 ** 2)
    mixed = torch.zeros_like(affine)
    mixed[0, 2] = 0.3 * y * x
    assert bending_loss(mixed).item() == pytest.approx(2 * 0.3 ** 2)


def test_exception_shapes():
    with pytest.raises(ShapeError, match="warped"):
        mse_loss(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5))
    with pytest.raises(ShapeError, match="fixed"):
        ncc_loss(torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ShapeError, match="displacement"):
        diffusion_loss(torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ShapeError, match="at least 3"):
        bending_loss(torch.zeros(1, 3, 2, 4, 4))
    with pytest.raises(GraphregError, match="window"):
        ncc_loss(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4), window=4)


def test_registration_loss_combines_terms():
    fixed, warped = _image(), _image(seed=3)
    u = 0.1 * torch.randn(1, 3, 9, 10, 11, generator=torch.Generator().manual_seed(0))
    loss = RegistrationLoss("mse", "diffusion", weight=2.0)
    total, parts = loss(fixed, warped, u)
    assert set(parts) == {"mse", "diffusion"}
    assert total.item() == pytest.approx(parts["mse"] + 2.0 * parts["diffusion"], rel=1e-5)
    with pytest.raises(ConfigError, match="similarity"):
        RegistrationLoss("ssd")
    with pytest.raises(ConfigError, match="window"):
        RegistrationLoss("mind", similarity_options={"window": 5})


@pytest.mark.parametrize("name", ["mse", "ncc", "mind"])
def test_gradcheck_similarities(name):
    fixed = _image((4, 4, 5), seed=0, dtype=torch.float64)
    warped = _image((4, 4, 5), seed=1, dtype=torch.float64).requires_grad_(True)
    options = {"ncc": {"window": 3}, "mind": {"dilation": 1}}.get(name, {})
    fn = {"mse": mse_loss, "ncc": ncc_loss, "mind": mind_loss}[name]
    assert torch.autograd.gradcheck(lambda w: fn(fixed, w, **options), (warped,))


def _weighted_diffusion(u):
    weight = torch.rand(1, 1, *u.shape[2:], dtype=u.dtype, generator=torch.Generator().manual_seed(1))
    return diffusion_loss(u, weight)


@pytest.mark.parametrize("fn", [diffusion_loss, _weighted_diffusion, bending_loss])
def test_gradcheck_regularisers(fn):
    u = torch.randn(1, 3, 4, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(fn, (u.requires_grad_(True),))


def _quadratic_field(spacing_mm: float, extent_mm: float = 60.0, gain: float = 0.01) -> torch.Tensor:
    """``u_z = gain * z^2`` mm (z in mm) sampled every ``spacing_mm`` over ``extent_mm``, in voxels of that grid."""
    count = round(extent_mm / spacing_mm) + 1
    z_mm = torch.arange(count, dtype=torch.float64) * spacing_mm
    field = torch.zeros(1, 3, count, 4, 5, dtype=torch.float64)
    field[0, 0] = (gain * z_mm ** 2 / spacing_mm).view(count, 1, 1)
    return field


def test_diffusion_energy_is_physical_the_same_at_any_spacing_and_grid_factor():
    """The energy is the mean over the box of ``|du/dx|^2`` (mm per mm), so one weight means one
    smoothness at any working spacing or parameter grid: ``u_z = a z^2`` on 0..L mm gives about
    ``4 a^2 L^2 / 3`` on every grid (forward differences: within ``1.5 h / L``)."""
    gain, extent = 0.01, 60.0
    analytic = 4 * gain ** 2 * extent ** 2 / 3
    energies = {spacing: float(diffusion_loss(_quadratic_field(spacing, extent, gain)))
                for spacing in (1.0, 1.5, 2.0, 2.5)}
    for spacing, energy in energies.items():
        assert energy == pytest.approx(analytic, rel=1.6 * spacing / extent), spacing
    # the instance optimisation's parameter grid (grid_factor 2): the field resized to half the voxels
    working = _quadratic_field(1.5, extent, gain)
    coarse = resize_field(working, (working.shape[2] // 2 + 1, 4, 5))
    assert float(diffusion_loss(coarse)) == pytest.approx(analytic, rel=1.6 * 3.0 / extent)
