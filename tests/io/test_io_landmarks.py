"""Landmark files (DIR-Lab, Learn2Reg, world mm), spaces and their conversions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphreg.errors import GraphregError, InputFileError, ShapeError
from graphreg.core.geometry import Grid
from graphreg.io import Landmarks, check_pairs, read_landmarks, write_landmarks

# a grid whose voxel -> world map is easy to write down: axes permuted and flipped
GRID = Grid((10, 20, 30), spacing=(0.5, 2.0, 3.0), origin=(10.0, -5.0, 100.0),
            direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))


def _world_analytic(zyx: np.ndarray) -> np.ndarray:
    """world = origin + D @ (spacing * index_xyz) with D = [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]."""
    z, y, x = zyx.T
    return np.stack([10.0 + 2.0 * y, -5.0 - 0.5 * x, 100.0 + 3.0 * z], axis=1)


# ---------------------------------------------------------------------- reading each format
def test_read_dirlab(tmp_path):
    path = tmp_path / "case_300_T00_xyz.txt"
    path.write_text("index\n300\n  211\t139\t66\r\n\n27 131 72.5 \n")
    landmarks = read_landmarks(path)
    assert landmarks.space == "voxel"
    np.testing.assert_array_equal(landmarks.points, [[65, 138, 210], [71.5, 130, 26]])
    assert landmarks.points.dtype == np.float64


def test_read_l2r(tmp_path):
    path = tmp_path / "keypoints.csv"
    path.write_text("0,1,2\n10.5, 20.25 ,30\n")
    landmarks = read_landmarks(path)
    assert landmarks.space == "voxel"
    np.testing.assert_array_equal(landmarks.points, [[2, 1, 0], [30, 20.25, 10.5]])


def test_read_world(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("X, y ,z\n-1.5,2,3e2\n")
    landmarks = read_landmarks(path)
    assert landmarks.space == "world"
    np.testing.assert_array_equal(landmarks.points, [[-1.5, 2, 300]])


def test_explicit_format_overrides_extension(tmp_path):
    path = tmp_path / "points.dat"
    path.write_text("1 2 3\n")
    np.testing.assert_array_equal(read_landmarks(path, fmt="dirlab").points, [[2, 1, 0]])
    with pytest.raises(InputFileError, match="extension '.dat'"):
        read_landmarks(path)
    with pytest.raises(GraphregError, match="fmt: expected 'auto' or one of"):
        read_landmarks(path, fmt="fcsv")


# ---------------------------------------------------------------------- junk
@pytest.mark.parametrize("name, text, message", [
    ("a.txt", "1 2 3\n4 five 6\n", r"a\.txt, line 2: expected numbers"),
    ("a.txt", "1 2 3\n4 5\n", r"a\.txt, line 2: expected 3 values.*got 2"),
    ("a.txt", "1 2 3\n4 5 6 7\n", r"line 2: expected 3 values.*got 4"),
    ("a.txt", "1 2 3\n300\n", r"line 2: expected 3 values.*got 1"),  # header only before points
    ("a.txt", "1 2 3\nindex\n", r"line 2: expected 3 values"),
    ("a.txt", "1 2 3\n4 nan 6\n", r"line 2: expected finite numbers"),
    ("a.txt", "1 2 3\n0 5 6\n", r"line 2: DIR-Lab indices are 1-based"),
    ("a.txt", "", r"a\.txt: expected at least one landmark"),
    ("a.txt", "index\n300\n\n", r"expected at least one landmark"),
    ("a.csv", "1,2,3\n1;2;3\n", r"a\.csv, line 2: expected 3 values"),
    ("a.csv", "1,2,3\n4,x,6\n", r"a\.csv, line 2: expected numbers"),
    ("a.csv", "1,2,3\n4,inf,6\n", r"line 2: expected finite numbers"),
    ("a.csv", "\n\n", r"a\.csv: expected at least one landmark"),
    ("a.csv", "i,j,k\n1,2,3\n", r"a\.csv: cannot tell the landmark format"),
    ("a.csv", "x,y,z\n", r"a\.csv: expected at least one landmark"),
    ("a.csv", "x,y,z\n1,2,3\n4,5\n", r"a\.csv, line 3: expected 3 values"),
])
def test_junk(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputFileError, match=message):
        read_landmarks(path)


def test_junk_explicit_formats(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("x,y,z\n1,2,3\n")
    with pytest.raises(InputFileError, match=r"line 1: expected numbers"):
        read_landmarks(path, fmt="l2r")
    path.write_text("1,2,3\n")
    with pytest.raises(InputFileError, match=r"line 1: expected the header 'x,y,z'"):
        read_landmarks(path, fmt="world")


def test_missing_and_binary(tmp_path):
    with pytest.raises(InputFileError, match=r"nope\.txt: landmark file not found"):
        read_landmarks(tmp_path / "nope.txt")
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(InputFileError, match="not a text landmark file"):
        read_landmarks(tmp_path / "b.txt")


# ---------------------------------------------------------------------- round trips
POINTS_ZYX = np.array([[0.0, 0.0, 0.0], [9.0, 19.0, 29.0], [3.25, 7.1, 0.3333333333333333], [4.0, 5.0, 6.0]])


@pytest.mark.parametrize("fmt, name", [("dirlab", "p.txt"), ("l2r", "p.csv"), ("world", "p.csv")])
def test_roundtrip_exact(tmp_path, fmt, name):
    path = write_landmarks(Landmarks(POINTS_ZYX, "voxel"), tmp_path / name, fmt, grid=GRID)
    back = read_landmarks(path)  # format found again by sniffing
    assert back.space == ("world" if fmt == "world" else "voxel")
    np.testing.assert_allclose(back.to_voxel(GRID).points, POINTS_ZYX, rtol=0, atol=1e-12)
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_written_text(tmp_path):
    points = Landmarks(np.array([[29.0, 19.0, 9.0], [0.0, 0.5, 1.0]]))
    write_landmarks(points, tmp_path / "d.txt", "dirlab")
    assert (tmp_path / "d.txt").read_text() == "10\t20\t30\n2\t1.5\t1\n"
    write_landmarks(points, tmp_path / "l.csv", "l2r")
    assert (tmp_path / "l.csv").read_text() == "9,19,29\n1,0.5,0\n"
    write_landmarks(points, tmp_path / "w.csv", "world", grid=Grid((30, 20, 10), spacing=(2.0, 1.0, 1.0)))
    assert (tmp_path / "w.csv").read_text() == "x,y,z\n18,19,29\n2,0.5,0\n"


def test_write_world_points_to_voxel_formats(tmp_path):
    world = Landmarks(_world_analytic(POINTS_ZYX), "world")
    write_landmarks(world, tmp_path / "p.txt", "dirlab", grid=GRID)
    np.testing.assert_allclose(read_landmarks(tmp_path / "p.txt").points, POINTS_ZYX, atol=1e-12)


def test_write_exceptions(tmp_path):
    with pytest.raises(GraphregError, match="grid: required to convert voxel points to world"):
        write_landmarks(POINTS_ZYX, tmp_path / "w.csv", "world")
    with pytest.raises(GraphregError, match="grid: required to convert world points to voxel"):
        write_landmarks(Landmarks(POINTS_ZYX, "world"), tmp_path / "p.txt", "dirlab")
    with pytest.raises(GraphregError, match="fmt: expected one of"):
        write_landmarks(POINTS_ZYX, tmp_path / "p.txt", "auto")
    with pytest.raises(ShapeError, match=r"points: expected shape \(N, 3\), got \(4, 2\)"):
        write_landmarks(np.zeros((4, 2)), tmp_path / "p.txt", "dirlab")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- spaces
def test_convention_to_world_analytic():
    voxel = Landmarks(POINTS_ZYX)
    world = voxel.to_world(GRID)
    assert world.space == "world"
    np.testing.assert_allclose(world.points, _world_analytic(POINTS_ZYX), atol=1e-12)
    np.testing.assert_allclose(world.to_voxel(GRID).points, POINTS_ZYX, atol=1e-12)
    assert world.to_world(GRID) is world and voxel.to_voxel(GRID) is voxel


def test_landmarks_validation():
    from_tensor = Landmarks(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float32))
    assert from_tensor.points.dtype == np.float64 and len(from_tensor) == 1
    source = np.zeros((2, 3))
    landmarks = Landmarks(source)
    source[0, 0] = 5.0
    assert landmarks.points[0, 0] == 0.0  # copied, and read-only
    with pytest.raises(ValueError):
        landmarks.points[0, 0] = 1.0
    with pytest.raises(ShapeError, match=r"points: expected shape \(N, 3\), got \(3,\)"):
        Landmarks(np.zeros(3))
    with pytest.raises(GraphregError, match="space: expected one of"):
        Landmarks(np.zeros((1, 3)), "mm")
    with pytest.raises(GraphregError, match="found 1 NaN/Inf"):
        Landmarks(np.array([[0.0, np.nan, 0.0]]))


def test_check_pairs():
    assert check_pairs(Landmarks(np.zeros((5, 3))), np.ones((5, 3))) == 5
    with pytest.raises(GraphregError, match="got 300 fixed points and 299 moving points"):
        check_pairs(np.zeros((300, 3)), np.zeros((299, 3)))
    with pytest.raises(GraphregError, match="got 2 inhale points and 3 exhale points"):
        check_pairs(np.zeros((2, 3)), torch.zeros(3, 3), names=("inhale", "exhale"))
    with pytest.raises(ShapeError, match=r"exhale: expected shape \(N, 3\)"):
        check_pairs(np.zeros((2, 3)), np.zeros((2, 2)), names=("inhale", "exhale"))
