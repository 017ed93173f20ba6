"""Fuzz tests of the readers: no input makes them hang or raise anything but graphreg's own errors.

Property checked for every reader: given arbitrary file content (text built from the tokens the
formats use, or raw bytes), the reader either returns a well-formed result or raises a
:class:`graphreg.errors.GraphregError` (the documented errors all derive from it). A deadline per
example catches hangs. Examples are few and small so the file runs in seconds.
"""

import string

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphreg.core.config import RegistrationConfig, load_config
from graphreg.errors import GraphregError
from graphreg.io.dirlab import read_dirlab_raw
from graphreg.io.images import read_image
from graphreg.io.landmarks import Landmarks, read_landmarks, write_landmarks
from graphreg.training import read_recipe
from graphreg.core.volume import Volume

FUZZ = settings(max_examples=60, deadline=2000, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ------------------------------------------------------------------ strategies
_NUMBERS = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e999", "-0", "nan", "inf", "0x10", "1_000", "1,5", "3.", ".5", "+7", "١٢"]),
)
_JUNK = st.text(alphabet=string.printable + "ÿé\u2028\x00", max_size=8)
_TOKEN = st.one_of(_NUMBERS, _NUMBERS, _JUNK, st.sampled_from(["x", "y", "z", "X", "index", "300"]))
_SEPARATOR = st.sampled_from([" ", "\t", ",", ", ", ";", "  "])


@st.composite
def _landmark_text(draw) -> str:
    """Lines of 0-5 tokens joined by format-like separators, sometimes behind an ``x,y,z`` header."""
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        tokens = draw(st.lists(_TOKEN, max_size=5))
        lines.append(draw(_SEPARATOR).join(tokens))
    if draw(st.booleans()):
        lines.insert(0, draw(st.sampled_from(["x,y,z", "X, Y, Z", "x y z", "300", "index"])))
    return draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines) + draw(st.sampled_from(["", "\n"]))


_YAML_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=6),
)
_KEYS = st.one_of(
    st.sampled_from(["preprocess", "keypoints", "levels", "seed", "spacing_mm", "num_points", "radius",
                     "instance_opt", "enabled", "architecture", "model", "train", "data", "gpu", "steps",
                     "loss"]),
    st.text(max_size=5), st.integers(-3, 3), st.booleans(),
)
_YAML_VALUE = st.recursive(
    _YAML_SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=12,
)
_YAML_TRICKS = st.sampled_from([
    "seed: 2001-13-45\n", "2001-02-30: 1\n", "seed: !!python/object:os.system x\n", "seed: !!binary AAAA\n",
    "a: &x [*x]\n", "? [1, 2]\n: 3\n", "seed: *undefined\n", "[" * 2000, "{" * 300 + "}" * 300,
    "preprocess: {spacing_mm: .nan}\n", "seed: 0o17\n", "seed: 1e3\n", "---\n---\n", "%YAML 9.9\n---\n",
    "architecture: voxelmorph\ntrain: {1: 2, a: 3}\n", "architecture: voxelmorph\ngpu: {train: 1}\n",
])


def _yaml_text(draw_value) -> str:
    return yaml.safe_dump(draw_value, allow_unicode=True)


_CONFIG_TEXT = st.one_of(
    _YAML_VALUE.map(_yaml_text),
    _YAML_TRICKS,
    st.text(alphabet=string.printable, max_size=60),
    st.tuples(_YAML_VALUE.map(_yaml_text), st.text(alphabet=":-[]{}&*!|>'\"#%@` \n\t", max_size=8),
              st.integers(0, 60)).map(lambda t: t[0][:t[2]] + t[1] + t[0][t[2]:]),
)


def _check_landmarks(result) -> None:
    assert isinstance(result, Landmarks)
    assert result.points.ndim == 2 and result.points.shape[1] == 3 and len(result) >= 1
    assert np.isfinite(result.points).all()


# ------------------------------------------------------------------ landmark files
@FUZZ
@given(text=_landmark_text(), suffix=st.sampled_from([".txt", ".csv", ".pts", ".dat"]),
       fmt=st.sampled_from(["auto", "dirlab", "l2r", "world"]))
def test_fuzz_landmark_text(tmp_path, text, suffix, fmt):
    path = tmp_path / f"points{suffix}"
    path.write_bytes(text.encode("utf-8"))
    try:
        result = read_landmarks(path, fmt=fmt)
    except GraphregError:
        return
    _check_landmarks(result)


@FUZZ
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".txt", ".csv"]),
       fmt=st.sampled_from(["auto", "dirlab", "l2r", "world"]))
def test_fuzz_landmark_bytes(tmp_path, data, suffix, fmt):
    path = tmp_path / f"points{suffix}"
    path.write_bytes(data)
    try:
        result = read_landmarks(path, fmt=fmt)
    except GraphregError:
        return
    _check_landmarks(result)


