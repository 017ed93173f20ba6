"""Dense CNN baselines: output shapes on odd sizes, integration, branch maths, inference wrapper."""

import numpy as np
import pytest
import torch

from graphreg import Grid, Volume
from graphreg.methods.cnn import BSplineNet, LinearDeformableNet, VoxelMorph, integrate_velocity, register_cnn
from graphreg.methods.cnn.linear_deformable import affine_displacement, gradients_to_displacement
from graphreg.errors import ConfigError, ShapeError
from graphreg.methods.keypoint.densify import bspline_control_shape
from graphreg.result.registration import Registration
from graphreg.core.spatial import compose, identity_grid

SHAPE = (23, 29, 31)

SMALL = {
    "voxelmorph": lambda: VoxelMorph(encoder=(4, 8, 8), decoder=(8, 8, 8, 4), integration_steps=4),
    "voxelmorph-direct": lambda: VoxelMorph(encoder=(4, 8), decoder=(8, 8, 4), integration_steps=0),
    "voxelmorph-fullres": lambda: VoxelMorph(encoder=(4, 8), decoder=(8, 8), integration_steps=3,
                                             integration_downsize=1),
    "bspline-cnn": lambda: BSplineNet(features=(4, 8, 8), control_spacing=4, head=8),
    "linear-deformable": lambda: LinearDeformableNet(features=(4, 4, 4), dilations=(1, 2, 3), head=4),
}


def _pair(shape=SHAPE, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((1, 1) + shape, generator=generator), torch.rand((1, 1) + shape, generator=generator)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_smoke_output_shape_on_odd_sizes(name):
    torch.manual_seed(0)
    model = SMALL[name]()
    fixed, moving = _pair()
    displacement = model(fixed, moving)
    assert displacement.shape == (1, 3) + SHAPE
    assert torch.isfinite(displacement).all()
    # every network starts near the identity
    assert displacement.abs().max() < 0.05
    displacement.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_exception_mismatched_inputs():
    model = SMALL["voxelmorph"]()
    with pytest.raises(ShapeError, match="moving"):
        model(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 9))
    with pytest.raises(ConfigError, match="integration_steps"):
        VoxelMorph(integration_steps=-1)
    with pytest.raises(ConfigError, match="control_spacing"):
        BSplineNet(control_spacing=0)


def test_model_args_recorded_as_plain_values():
    model = SMALL["bspline-cnn"]()
    assert model.model_args == {"features": [4, 8, 8], "control_spacing": 4, "head": 8}


@pytest.mark.parametrize("steps", [0, 1, 5])
def test_integration_of_constant_velocity_is_the_translation(steps):
    velocity = torch.tensor([1.5, -2.0, 0.75]).view(1, 3, 1, 1, 1).expand(1, 3, 9, 10, 11).contiguous()
    assert torch.allclose(integrate_velocity(velocity, steps), velocity, atol=1e-5)


def test_integration_is_invertible_for_smooth_velocity():
    grid = identity_grid((16, 16, 16))
    bump = torch.exp(-((grid - 7.5) ** 2).sum(1, keepdim=True) / 40.0)
    velocity = 2.0 * bump * torch.tensor([1.0, 0.5, -0.5]).view(1, 3, 1, 1, 1)
    forward = integrate_velocity(velocity, 7)
    backward = integrate_velocity(-velocity, 7)
    residual = compose(forward, backward)[..., 3:-3, 3:-3, 3:-3]
    assert residual.abs().max() < 0.05 * velocity.abs().max()
    assert (forward - velocity).abs().max() > 0.01  # the flow differs from the velocity itself


