"""Realistic pairs (graphreg.datasets.acquisition / anatomy) on a small synthetic thorax phantom."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from graphreg.datasets.acquisition import (Acquisition, SourceCT, ct_noise, realistic_pair, signed_distance,
                                           sliding_breathing)
from graphreg.datasets.anatomy import (BENCHMARK_ANATOMIES, MOTION_SETS, TRAINING_ANATOMIES, Anatomy,
                                       MotionPattern, check_anatomy_id, motion_landmarks)
from graphreg.datasets.benchmark import POPI_CT, make_realistic_benchmark
from graphreg.datasets.pairs import read_pair
from graphreg.datasets.paths import DIRLAB_4DCT_DIR
from graphreg.datasets.training import TrainingPairSampler
from graphreg.errors import GraphregError
from graphreg.core.geometry import Grid
from graphreg.core.spatial import sample_points
from graphreg.core.volume import Volume

pytestmark = pytest.mark.skipif(not DIRLAB_4DCT_DIR.is_dir(), reason="DIR-Lab landmarks not available")

ACQ = Acquisition(spacing_mm=(4.0, 4.0, 4.0), noise_hu=(15.0, 20.0), recon_blur_mm=(0.3, 0.6))
LANDMARKS = 25


@pytest.fixture(scope="module")
def phantom():
    """Thorax phantom (2.5 x 2.5 x 3 mm): body ellipse through every slice (the source's field of view
    ends inside the lungs' margin), two lung ellipsoids at -850 HU with bright vessel spots."""
    rng = np.random.default_rng(0)
    grid = Grid((56, 72, 96), (2.5, 2.5, 3.0), (-120.0, -90.0, -82.5))
    axes = [np.arange(n) for n in grid.shape]
    index = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.float64)
    world = grid.voxel_to_world(index).reshape(grid.shape + (3,))
    x, y, z = world[..., 0], world[..., 1], world[..., 2]
    body = (x / 110.0) ** 2 + (y / 80.0) ** 2 <= 1.0
    lungs = np.zeros(grid.shape, dtype=bool)
    for cx in (-50.0, 50.0):
        lungs |= ((x - cx) / 38.0) ** 2 + ((y + 5.0) / 55.0) ** 2 + (z / 70.0) ** 2 <= 1.0
    hu = np.where(body, 40.0, -1000.0)
    hu[lungs] = -850.0
    spots = np.zeros(grid.shape)
    inside = np.argwhere(ndimage.binary_erosion(lungs, iterations=2))
    for i in rng.choice(len(inside), 300, replace=False):
        spots[tuple(inside[i])] = 1.0
    hu += 40000.0 * ndimage.gaussian_filter(spots, 1.5) * lungs
    ct = Volume(hu.astype(np.float32), grid)
    lung = Volume(lungs.astype(np.uint8), grid)
    return ct, lung


@pytest.fixture(scope="module")
def source(phantom):
    ct, lung = phantom
    return SourceCT.load(ct, lung=lung, margin_mm=200.0)


@pytest.fixture(scope="module")
def pattern():
    return MotionPattern("4dct8", False, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (1.0, -2.0, 0.5))


@pytest.fixture(scope="module")
def pair(source, pattern):
    return realistic_pair(source, Anatomy.draw(3, "benchmark"), pattern, [0, 3], ACQ, landmarks=LANDMARKS)


@pytest.fixture(scope="module")
def clean_pair(source, pattern):
    return realistic_pair(source, Anatomy.draw(3, "benchmark"), pattern, [0, 3], ACQ, landmarks=LANDMARKS,
                          noise=False)


def test_grids_differ(pair):
    fixed, moving = pair.fixed.grid, pair.moving.grid
    assert fixed.spacing == (4.0, 4.0, 4.0) and moving.spacing == (4.0, 4.0, 5.0)
    offset = (np.array(moving.origin) - np.array(fixed.origin)) / np.array(fixed.spacing)
    assert np.all(np.abs(offset - np.round(offset)) > 1e-3)  # sub-voxel shifts on every axis
    assert pair.moving_mask.grid.same_as(moving) and pair.fixed_mask.grid.same_as(fixed)


