"""release_freed_host_memory really lowers the resident set after a burst of freed allocations;
the transparent-huge-page tunable really cuts page faults, and only commands restart for it."""

import os
import subprocess
import sys

import numpy as np
import pytest

from llm2vec_jax.host_memory import (HUGEPAGE_OPT_OUT, HUGEPAGE_TUNABLE, release_freed_host_memory,
                                     transparent_hugepage_environment)


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


def test_hugepage_environment_adds_the_tunable_only_where_it_changes_something():
    madvise = "always [madvise] never\n"
    env = transparent_hugepage_environment({"PATH": "/bin"}, glibc_version=(2, 36),
                                           thp_setting=madvise)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": HUGEPAGE_TUNABLE}
    # Other tunables are kept; the new one is appended.
    env = transparent_hugepage_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                                           glibc_version=(2, 36), thp_setting=madvise)
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{HUGEPAGE_TUNABLE}"
    unchanged = [
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), madvise),  # the user chose
        ({HUGEPAGE_OPT_OUT: "0"}, (2, 36), madvise),
        ({}, (2, 34), madvise),  # no such tunable before glibc 2.35
        ({}, (), madvise),  # not glibc (musl, macOS)
        ({}, (2, 36), "[always] madvise never\n"),  # huge pages already
        ({}, (2, 36), "always madvise [never]\n"),
        ({}, (2, 36), ""),  # no such setting (not Linux)
    ]
    for environ, version, setting in unchanged:
        assert transparent_hugepage_environment(
            environ, glibc_version=version, thp_setting=setting) is None, (environ, version, setting)


_FAULTS_TOUCHING_256_MB = """
import resource
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = b"\\1" * (256 * 2**20)  # malloc + memset, as XLA's buffers (numpy asks for huge pages itself)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _clean_environment() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", HUGEPAGE_OPT_OUT)}


@pytest.mark.skipif(transparent_hugepage_environment(_clean_environment()) is None,
                    reason="the kernel or C library offers no madvise-mode huge pages here")
def test_hugepage_tunable_faults_a_large_buffer_in_a_few_hundred_times_fewer_pieces():
    def faults(environ):
        out = subprocess.run([sys.executable, "-c", _FAULTS_TOUCHING_256_MB], env=environ,
                             capture_output=True, text=True, check=True).stdout
        return int(out)

    plain = faults(_clean_environment())
    huge = faults(transparent_hugepage_environment(_clean_environment()))
    assert plain > 256 * 2**20 // 4096 * 0.9  # one fault per 4 KiB page
    assert huge * 50 < plain, (huge, plain)  # 2 MiB pages: 512x fewer, less allocator slack


def test_commands_restart_once_with_the_tunable_and_library_imports_never():
    """The restart says so under --debug only (an input error stays one stderr line)."""
    def restarts(args, **extra):
        proc = subprocess.run([sys.executable, *args], env={**_clean_environment(), **extra},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stderr.count("llm2vec_jax: restarting with GLIBC_TUNABLES=")

    expected = int(transparent_hugepage_environment(_clean_environment()) is not None)
    assert restarts(["-m", "llm2vec_jax.convert", "--help", "--debug"]) == expected
    assert restarts(["-mllm2vec_jax.convert", "--help", "--debug"]) == expected
    assert restarts(["-m", "llm2vec_jax.convert", "--help"]) == 0
    assert restarts(["-m", "llm2vec_jax.convert", "--help", "--debug"],
                    **{HUGEPAGE_OPT_OUT: "0"}) == 0
    assert restarts(["-c", "import llm2vec_jax"]) == 0
