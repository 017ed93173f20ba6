"""Tests of graphreg.allocator: freed memory is reused inside the block, glibc's behaviour after it."""

from __future__ import annotations

import resource

import pytest
import torch

from graphreg import allocator
from graphreg.allocator import reuse_enabled, reusing_freed_memory

PAGE = resource.getpagesize()
BLOCK_BYTES = 64 * 2 ** 20  # above glibc's largest mmap threshold (32 MiB): mmap'd by default


def _faults_per_cycle(cycles: int = 20) -> list[int]:
    """Minor page faults of each of ``cycles`` rounds of allocating, filling and freeing two
    64 MiB tensors.

    (glibc's heap takes a few rounds to settle: a freed block of exactly the size asked for can be
    too small for the aligned request of ``posix_memalign``, which torch uses.)
    """
    faults = []
    for _ in range(cycles):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [torch.ones(BLOCK_BYTES // 4) for _ in range(2)]
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del blocks
    return faults


@pytest.mark.skipif(not reuse_enabled(), reason="glibc allocator tuning unavailable or disabled here")
def test_freed_memory_is_reused_inside_and_returned_after():
    pages = 2 * BLOCK_BYTES // PAGE
    with reusing_freed_memory():
        inside = _faults_per_cycle()
    outside = _faults_per_cycle(1)
    assert inside[-1] < 0.05 * pages
    assert outside[0] > 0.5 * pages  # the freed memory went back to the kernel


@pytest.mark.skipif(not reuse_enabled(), reason="glibc allocator tuning unavailable or disabled here")
def test_nested_blocks_restore_only_at_the_outermost_exit():
    pages = 2 * BLOCK_BYTES // PAGE
    with reusing_freed_memory():
        with reusing_freed_memory():
            pass
        assert _faults_per_cycle()[-1] < 0.05 * pages
    assert allocator._depth == 0
    assert _faults_per_cycle(1)[0] > 0.5 * pages


def test_decorator_form_returns_the_value_and_propagates_errors():
    @reusing_freed_memory()
    def work(value):
        if value < 0:
            raise ValueError("negative")
        return 2 * value

    assert work(3) == 6
    with pytest.raises(ValueError, match="negative"):
        work(-1)
    assert allocator._depth == 0


@pytest.mark.parametrize("name, value", [("GRAPHREG_REUSE_MEMORY", "0"), ("MALLOC_TRIM_THRESHOLD_", "4096"),
                                         ("MALLOC_MMAP_MAX_", "0"), ("MALLOC_MMAP_THRESHOLD_", "131072")])
def test_user_settings_switch_it_off(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert not reuse_enabled()
    with reusing_freed_memory():
        assert allocator._depth == 0
