"""Turn results (numpy arrays and scalars, paths, nested containers) into plain JSON types."""

from __future__ import annotations

import numpy as np


def to_jsonable(value):
    """``value`` with dict keys as strings, tuples as lists, numpy arrays / scalars as Python
    values and anything else that JSON cannot hold (paths, objects) as its ``str``."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
