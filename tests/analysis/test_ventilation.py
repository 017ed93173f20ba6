"""Ventilation maps against exact answers: analytic fields, the HU formulas, a mass-preserving pair."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from graphreg.errors import GeometryError, GraphregError
from graphreg.core.field import DisplacementField
from graphreg.core.geometry import Grid
from graphreg.io.images import write_image
from graphreg.result.registration import Registration
from graphreg.analysis.ventilation import (MAP_FILES, agreement, jacobian_map, lung_regions, smooth_in_mask, specific_ventilation,
                                  ventilation_from_hu, ventilation_from_jacobian)
from graphreg.core.volume import Volume

from conftest import grid_centre_mm

ROTATION = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture
def grid() -> Grid:
    return Grid((24, 26, 28), spacing=(2.0, 1.8, 2.5), origin=(-20.0, 10.0, 5.0))


def _scaling(grid: Grid, scale: float) -> DisplacementField:
    """``x -> c + scale (x - c)`` about the grid centre ``c``: ``J = scale**3`` everywhere."""
    centre = grid_centre_mm(grid)
    affine = np.eye(4)
    affine[:3, :3] *= scale
    affine[:3, 3] = centre * (1.0 - scale)
    return DisplacementField.from_affine(affine, grid, dtype=torch.float64)


def _world(grid: Grid) -> np.ndarray:
    return grid.voxel_to_world(np.argwhere(np.ones(grid.shape)).astype(np.float64)).reshape(grid.shape + (3,))


def _lungs(grid: Grid, separation_mm: float = 16.0, radius_mm: float = 9.0) -> Volume:
    """Two ellipsoids either side of the centre along world x (patient right at -x)."""
    offset = _world(grid) - grid_centre_mm(grid)
    mask = np.zeros(grid.shape, np.uint8)
    for side in (-1, 1):
        d = offset - np.array([side * separation_mm / 2, 0.0, 0.0])
        mask |= ((d[..., 0] / (0.6 * radius_mm)) ** 2 + (d[..., 1] / radius_mm) ** 2
                 + (d[..., 2] / (1.3 * radius_mm)) ** 2 <= 1).astype(np.uint8)
    return Volume(mask, grid)


def _linear_hu(world: np.ndarray) -> np.ndarray:
    return -850.0 + 2.0 * world[..., 0] - 1.5 * world[..., 1] + 3.0 * world[..., 2]


def _mass_preserving_pair(grid: Grid, scale: float) -> tuple[Registration, Volume, Volume]:
    """Fixed HU linear in world mm; moving made from it by ``x -> c + s (x - c)`` with the tissue
    density divided by ``J = s**3``: ``M(y) + 1000 = (F(phi^-1(y)) + 1000) / s**3``. Linear
    interpolation of the (linear) moving image is exact, so the HU map is exact too."""
    field = _scaling(grid, scale)
    centre = grid_centre_mm(grid)
    world = _world(grid)
    fixed = Volume(_linear_hu(world).astype(np.float32), grid)
    source = centre + (world - centre) / scale
    moving = Volume(((_linear_hu(source) + 1000.0) / scale ** 3 - 1000.0).astype(np.float32), grid)
    registration = Registration(working_field=field, fixed_grid=grid, moving=moving, method="test", config={},
                                timings={})
    return registration, fixed, _lungs(grid)


# ---------------------------------------------------------------------- analytic fields
def test_jacobian_of_uniform_scaling_is_exact():
    rotated = Grid((20, 22, 18), spacing=(1.5, 2.0, 2.5), origin=(3.0, -4.0, 7.0), direction=tuple(ROTATION.ravel()))
    for scale in (0.85, 1.2):
        jac = jacobian_map(_scaling(rotated, scale))
        assert np.abs(jac - scale ** 3).max() < 1e-5
        assert np.allclose(ventilation_from_jacobian(jac, fixed_is_inhale=True), scale ** -3 - 1.0, atol=1e-5)
        assert np.allclose(ventilation_from_jacobian(jac, fixed_is_inhale=False), scale ** 3 - 1.0, atol=1e-5)


def test_translation_has_no_volume_change(grid):
    affine = np.eye(4)
    affine[:3, 3] = (3.0, -2.5, 7.0)
    jac = jacobian_map(DisplacementField.from_affine(affine, grid))
    assert np.abs(jac - 1.0).max() < 1e-5
    assert np.abs(ventilation_from_jacobian(jac, True)).max() < 1e-5


def test_folding_gives_nan_not_a_number_that_looks_valid():
    out = ventilation_from_jacobian(np.array([0.5, 0.0, -0.2]), fixed_is_inhale=True)
    assert out[0] == pytest.approx(1.0) and np.isnan(out[1:]).all()


# ---------------------------------------------------------------------- the HU formulas
def test_hu_volume_change_inverts_mass_conservation():
    """Tissue mass kept: (HU_ex + 1000) V_ex = (HU_in + 1000) V_in, so the formula returns V_in/V_ex - 1."""
    rng = np.random.default_rng(0)
    hu_in = rng.uniform(-950, -600, 500)
    ratio = rng.uniform(1.0, 1.6, 500)  # V_in / V_ex
    hu_ex = (hu_in + 1000.0) * ratio - 1000.0
    assert np.allclose(ventilation_from_hu(hu_in, hu_ex), ratio - 1.0, rtol=1e-12)


def test_specific_ventilation_is_the_air_volume_change():
    """Air fraction -HU/1000, tissue volume kept: Guerrero's formula is (V_air,in - V_air,ex) / V_air,ex."""
    rng = np.random.default_rng(1)
    hu_in, hu_ex = rng.uniform(-950, -700, 300), rng.uniform(-850, -500, 300)
    volume_ex = 1.0
    volume_in = volume_ex * (hu_ex + 1000.0) / (hu_in + 1000.0)
    air_in, air_ex = volume_in * -hu_in / 1000.0, volume_ex * -hu_ex / 1000.0
    assert np.allclose(specific_ventilation(hu_in, hu_ex), (air_in - air_ex) / air_ex, rtol=1e-12)
    assert (specific_ventilation(hu_in, hu_ex)[hu_in < hu_ex] > 0).all()  # darker inhale = expansion


