"""DIR-Lab case table, raw image IO, and the published initial TRE from the real landmark files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graphreg.errors import GraphregError, InputFileError
from graphreg.io import (DIRLAB_CASES, check_pairs, dirlab_case,
                         dirlab_case_from_filename, read_dirlab_raw, read_image, read_landmarks,
                         write_dirlab_raw, write_image)
from graphreg.core.geometry import Grid
from graphreg.core.volume import Volume

DATA = Path(__file__).parents[2] / ".." / "shared" / "data" / "dirlab"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"DIR-Lab landmark files not at {DATA}")


def _landmark_files(name: str) -> tuple[Path, Path]:
    if name.startswith("copd"):
        folder = DATA / "copd" / name
        return folder / f"{name}_300_iBH_xyz_r1.txt", folder / f"{name}_300_eBH_xyz_r1.txt"
    n = int(name[4:])
    folder = DATA / "4dct" / f"case{n}"
    return folder / f"Case{n}_300_T00_xyz.txt", folder / f"Case{n}_300_T50_xyz.txt"


# ---------------------------------------------------------------------- case table
def test_case_table():
    assert sorted(DIRLAB_CASES) == sorted([f"4dct{i}" for i in range(1, 11)] + [f"copd{i}" for i in range(1, 11)])
    assert all(case.spacing_xyz[2] == 2.5 for case in DIRLAB_CASES.values())
    assert DIRLAB_CASES["4dct2"].spacing_xyz == (1.16, 1.16, 2.5)
    assert DIRLAB_CASES["4dct7"].dims_xyz == (512, 512, 136)
    assert DIRLAB_CASES["copd10"].spacing_xyz == (0.742, 0.742, 2.5)
    assert DIRLAB_CASES["copd4"].initial_tre_mm == 29.58
    case = DIRLAB_CASES["4dct1"]
    assert case.shape_zyx == (94, 256, 256)
    assert case.grid == Grid((94, 256, 256), (0.97, 0.97, 2.5))
    assert case.nbytes == 256 * 256 * 94 * 2


@pytest.mark.parametrize("name, expected", [
    ("4dct1", "4dct1"), ("case1", "4dct1"), ("Case10", "4dct10"), ("4DCT03", "4dct3"),
    ("COPD1", "copd1"), ("copd_07", "copd7"), (" copd10 ", "copd10"),
])
def test_dirlab_case_names(name, expected):
    assert dirlab_case(name).name == expected


@pytest.mark.parametrize("name", ["case11", "copd0", "popi1", "", "4dct", "copd1x"])
def test_dirlab_case_exception(name):
    with pytest.raises(GraphregError, match="4dct1..4dct10"):
        dirlab_case(name)


def test_dirlab_case_passthrough_and_filename():
    case = DIRLAB_CASES["copd3"]
    assert dirlab_case(case) is case
    assert dirlab_case_from_filename("/data/case1_T00_s.img").name == "4dct1"
    assert dirlab_case_from_filename("Case10_T50_s.img").name == "4dct10"
    assert dirlab_case_from_filename("copd4_iBHCT.img").name == "copd4"
    assert dirlab_case_from_filename("lung_T00.img") is None
    assert dirlab_case_from_filename("case12_T00.img") is None


# ---------------------------------------------------------------------- published TRE
@needs_data
@pytest.mark.parametrize("name", [f"4dct{i}" for i in range(1, 11)] + ["copd1"])
def test_initial_tre_matches_published(name):
    case = dirlab_case(name)
    inhale_file, exhale_file = _landmark_files(name)
    inhale, exhale = read_landmarks(inhale_file), read_landmarks(exhale_file)
    assert inhale.space == exhale.space == "voxel"
    assert check_pairs(inhale, exhale) == 300
    distances = np.linalg.norm(inhale.to_world(case.grid).points - exhale.to_world(case.grid).points, axis=1)
    # the table gives 2 decimals: a correct reading lies within half of the last digit
    assert abs(distances.mean() - case.initial_tre_mm) <= 0.005


@needs_data
def test_copd1_header_lines_skipped():
    inhale_file, _ = _landmark_files("copd1")
    first_lines = inhale_file.read_text().splitlines()[:3]
    assert first_lines[:2] == ["index", "300"]
    inhale = read_landmarks(inhale_file)
    x, y, z = (float(v) for v in first_lines[2].split())
    np.testing.assert_array_equal(inhale.points[0], [z - 1, y - 1, x - 1])


# ---------------------------------------------------------------------- raw images
def test_raw_roundtrip_and_landmark_names_voxel(tmp_path):
    case = DIRLAB_CASES["4dct1"]
    rng = np.random.default_rng(0)
    array = rng.integers(-1024, 3000, size=case.shape_zyx, dtype=np.int16)
    array[30 - 1, 20 - 1, 10 - 1] = 31111  # 1-based x=10, y=20, z=30
    image_file = tmp_path / "case1_T00_s.img"
    # the on-disk layout is plain little-endian int16, x fastest
    array.astype("<i2").tofile(image_file)

    volume = read_dirlab_raw(image_file, "case1")
    assert volume.array.shape == (94, 256, 256)
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, array)
    assert volume.grid.spacing == (0.97, 0.97, 2.5)
    assert volume.grid.origin == (0.0, 0.0, 0.0)
    assert volume.grid.same_as(case.grid)

    landmark_file = tmp_path / "points.txt"
    landmark_file.write_text("10\t20\t30\n")
    point = read_landmarks(landmark_file)
    z, y, x = np.rint(point.points[0]).astype(int)
    assert volume.array[z, y, x] == 31111
    np.testing.assert_allclose(point.to_world(volume.grid).points[0], [9 * 0.97, 19 * 0.97, 29 * 2.5])

    # geometry from the file name, and through the generic reader
    np.testing.assert_array_equal(read_dirlab_raw(image_file).array, array)
    np.testing.assert_array_equal(read_image(image_file).array, array)

    copy = tmp_path / "copy.img"
    write_dirlab_raw(volume, copy)
    assert copy.read_bytes() == image_file.read_bytes()


def test_raw_explicit_dims_and_spacing(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    path = tmp_path / "small.img"
    write_image(Volume(array, Grid(array.shape)), path)
    volume = read_image(path, dims_xyz=(4, 3, 2), spacing_xyz=(0.5, 0.6, 2.0))
    np.testing.assert_array_equal(volume.array, array)
    assert volume.grid.spacing == (0.5, 0.6, 2.0)
    assert volume.array[1, 2, 3] == 23  # z=1, y=2, x=3: x runs fastest in the file


def test_raw_wrong_size(tmp_path):
    path = tmp_path / "copd1_iBHCT.img"
    path.write_bytes(b"\0" * 1000)
    expected = 512 * 512 * 121 * 2
    with pytest.raises(InputFileError, match=rf"copd1_iBHCT\.img.*expected {expected} bytes.*got 1000 bytes"):
        read_dirlab_raw(path)


def test_raw_exceptions(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        read_dirlab_raw(tmp_path / "case1_T00_s.img")
    unnamed = tmp_path / "scan.img"
    unnamed.write_bytes(b"\0" * 8)
    with pytest.raises(GraphregError, match="cannot tell the DIR-Lab case"):
        read_dirlab_raw(unnamed)
    with pytest.raises(GraphregError, match="spacing_xyz: required"):
        read_dirlab_raw(unnamed, dims_xyz=(2, 2, 1))
    with pytest.raises(GraphregError, match="dims_xyz"):
        read_dirlab_raw(unnamed, dims_xyz=(4, 0, 1), spacing_xyz=(1, 1, 1))


def test_write_raw_range_and_rounding(tmp_path):
    grid = Grid((1, 1, 3))
    path = tmp_path / "v.img"
    write_dirlab_raw(Volume(np.array([[[1.4, -2.6, 7.0]]]), grid), path)
    np.testing.assert_array_equal(np.fromfile(path, "<i2"), [1, -3, 7])
    with pytest.raises(GraphregError, match="int16 range"):
        write_dirlab_raw(Volume(np.array([[[0, 40000, 1]]]), grid), path)
    with pytest.raises(GraphregError, match="finite"):
        write_dirlab_raw(Volume(np.array([[[0.0, np.nan, 1.0]]]), grid), path)
    np.testing.assert_array_equal(np.fromfile(path, "<i2"), [1, -3, 7])  # untouched by failures


def test_case_is_frozen():
    with pytest.raises(AttributeError):
        DIRLAB_CASES["4dct1"].initial_tre_mm = 0.0  # type: ignore[misc]
