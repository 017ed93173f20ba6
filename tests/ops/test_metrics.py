"""Tests of graphreg.ops.metrics against analytic answers, published numbers and the Learn2Reg definitions."""

import numpy as np
import pytest
import scipy.ndimage
import torch

from graphreg.errors import GeometryError, ShapeError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.ops.metrics import (dice, jacobian_determinant, jacobian_stats, landmark_errors,
                              learn2reg_evaluate, summarize_errors)


# ---------------------------------------------------------------------- landmarks
def test_landmark_errors_analytic():
    mapped = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    target = np.array([[3.0, 4.0, 0.0], [1.0, 1.0, 3.5]])
    np.testing.assert_allclose(landmark_errors(mapped, target), [5.0, 2.5])
    np.testing.assert_allclose(landmark_errors(torch.from_numpy(mapped), target), [5.0, 2.5])


def test_summarize_errors_table():
    summary = summarize_errors([5.0, 1.0, 4.0, 2.0, 3.0])
    assert summary == {"mean_mm": 3.0, "std_mm": pytest.approx(np.sqrt(2.0)), "p25_mm": 2.0,
                       "p50_mm": 3.0, "p75_mm": 4.0, "max_mm": 5.0, "n_points": 5}


@pytest.mark.parametrize("case, spacing_xy, published", [(1, 0.97, 3.89), (4, 1.13, 9.83), (8, 0.97, 14.99)])
def test_dirlab_initial_tre_reproduces_published_value(dirlab_dir, case, spacing_xy, published):
    folder = dirlab_dir / "4dct" / f"case{case}"
    spacing = np.array([spacing_xy, spacing_xy, 2.5])
    inhale = (np.loadtxt(folder / f"Case{case}_300_T00_xyz.txt") - 1.0) * spacing
    exhale = (np.loadtxt(folder / f"Case{case}_300_T50_xyz.txt") - 1.0) * spacing
    summary = summarize_errors(landmark_errors(inhale, exhale))
    assert summary["n_points"] == 300
    assert summary["mean_mm"] == pytest.approx(published, abs=0.01)


def test_landmark_exception():
    with pytest.raises(ShapeError, match=r"target_mm: expected shape \(4, 3\)"):
        landmark_errors(np.zeros((4, 3)), np.zeros((5, 3)))
    with pytest.raises(ShapeError, match=r"mapped_mm: expected shape \(N, 3\)"):
        landmark_errors(np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ShapeError, match="empty"):
        summarize_errors([])


# ---------------------------------------------------------------------- Jacobian
def _voxel_grid(shape):
    axes = [torch.arange(n, dtype=torch.float64) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


def test_jacobian_of_linear_map_is_its_determinant():
    linear = torch.tensor([[0.9, 0.3, 0.0], [-0.2, 1.1, 0.1], [0.0, 0.4, 1.3]], dtype=torch.float64)
    x = _voxel_grid((5, 6, 7))
    disp = torch.einsum("ij,bjdhw->bidhw", linear - torch.eye(3, dtype=torch.float64), x)
    jac = jacobian_determinant(disp)
    assert jac.shape == (1, 5, 6, 7)
    torch.testing.assert_close(jac, torch.full_like(jac, float(torch.linalg.det(linear))))


def test_jacobian_physical_spacing_equals_voxel_form():
    generator = torch.Generator().manual_seed(0)
    disp = torch.randn((2, 3, 6, 7, 8), generator=generator, dtype=torch.float64)
    disp = torch.nn.functional.avg_pool3d(disp, 3, stride=1, padding=1)
    voxel = jacobian_determinant(disp)
    physical = jacobian_determinant(disp, spacing_zyx=(2.5, 0.7, 1.3))
    torch.testing.assert_close(physical, voxel, atol=1e-12, rtol=0)
    assert float((voxel - 1).abs().max()) > 0.1  # the field is far from the identity


def test_gradcheck_jacobian_determinant():
    generator = torch.Generator().manual_seed(1)
    disp = 0.3 * torch.randn((1, 3, 3, 3, 4), generator=generator, dtype=torch.float64)
    disp.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda d: jacobian_determinant(d, (2.0, 1.0, 0.5)), (disp,))