_COORD = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@FUZZ
@given(points=st.lists(st.tuples(_COORD, _COORD, _COORD), min_size=1, max_size=8),
       fmt=st.sampled_from(["dirlab", "l2r", "world"]))
def test_fuzz_landmark_round_trip_is_exact(tmp_path, points, fmt):
    array = np.asarray(points, dtype=np.float64)
    if fmt == "dirlab":
        array = np.abs(array)  # 0-based voxel indices, written 1-based
    space = "world" if fmt == "world" else "voxel"
    path = write_landmarks(Landmarks(array, space), tmp_path / f"points.{fmt}", fmt=fmt)
    back = read_landmarks(path, fmt=fmt)
    assert back.space == space
    if fmt == "dirlab":  # the 1-based shift is one addition and one subtraction in float64
        np.testing.assert_allclose(back.points, array, rtol=0, atol=1e-9 * max(1.0, np.abs(array).max()))
    else:
        np.testing.assert_array_equal(back.points, array)


# ------------------------------------------------------------------ configurations
@FUZZ
@given(text=_CONFIG_TEXT)
def test_fuzz_config_yaml_text(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        result = load_config(path)
    except GraphregError:
        return
    assert isinstance(result, RegistrationConfig)


@FUZZ
@given(data=st.binary(max_size=120))
def test_fuzz_config_yaml_bytes(tmp_path, data):
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    for reader in (load_config, read_recipe):
        try:
            reader(path)
        except GraphregError:
            pass


@FUZZ
@given(mapping=st.dictionaries(_KEYS, _YAML_VALUE, max_size=4))
def test_fuzz_config_mappings(mapping):
    try:
        result = load_config(mapping)
    except GraphregError:
        return
    assert isinstance(result, RegistrationConfig)


@FUZZ
@given(text=_CONFIG_TEXT, variant=st.sampled_from([None, "gpu", "train"]))
def test_fuzz_training_recipe(tmp_path, text, variant):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        recipe = read_recipe(path, variant)
    except GraphregError:
        return
    assert isinstance(recipe, dict) and recipe["architecture"]
    assert all(isinstance(recipe[s], dict) for s in ("model", "data", "loss", "train"))


# ------------------------------------------------------------------ DIR-Lab raw images
_DIM = st.integers(-1, 5)


@FUZZ
@given(dims=st.tuples(_DIM, _DIM, _DIM), extra=st.integers(-3, 3),
       spacing=st.tuples(*[st.one_of(st.floats(-1.0, 3.0), st.just(float("nan")))] * 3))
def test_fuzz_dirlab_raw_sizes(tmp_path, dims, extra, spacing):
    count = int(np.prod([max(d, 0) for d in dims]))
    size = max(0, 2 * count + extra)
    path = tmp_path / "image.img"
    path.write_bytes(np.arange(size, dtype=np.uint8).tobytes())
    try:
        volume = read_dirlab_raw(path, dims_xyz=dims, spacing_xyz=spacing)
    except GraphregError:
        return
    assert isinstance(volume, Volume)
    assert size == 2 * count and volume.array.shape == dims[::-1] and volume.array.dtype == np.int16
    assert np.all(np.asarray(volume.grid.spacing) > 0)


@FUZZ
@given(dims=st.lists(st.one_of(st.integers(-2, 4), st.text(max_size=2), st.none(), st.floats()), max_size=4),
       spacing=st.lists(st.one_of(st.floats(), st.text(max_size=2), st.none()), max_size=4))
def test_fuzz_dirlab_raw_geometry_arguments(tmp_path, dims, spacing):
    path = tmp_path / "image.img"
    path.write_bytes(b"\x00\x01" * 8)
    try:
        volume = read_dirlab_raw(path, dims_xyz=dims, spacing_xyz=spacing)
    except GraphregError:
        return
    assert int(np.prod(volume.array.shape)) == 8


@settings(FUZZ, max_examples=25)
@given(size=st.integers(0, 4096), name=st.sampled_from(["case1_T00_s.img", "copd3_iBHCT.img", "scan.img"]))
def test_fuzz_dirlab_raw_through_read_image(tmp_path, size, name):
    path = tmp_path / name
    path.write_bytes(b"\x01" * size)
    with pytest.raises(GraphregError):  # every case image is megabytes; "scan" names no case
        read_image(path)


@settings(FUZZ, max_examples=40)
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".nii", ".nii.gz", ".mha", ".nrrd"]))
def test_fuzz_image_bytes(tmp_path, data, suffix):
    path = tmp_path / f"image{suffix}"
    path.write_bytes(data)
    with pytest.raises(GraphregError):  # random bytes never form a valid 3D volume this small
        read_image(path)
