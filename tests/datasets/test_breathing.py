"""Breathing motion and pair synthesis: exact ground truth on a small copy of the POPI CT."""


import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from graphreg.datasets import breathing
from graphreg.datasets.benchmark import POPI_CT, low_resolution, make_pair
from graphreg.datasets.breathing import (MIN_JACOBIAN, dirlab_motion, invert_field,
                                         jacobian_volume, parametric_motion, sliding_weight,
                                         synthesize_pair, vessel_landmarks)
from graphreg.ops.lungmask import lung_mask
from graphreg.datasets.pairs import dense_field, read_pair, write_pair
from graphreg.datasets.training import TrainingPairSampler
from graphreg.errors import GraphregError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.io.images import read_image
from graphreg.ops.metrics import jacobian_determinant, landmark_errors
from graphreg.core.spatial import sample_points
from graphreg.core.volume import Volume

pytestmark = pytest.mark.skipif(not POPI_CT.is_file() or not breathing.DIRLAB_4DCT_DIR.is_dir(),
                                reason="POPI CT / DIR-Lab landmarks not available")

SPACING_MM = 5.0


@pytest.fixture(scope="session")
def small_ct():
    """POPI at 5 mm, cropped to the lungs + 20 mm, with its lung mask."""
    ct = read_image(POPI_CT).with_spacing((SPACING_MM,) * 3, default=-1024.0)
    ct = Volume(np.round(ct.array).astype(np.int16), ct.grid)
    return low_resolution(ct, lung_mask(ct), SPACING_MM, 20.0)


@pytest.fixture(scope="session")
def pair_dir(small_ct, tmp_path_factory):
    """DIR-Lab case 8 (the largest motion) pair, written and read back."""
    ct, lung = small_ct
    pair = make_pair(8, ct, lung, seed=3, control_mm=8.0)
    folder = tmp_path_factory.mktemp("pairs") / pair.name
    write_pair(pair, folder)
    return folder


@pytest.fixture(scope="session")
def parametric(small_ct):
    """Random parametric breathing on the small CT (control grid 10 mm)."""
    ct, lung = small_ct
    return parametric_motion(ct, lung, np.random.default_rng(5), control_mm=10.0)


def _warp_back(pair, field):
    """Moving image pulled onto the fixed grid by the ground truth: M(x + u(x))."""
    return field.warp(Volume(pair.moving.array.astype(np.float32), pair.moving.grid)).array


def test_smoke_meta(pair_dir):
    pair = read_pair(pair_dir)
    meta = pair.meta
    assert meta["source"] == "dirlab-4dct-case8" and meta["seed"] == 3
    assert 8.0 < meta["initial_tre_mm"]["mean_mm"] < 25.0
    assert meta["inverse_residual_mm"]["lung_max"] < 0.05
    assert meta["jacobian_min"] >= MIN_JACOBIAN
    assert pair.moving.array.dtype == np.int16 and pair.fixed_landmarks_mm.shape == (300, 3)


def test_landmarks_exact_under_ground_truth(pair_dir):
    pair = read_pair(pair_dir)
    field = pair.dense_gt_field()
    mapped = field.transform_points(pair.fixed_landmarks_mm)
    assert landmark_errors(mapped, pair.moving_landmarks_mm).max() < 0.01
    # ITK reads the stored (control-grid) field and maps the landmarks the same way
    transform = sitk.DisplacementFieldTransform(
        sitk.Cast(sitk.ReadImage(str(pair.gt_field_path)), sitk.sitkVectorFloat64))
    itk_mapped = np.array([transform.TransformPoint(tuple(p)) for p in pair.fixed_landmarks_mm])
    assert landmark_errors(itk_mapped, pair.moving_landmarks_mm).max() < 0.01
    # landmarks lie in the fixed lungs and the moving positions in the moving lungs
    for points, mask in ((pair.fixed_landmarks_mm, pair.fixed_mask),
                         (pair.moving_landmarks_mm, pair.moving_mask)):
        index = np.round(mask.grid.world_to_voxel(points)).astype(int)
        assert mask.array[tuple(index.T)].mean() > 0.97