def test_hu_formulas_clip_to_the_lung_range():
    assert np.isfinite(ventilation_from_hu(np.array([-1000.0, -1024.0]), np.array([-800.0, -800.0]))).all()
    assert np.isfinite(specific_ventilation(np.array([-900.0]), np.array([40.0]))).all()


def test_smoothing_uses_only_lung_voxels(grid):
    """Constant HU inside the lungs, soft tissue outside: the smoothed lungs keep their value exactly,
    while plain smoothing would mix the chest wall in."""
    lungs = _lungs(grid).array
    hu = np.where(lungs > 0, -800.0, 40.0)
    smoothed = smooth_in_mask(hu, lungs, 4.0, grid.spacing_zyx)
    assert np.allclose(smoothed[lungs > 0], -800.0, atol=1e-3)
    assert (smoothed[lungs == 0] == 40.0).all()
    assert np.array_equal(smooth_in_mask(hu, lungs, 0.0, grid.spacing_zyx), hu.astype(np.float32))


# ---------------------------------------------------------------------- a mass-preserving pair
@pytest.mark.parametrize("scale, inhale", [(0.9, "fixed"), (1.1, "moving")])
def test_mass_preserving_pair_gives_the_exact_maps(grid, scale, inhale):
    registration, fixed, lungs = _mass_preserving_pair(grid, scale)
    result = registration.ventilation(fixed, lungs)
    inside = lungs.array > 0
    truth = scale ** -3 - 1.0 if inhale == "fixed" else scale ** 3 - 1.0
    assert result.summary["inhale"] == inhale and result.summary["inhale_detection"]["volume_and_hu_agree"]
    for key in ("ventilation_jacobian", "ventilation_hu"):
        assert np.abs(result.maps[key].array[inside] - truth).max() < 1e-4, key
        assert (result.maps[key].array[~inside] == 0).all()
    regions = result.summary["regions"]
    assert set(regions) >= {"lungs", "left", "right", "upper", "middle", "lower", "left_upper", "right_lower"}
    assert result.summary["lung_split"] == "components"
    for region in regions.values():
        assert region["mass_ratio_moving_to_fixed"] == pytest.approx(1.0, abs=1e-5)
        assert region["moving_volume_ml"] == pytest.approx(region["fixed_volume_ml"] * scale ** 3, rel=1e-5)
    assert agreement(result.maps["ventilation_hu"].array, np.full(grid.shape, truth), inside)["mae"] < 1e-4


def test_mass_check_sees_a_field_that_loses_tissue(grid):
    """Same images, but the field says the lungs do not move: the moving image's denser tissue then
    weighs more than the fixed image's (ratio 1/s**3 instead of 1)."""
    registration, fixed, lungs = _mass_preserving_pair(grid, 0.9)
    still = Registration(working_field=DisplacementField.identity(grid), fixed_grid=grid, moving=registration.moving,
                         method="test", config={}, timings={})
    ratio = still.ventilation(fixed, lungs, inhale="fixed").summary["regions"]["lungs"]["mass_ratio_moving_to_fixed"]
    assert ratio > 1.2


# ---------------------------------------------------------------------- regions
def test_lung_regions_components_and_midline(grid):
    labels, method = lung_regions(_lungs(grid))
    assert method == "components"
    affine = grid.voxel_to_world_matrix
    voxels = np.argwhere(labels > 0)
    world = voxels @ affine[:3, :3].T + affine[:3, 3]
    side = (labels[labels > 0] - 1) // 3  # 0 right (-x), 1 left (+x)
    assert (world[side == 0, 0] < grid_centre_mm(grid)[0]).all() and (world[side == 1, 0] > grid_centre_mm(grid)[0]).all()
    third = (labels[labels > 0] - 1) % 3  # 0 upper (+z)
    assert world[third == 0, 2].min() > world[third == 2, 2].max()
    one, method = lung_regions(_lungs(grid, separation_mm=0.0))
    assert method == "midline" and set(np.unique(one)) == set(range(7))