def _half_scaled_field(scale_left: float, shape=(6, 5, 8)) -> torch.Tensor:
    """u_z = a(x) z with a = scale_left - 1 for x < W/2, else 0: J = 1 + a(x) exactly."""
    z = _voxel_grid(shape)[:, 0]
    a = torch.zeros(shape, dtype=torch.float64)
    a[..., : shape[2] // 2] = scale_left - 1.0
    disp = torch.zeros((1, 3, *shape), dtype=torch.float64)
    disp[:, 0] = a * z
    return disp


def test_jacobian_stats_analytic():
    identity = jacobian_stats(torch.zeros(1, 3, 4, 5, 6))
    assert identity == {"std_log_jacobian": 0.0, "folding_percent": 0.0, "jacobian_min": 1.0,
                        "jacobian_max": 1.0}
    stats = jacobian_stats(_half_scaled_field(np.e))  # log J is 1 on one half, 0 on the other
    assert stats["std_log_jacobian"] == pytest.approx(0.5)
    assert stats["jacobian_max"] == pytest.approx(np.e)
    folded = _half_scaled_field(-1.0)  # J = -1 on the left half
    stats = jacobian_stats(folded)
    assert stats["folding_percent"] == pytest.approx(50.0)
    assert stats["jacobian_min"] == pytest.approx(-1.0)
    right = np.zeros((6, 5, 8), dtype=bool)
    right[..., 4:] = True
    assert jacobian_stats(folded, mask=right)["folding_percent"] == 0.0
    field = DisplacementField(folded, Grid((6, 5, 8), spacing=(0.5, 3.0, 1.0)))
    assert jacobian_stats(field, mask=torch.from_numpy(~right)) == pytest.approx(
        {"std_log_jacobian": 0.0, "folding_percent": 100.0, "jacobian_min": -1.0, "jacobian_max": -1.0})


def test_jacobian_exception():
    with pytest.raises(ShapeError, match=r"displacement: expected a tensor of shape \(B, 3, D, H, W\)"):
        jacobian_determinant(torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(GeometryError, match="mask: expected shape"):
        jacobian_stats(torch.zeros(1, 3, 4, 4, 4), mask=np.ones((4, 4, 5)))
    with pytest.raises(GeometryError, match="empty mask"):
        jacobian_stats(torch.zeros(1, 3, 4, 4, 4), mask=np.zeros((4, 4, 4)))


# ---------------------------------------------------------------------- Dice
def test_dice_table():
    a = np.array([[0, 1, 1, 2], [0, 1, 2, 2]])
    b = np.array([[0, 1, 0, 2], [0, 1, 1, 2]])
    result = dice(a, b)
    assert result == {1: pytest.approx(2 * 2 / (3 + 3)), 2: pytest.approx(2 * 2 / (3 + 2))}
    with_absent = dice(a, b, labels=[1, 7])
    assert np.isnan(with_absent[7]) and with_absent[1] == pytest.approx(2 / 3)
    assert dice(np.ones((3, 3)), np.ones((3, 3))) == {1: 1.0}
    with pytest.raises(ShapeError, match="b: expected shape"):
        dice(a, b[:, :3])


# ---------------------------------------------------------------------- Learn2Reg
def _official_sdlogj(disp: np.ndarray, mask=None) -> float:
    """The Learn2Reg definition written out independently: zero-padded [-0.5, 0, 0.5]
    correlation per array axis, identity added, 2-voxel crop, cofactor determinant, +3, clip, log, std."""
    stencil = np.array([-0.5, 0.0, 0.5])
    grad = np.empty((3, 3) + disp.shape[:3])  # (axis, component, X, Y, Z)
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = 3
        for comp in range(3):
            grad[axis, comp] = scipy.ndimage.correlate(disp[..., comp], stencil.reshape(shape),
                                                       mode="constant", cval=0.0)
    j = (grad + np.eye(3).reshape(3, 3, 1, 1, 1))[:, :, 2:-2, 2:-2, 2:-2]
    det = (j[0, 0] * (j[1, 1] * j[2, 2] - j[1, 2] * j[2, 1])
           - j[1, 0] * (j[0, 1] * j[2, 2] - j[0, 2] * j[2, 1])
           + j[2, 0] * (j[0, 1] * j[1, 2] - j[0, 2] * j[1, 1]))
    log_det = np.log(np.clip(det + 3.0, 1e-9, 1e9))
    if mask is not None:
        return float(np.ma.MaskedArray(log_det, 1 - mask[2:-2, 2:-2, 2:-2]).std())
    return float(log_det.std())


@pytest.fixture
def smooth_l2r_disp() -> np.ndarray:
    rng = np.random.default_rng(2)
    disp = scipy.ndimage.gaussian_filter(rng.normal(size=(12, 11, 10, 3)) * 6.0, sigma=(1, 1, 1, 0))
    return disp


def test_learn2reg_sdlogj_matches_official_definition(smooth_l2r_disp):
    points = np.array([[5.0, 5.0, 5.0]])
    result = learn2reg_evaluate(smooth_l2r_disp, points, points, (1.0, 1.0, 1.0))
    assert result["sdlogj"] == pytest.approx(_official_sdlogj(smooth_l2r_disp), rel=1e-12)
    mask = np.zeros(smooth_l2r_disp.shape[:3], dtype=np.int64)
    mask[3:9, 2:8, 4:9] = 1
    masked = learn2reg_evaluate(smooth_l2r_disp, points, points, (1.0, 1.0, 1.0), mask=mask)
    assert masked["sdlogj"] == pytest.approx(_official_sdlogj(smooth_l2r_disp, mask), rel=1e-12)
    assert masked["sdlogj"] != pytest.approx(result["sdlogj"])


def test_learn2reg_tre_translation():
    shift = np.array([1.5, -2.0, 0.75])
    disp = np.broadcast_to(shift, (10, 9, 8, 3)).copy()
    fixed = np.array([[3.0, 4.0, 2.5], [5.2, 3.3, 4.1]])
    offset = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # second pair misses by one voxel along i
    spacing = (0.8, 1.0, 2.0)
    result = learn2reg_evaluate(disp, fixed, fixed + shift + offset, spacing)
    np.testing.assert_allclose(result["tre_mm"], [0.0, 0.8], atol=1e-9)
    assert result["tre_mean_mm"] == pytest.approx(0.4)
    assert result["sdlogj"] == pytest.approx(0.0) and result["folding_percent"] == 0.0


def test_learn2reg_agrees_with_displacement_field():
    """A field exported to the Learn2Reg layout maps landmarks as DisplacementField does."""
    grid = Grid((14, 15, 16), spacing=(1.2, 0.9, 2.0))
    linear = np.array([[1.05, 0.02, 0.0], [0.0, 0.97, 0.03], [0.01, 0.0, 1.02]])
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = [1.0, -2.0, 1.5]
    field = DisplacementField.from_affine(affine, grid, dtype=torch.float64)
    rng = np.random.default_rng(3)
    fixed_zyx = rng.uniform(4.0, 9.0, size=(20, 3))
    moving_zyx = field.transform_voxels(fixed_zyx)
    result = learn2reg_evaluate(field.to_l2r_array(), fixed_zyx[:, ::-1], moving_zyx[:, ::-1], grid.spacing)
    # cubic-spline sampling (mode="constant") reproduces the affine field up to a border effect
    # of the spline prefilter that decays into the volume: measured 3e-5 mm here
    assert result["tre_mean_mm"] < 1e-3
    assert result["sdlogj"] == pytest.approx(0.0, abs=1e-12)


def test_learn2reg_exception(smooth_l2r_disp):
    points = np.zeros((3, 3))
    with pytest.raises(ShapeError, match=r"disp_l2r: expected shape \(X, Y, Z, 3\)"):
        learn2reg_evaluate(np.zeros((3, 10, 10, 10)), points, points, (1, 1, 1))
    with pytest.raises(ShapeError, match="moving_landmarks_vox"):
        learn2reg_evaluate(smooth_l2r_disp, points, points[:2], (1, 1, 1))
    with pytest.raises(GeometryError, match="mask: expected shape"):
        learn2reg_evaluate(smooth_l2r_disp, points, points, (1, 1, 1), mask=np.ones((10, 10, 10)))
    with pytest.raises(GeometryError, match="spacing"):
        learn2reg_evaluate(smooth_l2r_disp, points, points, (1, 0, 1))


def test_rank_correlation_analytic_values():
    from graphreg.ops.metrics import rank_correlation

    assert rank_correlation([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)  # monotone, not linear
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6*4/(5*24)
    assert np.isnan(rank_correlation([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ShapeError):
        rank_correlation([1, 2, 3], [1, 2])