def test_ground_truth_self_consistent(pair_dir):
    pair = read_pair(pair_dir)
    field = pair.dense_gt_field()
    fixed = pair.fixed.array.astype(np.float64)
    lungs = ndimage.binary_erosion(pair.fixed_mask.array > 0)  # 5 mm voxels: skip the border
    jac = jacobian_volume(field)
    assert jac.min() > 0
    back = _warp_back(pair, field)
    # mass preservation: rho_M(x + u) * J(x) = rho_F(x), up to noise and interpolation blur
    restored = (back + 1000.0) * jac - 1000.0
    before = np.abs(pair.moving.array - fixed)[lungs].mean()
    after = np.abs(restored - fixed)[lungs].mean()
    assert after < 0.3 * before
    assert np.median(np.abs(restored - fixed)[lungs]) < 35.0
    assert abs((restored - fixed)[lungs].mean()) < 10.0  # no density bias
    # the exhale lung is denser: HU rises where it is compressed (J < 1)
    compressed = lungs & (jac < 0.8)
    assert back[compressed].mean() > fixed[compressed].mean() + 20


def test_no_density_warp_back_reproduces_fixed(small_ct, parametric):
    """On a smooth image M(x + u(x)) = F(x) up to interpolation error (which shrinks with the
    smoothness: about 8 % of the motion-induced difference at sigma = 4 voxels, 4 % at 8)."""
    ct, lung = small_ct
    smooth = Volume(ndimage.gaussian_filter(ct.array.astype(np.float32), 4.0), ct.grid)
    pair = synthesize_pair(smooth, parametric, lung, np.random.default_rng(0), noise_hu=0.0,
                           density=False, landmarks=0)
    assert pair.meta["inverse_residual_mm"]["lung_max"] < 0.05
    back = _warp_back(pair, dense_field(parametric, ct.grid))
    inner = ndimage.binary_erosion(lung.array > 0)
    before = np.abs(pair.moving.array - smooth.array)[inner].mean()
    after = np.abs(back - smooth.array)[inner].mean()
    assert before > 20.0 and after < 0.12 * before


def test_convention_diaphragm_moves_cranially(small_ct, pair_dir, parametric):
    """Exhale: the lung base moves towards the head (+z in LPS), much more than the apex."""
    ct, lung = small_ct
    assert ct.grid.direction_matrix[2, 2] > 0  # index z grows to the head
    for field in (read_pair(pair_dir).dense_gt_field(), dense_field(parametric, ct.grid)):
        mm = field.to_mm_array()  # (z, y, x, 3) world x, y, z
        z_index = np.nonzero(lung.array.any(axis=(1, 2)))[0]
        lo, hi = z_index.min(), z_index.max()
        third = (hi - lo) // 3
        base = mm[lo:lo + third][lung.array[lo:lo + third] > 0, 2].mean()
        apex = mm[hi - third:hi + 1][lung.array[hi - third:hi + 1] > 0, 2].mean()
        assert base > 3.0 and base > 2.0 * abs(apex)
        # lungs shrink at exhale
        assert jacobian_volume(field)[lung.array > 0].mean() < 0.97


def test_deterministic_for_seed(small_ct):
    ct, lung = low_resolution(*small_ct, spacing_mm=8.0, margin_mm=10.0)  # small and fast
    motion, again = (parametric_motion(ct, lung, np.random.default_rng(5), control_mm=10.0)
                     for _ in range(2))
    assert motion.displacement.numpy().tobytes() == again.displacement.numpy().tobytes()
    a, b = (synthesize_pair(ct, motion, lung, np.random.default_rng(1), landmarks=30)
            for _ in range(2))
    assert a.moving.array.tobytes() == b.moving.array.tobytes()
    assert a.moving_mask.array.tobytes() == b.moving_mask.array.tobytes()
    assert a.fixed_landmarks_mm.tobytes() == b.fixed_landmarks_mm.tobytes()
    assert a.moving_landmarks_mm.tobytes() == b.moving_landmarks_mm.tobytes()
    # another seed gives other landmarks
    one, two = (vessel_landmarks(ct, lung, np.random.default_rng(seed), count=30) for seed in (1, 2))
    assert not np.array_equal(one, two)


def test_invert_field_affine_analytic():
    """u(x) = A x has the inverse v(y) = ((I + A)^-1 - I) y (away from the border)."""
    grid = Grid((24, 24, 24), (2.0, 2.0, 2.0))
    a = np.array([[0.12, 0.05, 0.0], [-0.04, -0.1, 0.03], [0.02, 0.0, 0.08]])  # acts on (z, y, x)
    index = np.stack(np.meshgrid(*[np.arange(24.0) - 11.5] * 3, indexing="ij"), axis=-1)
    u = torch.from_numpy(np.moveaxis(index @ a.T, -1, 0))[None].double()
    inverse = invert_field(DisplacementField(u, grid), tolerance_mm=1e-8, iterations=30)
    expected = np.moveaxis(index @ (np.linalg.inv(np.eye(3) + a) - np.eye(3)).T, -1, 0)
    inner = (slice(None), slice(6, 18), slice(6, 18), slice(6, 18))
    assert np.abs(inverse.displacement[0].numpy() - expected)[inner].max() < 1e-6


