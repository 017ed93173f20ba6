"""The faster forms of pipeline pieces equal the straightforward ones they replace (issue 9 profile)."""

import math
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from graphreg.core.field import DisplacementField
from graphreg.core.geometry import ALIGN_CORNERS, Grid
from graphreg.ops.losses import diffusion_loss
from graphreg.ops.filters import binary_dilation, box_filter, repeated_box_filter
from graphreg.methods.keypoint.instance_opt import (_Adam, _diffusion_weight, _downsample, _masked_weight, _resize_axis,
                                            instance_optimise, smooth_field)
from graphreg.result.registration import resample_field
from graphreg.core.spatial import grid_sample_parallel, identity_grid, resize_field, sample_points, warp


def test_smooth_field_gradcheck():
    field = torch.randn(1, 2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: smooth_field(f, 2), (field,))


def test_smooth_field_backward_is_the_smoothing_itself():
    """<S a, b> = <a, S b>: the box smoothing with edge replication is self-adjoint."""
    torch.manual_seed(0)
    a, b = torch.randn(2, 1, 3, 6, 2, 7, dtype=torch.float64)
    assert math.isclose(float(torch.dot(smooth_field(a, 3).flatten(), b.flatten())),
                        float(torch.dot(a.flatten(), smooth_field(b, 3).flatten())), rel_tol=1e-12)
    leaf = a.clone().requires_grad_()
    smooth_field(leaf, 3).backward(b)
    torch.testing.assert_close(leaf.grad, smooth_field(b, 3))


def test_downsample_equals_filter_then_resize():
    torch.manual_seed(1)
    volume = torch.rand(1, 3, 11, 9, 14, dtype=torch.float64)
    shape = (6, 5, 7)
    reference = F.interpolate(box_filter(volume, 1), size=shape, mode="trilinear", align_corners=ALIGN_CORNERS)
    torch.testing.assert_close(_downsample(volume, 2, shape), reference)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("size", [1, 4, 9, 13])
def test_resize_axis_equals_trilinear_interpolation_of_that_axis(axis, size):
    torch.manual_seed(axis)
    volume = torch.rand(2, 3, 9, 8, 10, dtype=torch.float64)
    target = list(volume.shape[2:])
    target[axis] = size
    reference = F.interpolate(volume, size=tuple(target), mode="trilinear", align_corners=ALIGN_CORNERS)
    torch.testing.assert_close(_resize_axis(volume, size, axis), reference, rtol=1e-14, atol=1e-14)


def test_separable_mask_dilation_equals_the_cube():
    mask = torch.zeros(1, 1, 15, 12, 13)
    mask[0, 0, 7, 5, 6] = 1
    mask[0, 0, 0, 11, 0] = 1
    cube = F.max_pool3d(mask, 7, stride=1, padding=3)
    torch.testing.assert_close(_masked_weight(mask, (15, 12, 13), 3, mask), cube)


@pytest.mark.parametrize("shape", [(14, 13, 12), (5, 16, 13), (2, 1, 30)])
@pytest.mark.parametrize("passes", [1, 2, 3])
def test_repeated_box_filter_equals_the_box_filter_applied_passes_times(shape, passes):
    """The banded form (axes of >= 4 passes voxels) and the fallback (shorter axes) both equal
    ``passes`` radius-1 box filters, border rows included, and stay self-adjoint."""
    torch.manual_seed(passes)
    volume, other = torch.randn(2, 2, 3, *shape, dtype=torch.float64)
    reference = volume
    for _ in range(passes):
        reference = box_filter(reference, 1)
    torch.testing.assert_close(repeated_box_filter(volume, passes), reference, rtol=0, atol=1e-14)
    assert math.isclose(float((repeated_box_filter(volume, passes) * other).sum()),
                        float((volume * repeated_box_filter(other, passes)).sum()), rel_tol=1e-12)


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_binary_dilation_equals_the_max_over_the_cube(radius):
    torch.manual_seed(radius)
    mask = torch.rand(2, 1, 9, 11, 10) > 0.97  # sparse voxels, some on the border
    cube = F.max_pool3d(mask.float(), 2 * radius + 1, stride=1, padding=radius) > 0
    dilated = binary_dilation(mask, radius)
    assert dilated.dtype == torch.bool and torch.equal(dilated, cube)


def test_masked_similarity_equals_the_dense_loss():
    """Sampling only inside the dilated mask gives the dense masked loss of the first step."""
    torch.manual_seed(2)
    shape = (10, 12, 9)
    fixed = torch.rand(1, 4, *shape, dtype=torch.float64)
    moving = torch.rand(1, 4, *shape, dtype=torch.float64)
    init = torch.randn(1, 3, *shape, dtype=torch.float64)
    mask = torch.zeros(1, 1, *shape)
    mask[..., 3:6, 4:8, 2:5] = 1
    weight = F.max_pool3d(mask.double(), 3, stride=1, padding=1)
    smooth = smooth_field(init, 1)
    dense = ((fixed - warp(moving, smooth)) ** 2 * weight).sum() / (weight.sum() * 4)
    for outside in (1.0, 0.1):  # the diffusion weight: 1 on the undilated mask, `outside` elsewhere
        result = instance_optimise(fixed, moving, init, mask=mask, iterations=1, lambda_diffusion=0.2,
                                   grid_factor=1, smoothing_passes=1, mask_dilation=1,
                                   outside_diffusion=outside)
        expected = dense + 0.2 * diffusion_loss(smooth, outside + (1 - outside) * mask.double())
        torch.testing.assert_close(torch.tensor(result.losses[0], dtype=torch.float64), expected)


