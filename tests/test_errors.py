"""graphreg.errors.is_int_at_least: the one integer check behind the argument and config errors."""

import numpy as np
import pytest

from graphreg.errors import is_int_at_least


@pytest.mark.parametrize("value, minimum, expected", [
    (3, 1, True), (1, 1, True), (0, 1, False), (0, 0, True), (-1, 0, False),
    (True, 0, False), (False, 0, False),  # bools are ints to Python, never to graphreg
    (2.0, 1, False), ("2", 1, False), (None, 0, False), (np.int64(2), 1, False),
])
def test_is_int_at_least(value, minimum, expected):
    assert is_int_at_least(value, minimum) is expected