def test_dense_field_linear_exact():
    """Trilinear interpolation of a linear field is exact; zero outside the control grid."""
    grid = Grid((20, 22, 24), (1.5, 1.0, 2.0), (-10.0, 5.0, 3.0))
    control = grid.cropped((2, 3, 4), (18, 20, 22))
    control = Grid((5, 6, 7), [s * (n - 1) / (m - 1) for s, n, m in zip(control.spacing, control.size_xyz, (7, 6, 5))],
                   control.origin)
    nodes = control.voxel_to_world(np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in control.shape],
                                                        indexing="ij"), axis=-1))
    linear = lambda p: p @ np.array([[0.1, 0.0, 0.02], [0.0, -0.05, 0.0], [0.03, 0.0, 0.07]]).T + 1.0
    field = DisplacementField.from_mm_array(linear(nodes), control, dtype=torch.float64)
    dense = dense_field(field, grid).to_mm_array()
    points = grid.voxel_to_world(np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in grid.shape],
                                                      indexing="ij"), axis=-1))
    inside = (slice(2, 18), slice(3, 20), slice(4, 22))
    assert np.abs(dense[inside] - linear(points)[inside]).max() < 1e-4
    outside = np.ones(grid.shape, dtype=bool)
    outside[1:19, 2:21, 3:23] = False
    assert np.abs(dense[outside]).max() == 0.0


def test_sliding_weight(small_ct):
    ct, lung = small_ct
    weight = sliding_weight(lung, ct.grid, falloff_mm=20.0, axial_stretch=1.0)
    assert weight.min() >= 0.0 and weight.max() <= 1.0
    assert np.all(weight[lung.array > 0] == 1.0)
    corner = weight[:, :3, :3]
    assert corner.max() == 0.0


def test_exception(small_ct):
    ct, lung = small_ct
    with pytest.raises(GraphregError, match="case"):
        dirlab_motion(11, ct, lung)
    with pytest.raises(GraphregError, match="rng"):
        dirlab_motion(1, ct, lung, jitter_mm=1.0)
    with pytest.raises(GraphregError, match="amplitude"):
        dirlab_motion(1, ct, lung, amplitude=-1.0)


def test_training_sampler(small_ct):
    ct, _ = small_ct
    sampler = TrainingPairSampler(ct, seed=1, length=4, spacing_mm=SPACING_MM, crop_shape=(24, 24, 32),
                                  parametric_probability=0.0, landmarks=20)
    sample = sampler[0]
    assert sample["fixed"].shape == (1, 24, 24, 32) and sample["moving"].shape == (1, 24, 24, 32)
    assert sample["displacement"].shape == (3, 24, 24, 32)
    assert sample["meta"]["motion"] == "dirlab" and sample["meta"]["amplitude"] != 1.0
    # the displacement maps the fixed landmarks (inside the crop) onto the moving ones
    fixed, moving = sample["fixed_landmarks"], sample["moving_landmarks"]
    inside = ((fixed >= 0) & (fixed <= torch.tensor([23, 23, 31]))).all(dim=1)
    assert inside.any()
    u = sample_points(sample["displacement"][None].double(), fixed[inside])[0].T
    assert (fixed[inside] + u - moving[inside]).abs().max() < 1e-3
    with pytest.raises(IndexError):
        sampler[4]


def test_jacobian_volume_matches_metrics():
    """The slab-wise, moving-region-only Jacobian equals graphreg.ops.metrics on the whole grid."""
    grid = Grid((30, 32, 34), (1.0, 1.2, 2.0))
    u = torch.zeros(1, 3, 30, 32, 34)
    u[:, :, 8:20, 10:25, 5:30] = torch.randn(1, 3, 12, 15, 25, generator=torch.Generator().manual_seed(0)) * 0.1
    expected = jacobian_determinant(u, grid.spacing_zyx)[0].numpy()
    assert np.array_equal(jacobian_volume(DisplacementField(u, grid)), expected)
