"""Reuse of freed memory by the C allocator during a registration (Linux, glibc).

PyTorch's CPU tensors come from ``malloc``. glibc serves every block above its mmap threshold
(128 KiB to 32 MiB) with a fresh ``mmap`` and returns it to the kernel on ``free``, so each
temporary volume (a 12-channel MIND tensor on a 2 mm lung grid is 100 MB) is faulted in page by
page again: on a 2-core machine these page faults were a fifth of a registration's time.

:func:`reusing_freed_memory` (a context manager and decorator) switches glibc to serve large blocks
from its heap and to keep freed heap memory for the next allocation, and on exit switches back to
glibc's default values (glibc's dynamic mmap threshold stays off once ``mallopt`` has been called)
and hands the free memory back to the kernel (``malloc_trim``). The price is a
higher peak RSS (blocks of different sizes fragment the heap); it is released on exit.

It does nothing when the C library is not glibc, when the process already sets glibc's allocator
through the ``MALLOC_MMAP_MAX_``, ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``
environment variables (their values are kept), or when ``GRAPHREG_REUSE_MEMORY=0``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import threading

#: ``mallopt`` parameter numbers from glibc's ``malloc.h``.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: glibc's defaults of those parameters (``malloc.h``, ``mallopt(3)``).
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
#: Environment variables through which a user tunes glibc's allocator; graphreg then leaves it be.
_USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_lock = threading.Lock()
_depth = 0


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    glibc = all(hasattr(libc, symbol) for symbol in ("gnu_get_libc_version", "mallopt", "malloc_trim"))
    return libc if glibc else None


def reuse_enabled() -> bool:
    """Whether :func:`reusing_freed_memory` changes the allocator in this process."""
    if os.environ.get("GRAPHREG_REUSE_MEMORY", "1").strip() == "0":
        return False
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    return _glibc() is not None


@contextlib.contextmanager
def reusing_freed_memory():
    """Keep freed memory in the process for reuse while the block runs (nestable, thread-safe).

    Use as ``with reusing_freed_memory(): ...`` or as a decorator. See the module docstring.
    """
    global _depth
    libc = _glibc() if reuse_enabled() else None
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