def test_agreement_of_a_map_with_itself(grid):
    values = np.random.default_rng(2).normal(size=grid.shape)
    mask = _lungs(grid).array
    assert agreement(values, values, mask) == {"spearman": pytest.approx(1.0), "mae": 0.0,
                                               "voxels": int(mask.sum())}


# ---------------------------------------------------------------------- bad input
def test_exceptions(grid):
    registration, fixed, lungs = _mass_preserving_pair(grid, 0.9)
    other = Volume(np.ones((24, 26, 27), np.uint8), Grid((24, 26, 27), spacing=(2.0, 1.8, 2.5)))
    with pytest.raises(GeometryError, match="fixed_mask: expected an image on the fixed grid"):
        registration.ventilation(fixed, other)
    with pytest.raises(GraphregError, match="inhale: expected one of"):
        registration.ventilation(fixed, lungs, inhale="exhale")
    with pytest.raises(GeometryError, match="empty"):
        registration.ventilation(fixed, Volume(np.zeros(grid.shape, np.uint8), grid))
    still = Registration(working_field=DisplacementField.identity(grid), fixed_grid=grid, moving=fixed,
                         method="test", config={}, timings={})
    with pytest.raises(GraphregError, match="cannot tell inhale from exhale"):
        still.ventilation(fixed, lungs)


# ---------------------------------------------------------------------- command line
def _result_folder(grid, tmp_path):
    registration, fixed, lungs = _mass_preserving_pair(grid, 0.9)
    write_image(fixed, tmp_path / "fixed.nii.gz")
    write_image(lungs, tmp_path / "mask.nii.gz")
    write_image(registration.moving, tmp_path / "moving.nii.gz")
    inputs = {"fixed": str(tmp_path / "fixed.nii.gz"), "moving": str(tmp_path / "moving.nii.gz"),
              "fixed_mask": str(tmp_path / "mask.nii.gz")}
    return registration.save(tmp_path / "result", inputs=inputs)


def test_command_writes_maps_figure_and_summary(run_cli, grid, tmp_path, monkeypatch, capsys):
    result = _result_folder(grid, tmp_path)
    code, out, err = run_cli(["ventilation", str(result)])
    assert code in (0, None), err
    folder = result / "ventilation"
    names = {p.name for p in folder.iterdir()}
    assert names == set(MAP_FILES.values()) | {"lung_regions.nii.gz", "ventilation.json", "ventilation.png"}
    summary = json.loads((folder / "ventilation.json").read_text())
    assert summary["inhale"] == "fixed" and "inhale: fixed image" in out
    lungs = summary["regions"]["lungs"]
    assert lungs["ventilation_jacobian"]["mean"] == pytest.approx(0.9 ** -3 - 1, abs=1e-4)
    # the warped image (float32 on disk, trilinear on a 3 mm-ish grid) keeps the HU map close
    assert lungs["ventilation_hu"]["mean"] == pytest.approx(0.9 ** -3 - 1, abs=2e-3)
    code, _, err = run_cli(["ventilation", str(result)])
    assert code == 2 and err.startswith("error: ") and "already holds results" in err and err.count("\n") == 1


def test_command_bad_input_is_one_line_and_writes_nothing(run_cli, grid, tmp_path, monkeypatch, capsys):
    result = _result_folder(grid, tmp_path)
    report = json.loads((result / "report.json").read_text())
    write_image(Volume(np.ones((10, 10, 10), np.uint8), Grid((10, 10, 10))), tmp_path / "small.nii.gz")
    cases = [
        (["ventilation", str(result), "--fixed-mask", str(tmp_path / "small.nii.gz")], "expected an image on the result's fixed grid"),
        (["ventilation", str(result), "--inhale", "both"], "inhale: expected one of"),
        (["ventilation", str(tmp_path)], "no report.json"),
    ]
    report["inputs"] = {}
    (tmp_path / "bare").mkdir()
    for name in ("report.json",):
        (tmp_path / "bare" / name).write_text(json.dumps(report))
    (tmp_path / "bare" / "field.nii.gz").write_bytes((result / "field.nii.gz").read_bytes())
    cases.append((["ventilation", str(tmp_path / "bare")], "cannot find the fixed image for the ventilation maps"))
    for args, needle in cases:
        code, _, err = run_cli(args)
        assert code == 2, (args, err)
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err
    assert not (result / "ventilation").exists() and not (tmp_path / "bare" / "ventilation").exists()
    assert not any(p.name.startswith(".ventilation") for p in result.iterdir())


def test_command_help():
    from typer.testing import CliRunner

    from graphreg.apps.cli import app

    result = CliRunner().invoke(app, ["ventilation", "--help"])
    assert result.exit_code == 0 and "--inhale" in result.output and "--hu-smoothing" in result.output