def test_exact_ground_truth_through_both_grids(pair):
    assert len(pair.fixed_landmarks_mm) == LANDMARKS
    assert pair.meta["landmark_residual_mm"] < 1e-4
    # the stored field (float32, fixed grid) maps each fixed landmark onto its moving position
    mapped = pair.gt_field.transform_points(pair.fixed_landmarks_mm)
    assert np.abs(mapped - pair.moving_landmarks_mm).max() < 1e-4
    assert pair.meta["inverse_residual_mm"]["lung_max"] < 1e-4
    assert pair.meta["initial_tre_mm"]["mean_mm"] > 3.0


def test_pull_inverts_the_sliding_motion(pair, pattern):
    motion = sliding_breathing(pattern, pair.fixed_mask)
    rng = np.random.default_rng(1)
    lo = np.array(pair.fixed.grid.origin)
    hi = lo + (np.array(pair.fixed.grid.size_xyz) - 1) * np.array(pair.fixed.grid.spacing)
    points = lo + rng.uniform(0.1, 0.9, size=(2000, 3)) * (hi - lo)
    back, inside, _, error, gap = motion.pull(points + motion.displacement(points))
    fine = error < 1e-6  # the rare points where the lung and wall solutions overlap pick the lung one
    assert fine.mean() > 0.99
    assert gap.mean() < 0.01
    ok = fine & ~gap & (inside == motion.in_lungs(points))
    assert ok.mean() > 0.97
    assert np.abs(back[ok] - points[ok]).max() < 1e-4


def test_sliding_is_a_discontinuity(pair, pattern):
    """Across the pleura (0.5 mm apart) the displacement jumps by millimetres: a true sliding surface."""
    motion = sliding_breathing(pattern, pair.fixed_mask)
    phi = signed_distance(pair.fixed_mask).array
    inside = phi < 0
    a = np.argwhere(inside[:, :, :-1] & ~inside[:, :, 1:])  # lung voxel with a wall voxel to its +x
    b = a + [0, 0, 1]
    fa, fb = phi[tuple(a.T)], phi[tuple(b.T)]
    t = fa / (fa - fb)
    crossing = pair.fixed.grid.voxel_to_world(a + t[:, None] * [0, 0, 1.0])
    step = np.array([0.25, 0.0, 0.0])
    jump = np.linalg.norm(motion.displacement(crossing + step) - motion.displacement(crossing - step), axis=1)
    assert jump.max() > 2.0


def test_noise_is_independent(pair, clean_pair):
    noise_f = pair.fixed.array.astype(np.float64) - clean_pair.fixed.array
    noise_m = pair.moving.array.astype(np.float64) - clean_pair.moving.array
    assert 10.0 < noise_f.std() < 30.0 and 10.0 < noise_m.std() < 30.0
    # the moving noise where each fixed lung voxel went: equal to the fixed noise if one image were the
    # other warped
    grid = pair.fixed.grid
    lung = pair.fixed_mask.array.reshape(-1) > 0
    index = np.argwhere(np.ones(grid.shape, bool))[lung].astype(np.float64)
    target = pair.gt_field.transform_points(grid.voxel_to_world(index))
    values = sample_points(torch.from_numpy(noise_m.astype(np.float32))[None, None],
                           torch.from_numpy(pair.moving.grid.world_to_voxel(target)).float())[0, 0].numpy()
    corr = np.corrcoef(noise_f.reshape(-1)[lung], values)[0, 1]
    assert abs(corr) < 0.05


def test_ct_noise_is_correlated():
    noise = ct_noise((32, 32, 32), (2.0, 2.0, 2.0), 20.0, np.random.default_rng(0))
    assert abs(noise.std() - 20.0) < 0.5
    neighbour = np.corrcoef(noise[:, :, :-1].ravel(), noise[:, :, 1:].ravel())[0, 1]
    assert neighbour > 0.2  # spatially correlated, unlike white noise


