"""release_freed_host_memory really lowers the resident set after a burst of freed allocations."""

import subprocess
import sys

import numpy as np
import pytest

from llm2vec_jax.host_memory import release_freed_host_memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_freed_heap_memory_goes_back_to_the_os():
    release_freed_host_memory()
    # 64 KiB blocks live on the heap (below glibc's mmap threshold), so freeing them keeps
    # the pages resident until trimmed; the last one stays alive to pin the heap top.
    blocks = [np.ones(64 * 1024 // 8) for _ in range(3000)]
    keep = blocks[-1]
    del blocks[:-1]
    before = _rss_bytes()
    assert release_freed_host_memory() is True
    after = _rss_bytes()
    assert before - after > 100 * 2**20, (before, after)
    assert keep.sum() == keep.size


_FREE_AFTER_A_LARGER_FREE = """
import sys
import numpy as np
from llm2vec_jax.host_memory import map_large_allocations_apart
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
if sys.argv[1] == "apart":
    assert map_large_allocations_apart() is True
np.ones(8 * 2**20 // 8)  # freed at once; glibc's default raises the threshold to its size
before = rss()
x = np.ones(7 * 2**20 // 8)  # under it: from the heap, where it stays resident after del
del x
print(rss() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_large_buffers_mapped_apart_leave_nothing_resident_when_freed():
    def resident_after_free(mode):
        out = subprocess.run([sys.executable, "-c", _FREE_AFTER_A_LARGER_FREE, mode],
                             capture_output=True, text=True, check=True).stdout
        return int(out)

    assert resident_after_free("default") > 6 * 2**20  # what the setting prevents
    assert resident_after_free("apart") < 2**20
