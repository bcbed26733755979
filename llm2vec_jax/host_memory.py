"""Handing freed host memory back to the operating system.

glibc keeps freed heap memory mapped in the process. Loading a checkpoint (a host copy of
each weight on its way to the device) and compiling a train step (XLA's own data structures,
a few hundred MB for a scanned 30-layer step) leave that behind; on a CPU backend the step's
buffers then come on top, so the process's peak resident memory is its live data plus the
garbage. ``malloc_trim(0)`` returns the garbage; elsewhere (macOS, musl) it is a no-op.
A job that runs for long (a corpus encoded shard by shard) also keeps large buffers out of
the heap (``map_large_allocations_apart``), so each is unmapped as soon as it is freed.
"""

from __future__ import annotations

import ctypes
import functools
import sys

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


@functools.cache
def _libc_function(name: str):
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None), name)  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return None


def release_freed_host_memory() -> bool:
    """Return freed heap memory to the OS; True when the C library could do it."""
    trim = _libc_function("malloc_trim")
    return bool(trim is not None and trim(0))


def map_large_allocations_apart(threshold: int = 1 << 20) -> bool:
    """From now on, give every allocation of ``threshold`` bytes or more its own mapping,
    unmapped when freed. By default glibc raises that threshold to the largest buffer freed
    so far (up to 32 MiB): XLA's per-batch temporaries then come from the heap, stay resident
    after they are freed and fragment it, so a long encoding job's peak RSS creeps up batch
    after batch (measured: README, "Corpus encoding on this CPU"). A fixed threshold turns
    that adjustment off. True when the C library took it (glibc); elsewhere a no-op."""
    mallopt = _libc_function("mallopt")
    return bool(mallopt is not None and mallopt(_M_MMAP_THRESHOLD, threshold))


def compile_now(jitted, *args):
    """Compile ``jitted`` for ``args`` before the first call (jit caches the executable) and
    return it, then hand the compiler's freed scratch memory back to the OS so the first
    call's buffers do not stack on top of it (docs/performance.md has the peak RSS saved)."""
    compiled = jitted.lower(*args).compile()
    release_freed_host_memory()
    return compiled