def test_no_air_bands_beyond_the_source(pair, source):
    """The source ends inside the fixed margin: both images show tissue there, not -1024 HU."""
    assert pair.fixed.grid.origin[2] < source.ct.grid.origin[2]
    for image in (pair.fixed, pair.moving):
        _, height, width = image.grid.shape
        for z in (0, -1):
            centre = image.array[z, height // 2 - 1:height // 2 + 2, width // 2 - 1:width // 2 + 2]
            assert np.median(centre) > -300.0
            assert (image.array[z] < -900).mean() < 0.5  # the body is there, not an air band


def test_no_streaks_beyond_the_source():
    """Beyond the source's z ends tissue continues without the fine in-plane structure of the end
    slice (repeating that slice along z draws vertical streaks), at the same level, and lungs that
    reach an end are closed with tissue outside the lung mask."""
    rng = np.random.default_rng(1)
    grid = Grid((12, 40, 40), (2.0, 2.0, 2.0), (-40.0, -40.0, -12.0))
    hu = (40.0 + 150.0 * rng.standard_normal(grid.shape)).astype(np.float32)
    lung = np.zeros(grid.shape, dtype=np.uint8)
    lung[:6, 15:25, 15:25] = 1
    hu[lung > 0] = -850.0
    source = SourceCT.load(Volume(hu, grid), lung=Volume(lung, grid), margin_mm=200.0, denoise_mm=(0.0, 0.0, 0.0))
    volume = torch.from_numpy(source.ct.array)[None, None]
    x, y = np.meshgrid(np.arange(-30.0, 30.0, 2.0), np.arange(-30.0, 30.0, 2.0), indexing="ij")

    def plane(z: float) -> np.ndarray:
        points = np.stack([x.ravel(), y.ravel(), np.full(x.size, z)], axis=1)
        return source.sample(volume, points).reshape(x.shape)

    edge, beyond = plane(-12.0), plane(-40.0)
    texture = edge > -500.0
    assert np.diff(beyond, axis=1).std() < 0.2 * np.diff(np.where(texture, edge, 40.0), axis=1).std()
    assert abs(beyond[texture].mean() - edge[texture].mean()) < 20.0
    assert beyond.min() > -300.0  # the lung is closed with tissue
    assert source.lung_fraction(np.array([[0.0, 0.0, -20.0]]))[0] == 0.0
    assert np.allclose(edge, hu[0, 5:35, 5:35].T, atol=1e-3)  # inside its field of view the source is unchanged


@pytest.mark.slow
def test_same_seed_same_pair(source, pattern, pair):
    again = realistic_pair(source, Anatomy.draw(3, "benchmark"), pattern, [0, 3], ACQ, landmarks=LANDMARKS)
    assert np.array_equal(again.fixed.array, pair.fixed.array)
    assert np.array_equal(again.moving.array, pair.moving.array)
    assert np.array_equal(again.moving_landmarks_mm, pair.moving_landmarks_mm)
    other = realistic_pair(source, Anatomy.draw(3, "benchmark"), pattern, [1, 3], ACQ, landmarks=LANDMARKS)
    assert not np.array_equal(other.moving.array, pair.moving.array)


@pytest.mark.slow
def test_anatomies_are_new_patients(source, pattern, clean_pair):
    same = realistic_pair(source, Anatomy.identity(3), pattern, [0, 3], ACQ, landmarks=LANDMARKS, noise=False)
    changed = Anatomy(3, True, (1.1, 0.95, 0.9), (0.05, -0.05), 8.0, -30.0, ((0.5, 0.5, 0.5, 30.0, 0.5),))
    other = realistic_pair(source, changed, pattern, [0, 3], ACQ, landmarks=LANDMARKS, noise=False)
    assert other.fixed.grid.shape != same.fixed.grid.shape
    before = np.median(same.fixed.array[same.fixed_mask.array > 0])
    after = np.median(other.fixed.array[other.fixed_mask.array > 0])
    assert after < before - 25.0  # the HU offset and the emphysema region lower the lung density


def test_train_and_benchmark_anatomies_are_disjoint():
    assert set(BENCHMARK_ANATOMIES).isdisjoint(range(TRAINING_ANATOMIES.start, TRAINING_ANATOMIES.start + 10**4))
    assert BENCHMARK_ANATOMIES.stop <= TRAINING_ANATOMIES.start
    with pytest.raises(GraphregError, match="anatomy_id"):
        Anatomy.draw(TRAINING_ANATOMIES.start, "benchmark")
    with pytest.raises(GraphregError, match="anatomy_id"):
        Anatomy.draw(0, "training")
    with pytest.raises(GraphregError, match="purpose"):
        check_anatomy_id(0, "test")
    assert Anatomy.draw(7, "benchmark") == Anatomy.draw(7, "benchmark")
    assert Anatomy.draw(7, "benchmark") != Anatomy.draw(8, "benchmark")


def test_emphysema_reaches_low_attenuation():
    """Parenchyma (-850 HU) falls below -950 HU (the emphysema index threshold) in every drawn region's
    core (centre and half its radius); vessels (-100 HU) keep their density."""
    box = (np.zeros(3), np.full(3, 100.0))
    regions = [region for anatomy_id in range(40) for region in Anatomy.draw(anatomy_id, "benchmark").emphysema]
    assert len(regions) >= 10
    for region in regions:
        one = Anatomy(0, False, (1.0, 1.0, 1.0), (0.0, 0.0), 0.0, 0.0, (region,))
        centre = np.array(region[:3]) * 100.0
        points = np.stack([centre, centre + [0.5 * region[3], 0.0, 0.0], centre])
        hu = one.lung_hu(np.array([-850.0, -850.0, -100.0], dtype=np.float32), points, np.ones(3, bool), box)
        assert hu[0] <= -950.0 and hu[1] <= -950.0
        assert hu[2] == pytest.approx(-100.0)


def test_every_dirlab_set_and_copd_heterogeneity():
    for name in MOTION_SETS:
        points, disp = motion_landmarks(name)
        assert points.shape == disp.shape == (300, 3)
        assert disp[:, 2].mean() > 0.0  # exhale: the diaphragm rises, the lungs move cranially on average
    pattern = MotionPattern("copd1", False, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    points, _ = motion_landmarks("copd1")
    motion = pattern.lung_motion((points.min(0), points.max(0)))(points)
    pairs = cKDTree(points).query_pairs(20.0, output_type="ndarray")
    assert np.abs(motion[pairs[:, 0], 2] - motion[pairs[:, 1], 2]).max() > 10.0  # kept, not smoothed away


def test_realistic_benchmark_folder(tmp_path, source):
    rows = make_realistic_benchmark(tmp_path, spacing_mm=4.0, count=1, source=source, landmarks=LANDMARKS)
    assert rows[0]["case"] == "copd1"
    pair = read_pair(tmp_path / "pair_01")
    assert pair.meta["set"] == "realistic" and pair.meta["anatomy"]["anatomy_id"] == 0
    assert pair.moving.grid.spacing[2] == 5.0
    assert np.abs(pair.load_gt_field().transform_points(pair.fixed_landmarks_mm)
                  - pair.moving_landmarks_mm).max() < 1e-4


@pytest.mark.slow
@pytest.mark.skipif(not POPI_CT.is_file(), reason="POPI CT not available")
def test_training_sampler_realistic():
    from graphreg.io.images import read_image

    ct = read_image(POPI_CT).with_spacing((5.0, 5.0, 5.0), default=-1024.0)
    sampler = TrainingPairSampler(ct, seed=2, length=3, spacing_mm=8.0, realistic=True, landmarks=10,
                                  crop_shape=(16, 16, 16))
    sample = sampler[1]
    assert sample["fixed"].shape == sample["moving"].shape == (1, 16, 16, 16)
    assert sample["displacement"].shape == (3, 16, 16, 16)
    assert sample["meta"]["anatomy"] == TRAINING_ANATOMIES.start + 1
    assert sample["meta"]["motion_set"] in MOTION_SETS
    assert torch.equal(sampler[1]["moving"], sample["moving"])  # a pure function of (seed, index)


def test_bench_make_options():
    from typer.testing import CliRunner

    from graphreg.apps.bench.commands import bench_app

    runner = CliRunner()
    result = runner.invoke(bench_app, ["make", "--set", "hard"])
    assert result.exit_code == 2 and "--set: expected realistic or easy" in result.output
    result = runner.invoke(bench_app, ["make", "--set", "easy", "--count", "3"])
    assert result.exit_code == 2 and "--count" in result.output


@pytest.mark.skipif(not POPI_CT.is_file(), reason="POPI CT not available")
def test_realistic_samples_carry_their_own_grid():
    """Realistic samples differ in shape (one anatomy each): each sample's grid is its own."""
    from graphreg.io.images import read_image

    ct = read_image(POPI_CT).with_spacing((5.0, 5.0, 5.0), default=-1024.0)
    sampler = TrainingPairSampler(ct, seed=2, length=3, spacing_mm=8.0, realistic=True, landmarks=10)
    for index in (0, 1):
        sample = sampler[index]
        grid = sampler.sample_grid(sample)
        assert grid.shape == tuple(sample["fixed"].shape[1:]) == tuple(sample["displacement"].shape[1:])
        assert grid.spacing_zyx == pytest.approx(tuple(float(s) for s in sample["spacing_mm"]))
