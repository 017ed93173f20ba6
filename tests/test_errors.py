"""graphreg.errors.is_int_at_least: the one integer check behind the argument and config errors."""

import numpy as np
import pytest

import torch

from graphreg.errors import GraphregError, check_finite, is_int_at_least


@pytest.mark.parametrize("value, minimum, expected", [
    (3, 1, True), (1, 1, True), (0, 1, False), (0, 0, True), (-1, 0, False),
    (True, 0, False), (False, 0, False),  # bools are ints to Python, never to graphreg
    (2.0, 1, False), ("2", 1, False), (None, 0, False), (np.int64(2), 1, False),
])
def test_is_int_at_least(value, minimum, expected):
    assert is_int_at_least(value, minimum) is expected


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_check_finite_counts_nan_and_inf_in_tensors(bad, dtype):
    value = torch.zeros((2, 3, 4), dtype=dtype)
    check_finite("x", value)
    check_finite("x", torch.zeros(0, dtype=dtype))
    check_finite("x", torch.arange(5))  # integers are finite
    value[1, 2, 3] = bad
    value[0, 0, 0] = bad
    with pytest.raises(GraphregError, match="x: expected finite values, found 2 NaN/Inf"):
        check_finite("x", value)
