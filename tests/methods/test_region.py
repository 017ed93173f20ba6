"""graphreg.methods.region: where the field is registered and trusted (region lungs / body, valid_mask)."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from graphreg.core.config import RegionConfig, load_config
from graphreg.errors import ConfigError, GraphregError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.result.registration import Registration
from graphreg.methods.region import body_translation_mm, decay_weight, lung_region_field
from graphreg.core.volume import Volume


# ---------------------------------------------------------------------- decay
def test_decay_weight_table():
    d = np.array([0.0, 5.0, 10.0, 25.0, 40.0, 41.0, 500.0])
    assert np.allclose(decay_weight(d, 10.0, 30.0), [1, 1, 1, 0.5, 0, 0, 0])


def test_decay_weight_is_smooth_and_monotone():
    d = np.linspace(0.0, 60.0, 60001)
    w = decay_weight(d, 10.0, 30.0)
    slope = np.diff(w) / np.diff(d)
    assert np.all(slope <= 1e-12)  # never rises
    assert np.abs(slope).max() <= np.pi / (2 * 30.0) + 1e-6  # the raised cosine's steepest slope
    assert np.abs(np.diff(slope)).max() < 1e-5  # no kink (C1): at 10 and 40 mm the slope is ~0
    assert abs(slope[np.searchsorted(d, 10.0)]) < 1e-3 and abs(slope[np.searchsorted(d, 40.0) - 1]) < 1e-3


def _lung_case():
    """A working grid (2 mm) with a ball of 'lungs', a field of 3 voxels along z in it, inside a larger fixed grid."""
    working = Grid((20, 22, 24), (2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0))
    fixed = Grid((60, 50, 70), (1.5, 1.5, 2.5), origin=(-40.0, -30.0, -35.0))
    z, y, x = np.meshgrid(*[np.arange(n) for n in working.shape], indexing="ij")
    lungs = ((z - 10) ** 2 + (y - 11) ** 2 + (x - 12) ** 2) <= 25
    disp = torch.zeros((1, 3) + working.shape)
    disp[0, 0] = 3.0
    disp[0, 1] = torch.as_tensor(0.05 * x, dtype=torch.float32)  # not constant: the blend must keep it
    return DisplacementField(disp, working), lungs, fixed


def test_lung_region_field_keeps_the_margin_and_reaches_the_global_motion():
    field, lungs, fixed = _lung_case()
    settings = RegionConfig("lungs", margin_mm=4.0, decay_mm=20.0)
    shift = np.array([0.5, -1.0, 2.0])
    blended, valid, decay = lung_region_field(field, lungs, shift, fixed, settings)
    assert decay == 20.0  # max |u - g| is about 4.4 mm: no lengthening needed
    grid = blended.grid
    mm = blended.to_mm_array()
    assert valid.grid.same_as(grid) and valid.array.dtype == np.uint8
    # the grid holds the working grid on the same lattice, grown by margin + decay (+1 voxel) but
    # not beyond the fixed grid (which ends 17 voxels before the working grid along z, 15 along y)
    offset = grid.world_to_voxel(np.asarray(field.grid.origin)[None])[0]
    assert np.allclose(offset, np.round(offset)) and list(np.round(offset)) == [13, 13, 13]
    inside = np.zeros(grid.shape, bool)
    o = np.round(offset).astype(int)
    window = (slice(o[0], o[0] + 20), slice(o[1], o[1] + 22), slice(o[2], o[2] + 24))
    inside[window] = lungs
    dist = ndimage.distance_transform_edt(~inside, sampling=grid.spacing_zyx)
    original = field.to_mm_array()
    kept = dist[window] <= 4.0
    assert np.allclose(mm[window][kept], original[kept], atol=1e-5)  # unchanged within the margin
    assert np.array_equal(valid.array > 0, dist <= 4.0)
    far = dist >= 24.0
    assert far.any() and np.allclose(mm[far], shift, atol=1e-5)  # the global motion beyond margin + decay
    # smooth: neighbouring voxels differ by no more than the decay's slope allows
    step = np.abs(np.diff(mm, axis=0)).max()  # the field is constant along z before blending
    assert 0 < step <= np.abs(original - shift).max() * np.pi / (2 * 20.0) * 2.0 + 1e-4
    # points beyond the grown grid (inside the fixed image) map by the global motion
    result = Registration(blended, fixed, None, "corrfield", {}, {"total": 0.0})
    corner = fixed.voxel_to_world(np.array([[1.0, 1.0, 1.0]]))
    assert np.allclose(result.transform_points(corner) - corner, shift[None], atol=1e-4)


def test_lung_region_field_lengthens_a_decay_that_would_fold():
    """A lung moving 12 mm outward (compression beyond it) with a 5 mm decay: lengthened, no folding."""
    field, lungs, fixed = _lung_case()
    disp = torch.zeros_like(field.displacement)
    disp[0, 0] = 6.0  # 12 mm along z everywhere: beyond the lungs the field must come back to 0
    blended, _, decay = lung_region_field(DisplacementField(disp, field.grid), lungs, np.zeros(3), fixed,
                                          RegionConfig("lungs", 0.0, 5.0))
    assert decay == pytest.approx(np.pi * 12.0, rel=1e-5)
    assert float(blended.jacobian_determinant().min()) >= 0.5 - 1e-3
    short = DisplacementField(disp, field.grid)  # what a 5 mm decay would give: folds
    grid = blended.grid
    inside = np.zeros(grid.shape, bool)
    o = np.round(grid.world_to_voxel(np.asarray(field.grid.origin)[None])[0]).astype(int)
    inside[o[0]:o[0] + 20, o[1]:o[1] + 22, o[2]:o[2] + 24] = lungs
    w = torch.as_tensor(decay_weight(ndimage.distance_transform_edt(~inside, sampling=grid.spacing_zyx), 0.0, 5.0),
                        dtype=torch.float32)[None, None]
    from graphreg.result.registration import resample_field

    folded = DisplacementField(w * resample_field(short, grid).displacement, grid)
    assert float(folded.jacobian_determinant().min()) < 0


def test_lung_region_field_keeps_the_decay_for_inward_motion():
    """Lungs contracting (motion towards their centre) are stretched, not compressed, by the blend."""
    field, lungs, fixed = _lung_case()
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in field.shape], indexing="ij")
    inward = -0.3 * torch.stack([z - 10, y - 11, x - 12])[None]  # up to ~5 voxels (10 mm) inward
    blended, _, decay = lung_region_field(DisplacementField(inward, field.grid), lungs, np.zeros(3), fixed,
                                          RegionConfig("lungs", 0.0, 5.0))
    assert decay == 5.0


def test_lung_region_field_exception():
    field, lungs, fixed = _lung_case()
    with pytest.raises(GraphregError, match="lungs: expected the field's grid shape"):
        lung_region_field(field, lungs[1:], np.zeros(3), fixed, RegionConfig())
    with pytest.raises(GraphregError, match="empty mask"):
        lung_region_field(field, np.zeros_like(lungs), np.zeros(3), fixed, RegionConfig())


def test_valid_mask_output_geometry(tmp_path):
    field, lungs, fixed = _lung_case()
    blended, valid, _ = lung_region_field(field, lungs, np.zeros(3), fixed, RegionConfig("lungs", 4.0, 10.0))
    result = Registration(blended, fixed, None, "corrfield", {}, {"total": 0.0}, valid_mask=valid)
    out = result.save(tmp_path / "out", outputs="valid_mask")
    image = sitk.ReadImage(str(out / "valid_mask.nii.gz"))
    assert image.GetPixelID() == sitk.sitkUInt8 and Grid.from_sitk(image).same_as(fixed)
    array = sitk.GetArrayFromImage(image)
    centre = field.grid.voxel_to_world(np.array([[10.0, 11.0, 12.0]]))
    far = field.grid.voxel_to_world(np.array([[0.0, 0.0, 0.0]]))  # > 4 mm from the ball
    index = lambda p: tuple(np.round(fixed.world_to_voxel(p)[0]).astype(int))  # noqa: E731
    assert array[index(centre)] == 1 and array[index(far)] == 0
    assert set(np.unique(array)) == {0, 1}
    # no valid mask stated: no file
    bare = Registration(blended, fixed, None, "corrfield", {}, {"total": 0.0})
    assert not (bare.save(tmp_path / "bare", outputs="valid_mask") / "valid_mask.nii.gz").exists()


def test_body_translation_follows_the_body_not_the_lungs():
    grid = Grid((30, 40, 40), (2.0, 2.0, 3.0))
    z, y, x = np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij")
    body = ((y - 20) / 15.0) ** 2 + ((x - 20) / 16.0) ** 2 <= 1
    fixed = np.where(body, 40, -1000).astype(np.int16)
    moving = np.roll(fixed, 3, axis=2)  # the whole body 3 voxels (6 mm) along +x
    shift = body_translation_mm(Volume(fixed, grid), Volume(moving, grid))
    assert np.allclose(shift, [6.0, 0.0, 0.0], atol=1e-6)


# ---------------------------------------------------------------------- config
def test_region_config_defaults_and_overrides():
    assert load_config().region == RegionConfig("lungs", 10.0, 30.0)
    assert load_config({"region": {"mode": "body", "decay_mm": 20}}).region == RegionConfig("body", 10.0, 20.0)


@pytest.mark.parametrize("values, message", [
    ({"mode": "thorax"}, "'region.mode': expected one of 'lungs', 'body', got 'thorax'"),
    ({"margin_mm": -1.0}, "'region.margin_mm': expected a finite value >= 0"),
    ({"decay_mm": 0.0}, "'region.decay_mm': expected a finite value > 0"),
    ({"mode": 3}, "'region.mode': expected str"),
])
def test_region_config_exception(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config({"region": values})


def test_region_margin_is_capped_at_the_crop_margin():
    from graphreg.api import region_config

    assert region_config({"preprocess": {"crop_margin_mm": 6.0}}, "lungs").margin_mm == 6.0
    assert region_config(None, "body") == RegionConfig("body", 10.0, 30.0)


def test_register_region_exception_before_reading():
    import graphreg

    with pytest.raises(ConfigError, match="'region.mode': expected one of"):
        graphreg.register("missing_fixed.nii.gz", "missing_moving.nii.gz", region="thorax")
    with pytest.raises(GraphregError, match="region: 'body' is available for the keypoint methods"):
        graphreg.register("missing_fixed.nii.gz", "missing_moving.nii.gz", method="demons", region="body")


def test_cli_region_option(run_cli, tmp_path):
    code, _, err = run_cli(["register", "missing_fixed.nii.gz", "missing_moving.nii.gz", "--region", "thorax",
                            "--out", str(tmp_path / "out")])
    assert code == 2 and err.startswith("error: config key 'region.mode': expected one of 'lungs', 'body'"), err
    assert "--region" in run_cli(["register", "--help"])[1]


# ---------------------------------------------------------------------- body region, end to end
@pytest.mark.slow
def test_body_region_on_the_demo_pair():
    """The demo pair (3 mm, generated: its ground truth covers the body) in regions lungs and body."""
    import graphreg
    from graphreg.api import _register
    from graphreg.checks.masks import body_mask
    from graphreg.datasets.pairs import dense_field, read_pair
    from graphreg.apps.demo import DEMO_PAIR

    pair = read_pair(DEMO_PAIR)
    config = {"preprocess": {"spacing_mm": 3.0}, "keypoints": {"nms_size": 3},
              "levels": [{"radius": 6, "step": 2.0}, {"radius": 3, "step": 1.0}],
              "instance_opt": {"iterations": 8, "refine": {"iterations": 0}}}
    args = (pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask)
    old = _register(*args, "corrfield", config, None, None, None, None, RegionConfig())
    lungs = graphreg.register(*args, config=config, threads=1)
    body = graphreg.register(*args, config=config, threads=1, region="body")
    assert body.extras["region"]["mode"] == "body" and lungs.extras["region"]["mode"] == "lungs"
    assert np.array_equal(body.valid_mask.array, body_mask(pair.fixed).array)  # the filled body, lungs included
    assert len(body.keypoints_mm) > len(lungs.keypoints_mm)
    # inside the lungs (away from their boundary) every mode gives the lung run's field
    grid = pair.fixed.grid
    core = np.argwhere(ndimage.binary_erosion(pair.fixed_mask.array > 0, iterations=2))[::7]
    points = grid.voxel_to_world(core.astype(float))
    for result in (lungs, body):
        assert np.allclose(result.transform_points(points), old.transform_points(points), atol=1e-3)
    # in the body away from the lungs both modes are closer to the truth than the old extrapolation
    distance = ndimage.distance_transform_edt(pair.fixed_mask.array == 0, sampling=grid.spacing_zyx)
    outside = np.argwhere(ndimage.binary_erosion(body.valid_mask.array > 0, iterations=2) & (distance > 15.0))
    truth = dense_field(pair.load_gt_field(), grid).to_mm_array()[tuple(outside.T)]
    error = {name: np.linalg.norm(result.field.to_mm_array()[tuple(outside.T)] - truth, axis=1).mean()
             for name, result in (("old", old), ("lungs", lungs), ("body", body))}
    assert error["lungs"] < 0.5 * error["old"] and error["body"] < 0.5 * error["old"], error
    report = body.report()
    assert json.dumps(report["region"]) and len(report["body_translation_mm"]) == 3
