"""Tests of graphreg.runtime.allocator: freed memory is reused inside the block, glibc's behaviour after it."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from graphreg.runtime import allocator
from graphreg.runtime.allocator import reuse_enabled, reusing_freed_memory

PAGE = resource.getpagesize()
BLOCK_BYTES = 64 * 2 ** 20  # above glibc's largest mmap threshold (32 MiB): mmap'd by default


MEASURE = """
import json, resource, sys
import torch
from graphreg.runtime import allocator
from graphreg.runtime.allocator import reusing_freed_memory

BLOCK_BYTES = {block}

def faults_per_cycle(cycles=20):
    # glibc's heap takes a few rounds to settle: a freed block of exactly the size asked for can be
    # too small for the aligned request of posix_memalign, which torch uses.
    faults = []
    for _ in range(cycles):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [torch.ones(BLOCK_BYTES // 4) for _ in range(2)]
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del blocks
    return faults

with reusing_freed_memory():
    if {nested}:
        with reusing_freed_memory():
            pass
    inside = faults_per_cycle()
depth = allocator._depth
outside = faults_per_cycle(1)
print(json.dumps({{"inside": inside[-1], "outside": outside[0], "depth": depth}}))
"""


def _faults_in_fresh_process(nested: bool) -> dict:
    """Minor page faults of allocating, filling and freeing two 64 MiB tensors: the last of 20 rounds
    inside :func:`reusing_freed_memory` and one round after it, in a fresh interpreter without the
    user's glibc settings (importing dask.distributed, as the batch tests do, puts
    ``MALLOC_TRIM_THRESHOLD_`` into this process's environment, which switches the reuse off)."""
    code = MEASURE.format(block=BLOCK_BYTES, nested=nested)
    env = {key: value for key, value in os.environ.items() if key not in allocator._USER_SETTINGS}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                          env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not reuse_enabled(), reason="glibc allocator tuning unavailable or disabled here")
@pytest.mark.parametrize("nested", [False, True])
def test_freed_memory_is_reused_inside_and_returned_after(nested):
    pages = 2 * BLOCK_BYTES // PAGE
    faults = _faults_in_fresh_process(nested)
    assert faults["inside"] < 0.05 * pages
    assert faults["depth"] == 0
    assert faults["outside"] > 0.5 * pages  # the freed memory went back to the kernel


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
