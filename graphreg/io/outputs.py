"""A result folder that appears complete under its final name, or not at all.

Used for registration outputs (``graphreg register --out DIR``): files are written into a hidden
staging folder beside ``DIR``; when the block finishes, the staging folder is renamed to ``DIR``.
An interrupted run (exception, Ctrl-C) removes the staging folder, so no partial result can be
mistaken for a finished one. An existing non-empty ``DIR`` is refused unless ``overwrite``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from graphreg.errors import GraphregError


class ResultDirectory:
    """Context manager yielding the staging folder to write into.

    Example:
        >>> with ResultDirectory("out") as staging:   # doctest: +SKIP
        ...     (staging / "report.json").write_text("{}")
    """

    def __init__(self, path, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self._staging: Path | None = None

    def __enter__(self) -> Path:
        if self.path.exists() and not self.path.is_dir():
            raise GraphregError(f"out: {self.path} exists and is not a folder")
        if self.path.is_dir() and any(self.path.iterdir()) and not self.overwrite:
            raise GraphregError(f"out: {self.path} already holds results; pass --overwrite (overwrite=True) "
                                "to replace them")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial",
                                              dir=self.path.parent))
        return self._staging

    def __exit__(self, exc_type, exc, tb) -> bool:
        staging = self._staging
        assert staging is not None
        if exc_type is not None:
            shutil.rmtree(staging, ignore_errors=True)
            return False
        if self.path.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".old", dir=self.path.parent))
            os.replace(self.path, retired / "previous")
            os.replace(staging, self.path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, self.path)
        os.chmod(self.path, 0o755)
        return False
