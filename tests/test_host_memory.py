"""keep_freed_memory: memory freed by one pass is reused by the next without page faults, also
for blocks above glibc's largest mmap threshold (32 MB)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# allocate, touch and free blocks of activation size, in a fresh interpreter (malloc's state is
# per process), and print the minor page faults each one cost
PROBE = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    if sys.argv[1] == "keep":
        from midiffusion.pipeline.host_memory import keep_freed_memory
        assert keep_freed_memory()
    def faults(mb):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = np.ones(mb * 1024 * 1024 // 8)
        block[::512] += 1
        del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(*[faults(mb) for mb in (64, 24, 8, 64, 16, 24, 64)])
    """
)


def _faults(mode: str) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return [int(v) for v in out.stdout.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_freed_activations_are_reused_without_page_faults() -> None:
    first, *later = _faults("keep")
    assert first > 0
    assert sum(later) < 0.1 * first, (first, later)
    # with glibc's defaults the same sequence faults again after each large free
    plain_first, *plain_later = _faults("plain")
    assert sum(plain_later) > 0.5 * plain_first, (plain_first, plain_later)