def test_gradcheck_integration():
    velocity = 0.3 * torch.randn(1, 3, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(lambda v: integrate_velocity(v, 2), (velocity.requires_grad_(True),))


def test_gradients_to_displacement_identity_and_stretch():
    ones = torch.ones(1, 3, 5, 6, 7)
    assert gradients_to_displacement(ones).abs().max() == 0.0
    stretched = ones.clone()
    stretched[:, 2] = 1.5  # x positions 0.5, 2.0, 3.5, ... -> u_x = 0.5 * (x + 1) - 0.5 ... = 0.5 x
    displacement = gradients_to_displacement(stretched)
    x = identity_grid((5, 6, 7))[:, 2]
    assert torch.allclose(displacement[:, 2], 0.5 * x + 0.5)
    assert displacement[:, :2].abs().max() == 0.0


def test_affine_displacement_translation_and_scaling():
    shape = (5, 7, 9)
    points = identity_grid(shape)
    theta = torch.zeros(1, 12)
    theta[0, 9:] = torch.tensor([0.5, 0.0, -1.0])  # normalised units: half-extent = (2, 3, 4) voxels
    shift = affine_displacement(theta, points, shape)
    assert torch.allclose(shift, torch.tensor([1.0, 0.0, -4.0]).view(1, 3, 1, 1, 1).expand_as(shift))
    theta = torch.zeros(1, 12)
    theta[0, 0] = 0.1  # z scaled by 1.1 about the centre z = 2
    scaled = affine_displacement(theta, points, shape)
    assert torch.allclose(scaled[:, 0], 0.1 * (points[:, 0] - 2.0), atol=1e-6)


def test_bspline_net_control_grid():
    model = SMALL["bspline-cnn"]()
    fixed, moving = _pair()
    assert model.coefficients(fixed, moving).shape[2:] == bspline_control_shape(SHAPE, 4)


def _synthetic_ct(shape=(28, 30, 32), spacing=3.0):
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    centre = [(n - 1) / 2 for n in shape]
    lungs = np.zeros(shape, bool)
    for side in (-1, 1):
        lungs |= (((z - centre[0]) / 9) ** 2 + ((y - centre[1]) / 8) ** 2
                  + ((x - centre[2] - side * 7) / 5) ** 2) < 1
    rng = np.random.default_rng(0)
    hu = np.where(lungs, -850.0, 30.0) + rng.normal(0, 20, shape)
    grid = Grid(shape, (spacing,) * 3, origin=(-40.0, 10.0, 5.0))
    return Volume(hu.astype(np.float32), grid), Volume(lungs.astype(np.uint8), grid)


def test_register_cnn_returns_registration_on_fixed_grid(tmp_path):
    from graphreg.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = SMALL["voxelmorph"]()
    path = save_checkpoint(tmp_path / "model.pt", model, config={"data": {"spacing_mm": 4.0}})
    ct, lungs = _synthetic_ct()
    result = register_cnn(ct, ct, lungs, lungs, model=path, instance_optimisation=False, device="cpu")
    assert isinstance(result, Registration)
    assert result.method == "voxelmorph"
    assert result.working_field.grid.spacing == (4.0, 4.0, 4.0)  # the training spacing is used
    assert result.field.grid == ct.grid
    assert result.field.displacement.abs().max() < 0.1  # untrained network, same images: near identity
    assert {"load", "network", "total"} <= set(result.timings)


def test_register_cnn_with_instance_optimisation_recovers_shift():
    from scipy import ndimage

    torch.manual_seed(0)
    ct, lungs = _synthetic_ct()
    texture = ndimage.gaussian_filter(np.random.default_rng(1).standard_normal(ct.array.shape), 1.5)
    ct = Volume((np.where(lungs.array > 0, -800.0, 30.0) + 300.0 * texture / texture.std()).astype(np.float32),
                ct.grid)
    shifted = Volume(np.roll(ct.array, 1, axis=2), ct.grid)  # fixed x appears at x + 1 voxel in the moving image
    config = {"preprocess": {"spacing_mm": 3.0, "prealign": False}, "instance_opt": {"iterations": 20, "lr": 0.3}}
    model = SMALL["voxelmorph-direct"]()
    plain = register_cnn(ct, shifted, lungs, lungs, model=model, config=config, instance_optimisation=False)
    refined = register_cnn(ct, shifted, lungs, lungs, model=model, config=config, instance_optimisation=True)
    assert plain.method == "voxelmorph" and refined.method == "voxelmorph+io"
    assert "instance_opt" in refined.timings
    inside = torch.from_numpy(lungs.array > 0)
    mean = [float(refined.field.displacement[0, c][inside].mean()) for c in range(3)]
    assert mean[2] == pytest.approx(1.0, abs=0.4)
    assert abs(mean[0]) < 0.3 and abs(mean[1]) < 0.3
    assert plain.field.displacement.abs().max() < 0.1