def _reference_resample(field: DisplacementField, grid: Grid) -> torch.Tensor:
    """Every target voxel mapped through world coordinates one by one (the definition)."""
    voxels = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1).reshape(-1, 3)
    source = field.grid.world_to_voxel(grid.voxel_to_world(voxels.astype(np.float64)))
    u = sample_points(field.displacement, torch.as_tensor(np.asarray(source), dtype=field.displacement.dtype))[0].T
    u_mm = field.grid.voxel_vectors_to_mm(u.double().numpy())
    return torch.as_tensor(np.asarray(grid.mm_vectors_to_voxel(u_mm))).T.reshape(1, 3, *grid.shape)


def test_resample_field_matches_the_world_mapping_for_oblique_grids():
    angle = 0.3
    rotation = (math.cos(angle), -math.sin(angle), 0.0, math.sin(angle), math.cos(angle), 0.0, 0.0, 0.0, 1.0)
    source_grid = Grid((9, 10, 11), (1.5, 2.0, 2.5), (-3.0, 4.0, 1.0), rotation)
    target_grid = Grid((7, 8, 6), (2.2, 1.3, 3.1), (-1.0, 5.0, 2.0))
    torch.manual_seed(3)
    field = DisplacementField(torch.randn(1, 3, 9, 10, 11, dtype=torch.float64), source_grid)
    out = resample_field(field, target_grid)
    assert out.grid is target_grid
    torch.testing.assert_close(out.displacement, _reference_resample(field, target_grid).to(torch.float64))


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_grid_sample_parallel_equals_grid_sample(two_threads, mode):
    """Split over the threads (41 * 33 * 31 points: an odd count, so one padded point) and
    channels-last, it gives the plain call's values and gradients, for the volume and the grid."""
    torch.manual_seed(0)
    volume = torch.randn(1, 5, 20, 30, 25, dtype=torch.float64, requires_grad=True)
    grid = (torch.rand(1, 41, 33, 31, 3, dtype=torch.float64) * 2.2 - 1.1).requires_grad_()
    with mock.patch("graphreg.core.spatial.F.grid_sample", wraps=F.grid_sample) as spy:
        split = grid_sample_parallel(volume, grid, mode=mode)
    assert spy.call_args.args[0].shape[0] == 2  # one chunk per thread
    assert spy.call_args.args[0].stride(1) == 1  # 5 channels: sampled channels-last
    plain = F.grid_sample(volume, grid, mode=mode, padding_mode="border", align_corners=ALIGN_CORNERS)
    assert split.shape == plain.shape == (1, 5, 41, 33, 31)
    assert torch.equal(split, plain)
    weights = torch.randn_like(plain)
    for ours, theirs in zip(torch.autograd.grad((split * weights).sum(), (volume, grid)),
                            torch.autograd.grad((plain * weights).sum(), (volume, grid))):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_sample_points_split_over_threads_matches_one_thread(two_threads):
    torch.manual_seed(1)
    volume = torch.randn(1, 3, 16, 18, 20).contiguous(memory_format=torch.channels_last_3d)
    points = torch.rand(50001, 3) * torch.tensor([15.0, 17.0, 19.0])
    split = sample_points(volume, points)
    torch.set_num_threads(1)
    assert torch.equal(split, sample_points(volume, points))


def test_own_adam_follows_torch_adam():
    """The instance optimisation's Adam takes torch.optim.Adam's steps (float64, 25 steps)."""
    torch.manual_seed(3)
    target = torch.randn(2, 3, 4, dtype=torch.float64)
    start = torch.randn(2, 3, 4, dtype=torch.float64)
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    own, reference = _Adam(ours, lr=0.3), torch.optim.Adam([theirs], lr=0.3)
    for _ in range(25):
        for param in (ours, theirs):
            param.grad = None
            ((param - target) ** 4).sum().backward()
        own.step()
        reference.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(ours, start)


def test_resize_field_keeps_the_physical_displacement_and_copies_at_the_same_shape():
    """``u_z = 0.5 z`` voxels stays ``0.5 z`` in the voxels of a twice finer grid of the same
    extent; at the same shape the result is an equal copy (no interpolation)."""
    gain = torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1, 1)
    field = identity_grid((9, 5, 7), dtype=torch.float64) * gain
    finer = resize_field(field, (17, 9, 13))
    expected = identity_grid((17, 9, 13), dtype=torch.float64) * gain
    torch.testing.assert_close(finer, expected)
    same = resize_field(field, (9, 5, 7))
    assert torch.equal(same, field) and same.data_ptr() != field.data_ptr()


def test_diffusion_weight_at_the_mask_resolution_is_the_mask_itself():
    torch.manual_seed(2)
    mask = (torch.rand(1, 1, 6, 7, 5) > 0.6).float()
    weight = _diffusion_weight(mask, (6, 7, 5), 0.1, mask)
    torch.testing.assert_close(weight, 0.1 + 0.9 * mask)
    torch.testing.assert_close(weight, 0.1 + 0.9 * F.adaptive_max_pool3d(mask, (6, 7, 5)))
