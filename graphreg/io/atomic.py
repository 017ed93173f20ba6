"""Atomic file output: a file appears complete under its final name, or not at all.

Every writer in :mod:`graphreg.io` goes through :func:`atomic_output`. The data is first written
into a private temporary folder next to the target (same file system, so the final move is an
atomic :func:`os.replace`), under the target's own file name. Keeping the name matters for two
reasons: SimpleITK chooses the file format from the extension (``.nii.gz``, ``.mha``), and
formats with a side file (``.mhd`` + ``.raw``) record the side file's name inside the header.
When the block raises, the temporary folder is removed and an existing target is left untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; publish it when the block succeeds.

    Every file the block creates in the temporary folder is moved next to ``path`` (side files
    first, ``path`` itself last), so readers never see a half-written file. Missing parent folders
    of ``path`` are created.

    Args:
        path: the final file name.

    Yields:
        A path with the same file name as ``path`` inside a fresh temporary folder in
        ``path``'s parent folder.

    Example:
        >>> with atomic_output("out/landmarks.csv") as tmp:   # doctest: +SKIP
        ...     tmp.write_text("x,y,z\\n")
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging / target.name
        written = sorted(staging.iterdir(), key=lambda p: p.name == target.name)
        if not any(p.name == target.name for p in written):
            raise FileNotFoundError(f"atomic_output: the block did not write {target.name!r}")
        for item in written:
            os.replace(item, target.parent / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_output`); returns ``Path(path)``."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)
