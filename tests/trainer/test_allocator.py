"""The allocator setting: the inner loop's freed score matrices are reused, not faulted in."""

import multiprocessing
import os
import platform
import resource
import statistics

import pytest
import torch

from benchmarks.bench_adapt import random_problem
from trainer.adapt import InnerRule, inner_loop
from trainer.allocator import keep_large_blocks

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or "malloc" in os.environ.get("LD_PRELOAD", ""),
    reason="glibc's own malloc (not a preloaded one) is what mallopt tunes",
)


def _faults_per_call(calls: int) -> float:
    """Minor page faults of a batched inner loop of 256 users over 3,706 items (as
    bench_adapt): the median over `calls`, since a call that first touches a new malloc
    arena (a torch thread that had not allocated yet, on a busy machine) faults once."""
    users, items, support = random_problem(n_users=256, n_support=20, n_items=3706, dim=64)
    rule = InnerRule(torch.eye(64), torch.tensor(3.0), rating_weight=0.05, steps=5)
    faults = []
    with torch.no_grad():
        inner_loop(users, items, support, rule)  # the first call may grow the heap
        for _ in range(calls):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            inner_loop(users, items, support, rule)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return statistics.median(faults)


def _tuned_faults_per_call(calls: int) -> tuple[bool, float]:
    return keep_large_blocks(), _faults_per_call(calls)


def test_the_inner_loops_large_blocks_are_reused() -> None:
    # In a fresh process: page faults are counted per process, so whatever earlier tests
    # of the suite left behind (threads still running, a fragmented heap) would count too.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        tuned, faults = pool.apply(_tuned_faults_per_call, (5,))
    assert tuned
    # Each call frees and allocates (256, 3706) float matrices of 3.8 MB, about 930 pages
    # each: handed back to the kernel, every one faults in again; reused, hardly any do.
    assert faults < 1000
