"""Handing freed host memory back to the operating system.

glibc keeps freed heap memory mapped in the process. Loading a checkpoint (a host copy of
each weight on its way to the device) and compiling a train step (XLA's own data structures,
a few hundred MB for a scanned 30-layer step) leave that behind; on a CPU backend the step's
buffers then come on top, so the process's peak resident memory is its live data plus the
garbage. ``malloc_trim(0)`` returns the garbage; elsewhere (macOS, musl) it is a no-op.
"""

from __future__ import annotations

import ctypes
import functools
import sys


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return None


def release_freed_host_memory() -> bool:
    """Return freed heap memory to the OS; True when the C library could do it."""
    trim = _malloc_trim()
    return bool(trim is not None and trim(0))


def compile_now(jitted, *args):
    """Compile ``jitted`` for ``args`` before the first call (jit caches the executable) and
    return it, then hand the compiler's freed scratch memory back to the OS so the first
    call's buffers do not stack on top of it (docs/performance.md has the peak RSS saved)."""
    compiled = jitted.lower(*args).compile()
    release_freed_host_memory()
    return compiled
