"""Summary tables (one row per pair) written as CSV."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Sequence, Union

from graphreg.io.atomic import atomic_write_text


def write_csv_table(rows: Sequence[dict], columns: Sequence[str], path: Union[str, os.PathLike],
                    digits: int = 6) -> Path:
    """Write ``rows`` (dicts keyed by ``columns``) as CSV, atomically: floats to ``digits``
    significant digits, None as an empty cell."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: (f"{value:.{digits}g}" if isinstance(value, float) else ("" if value is None else value))
                         for key, value in row.items()})
    return atomic_write_text(path, buffer.getvalue())
