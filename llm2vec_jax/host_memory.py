"""Handing freed host memory back to the operating system.

glibc keeps freed heap memory mapped in the process. Loading a checkpoint (a host copy of
each weight on its way to the device) and compiling a train step (XLA's own data structures,
a few hundred MB for a scanned 30-layer step) leave that behind; on a CPU backend the step's
buffers then come on top, so the process's peak resident memory is its live data plus the
garbage. ``malloc_trim(0)`` returns the garbage; elsewhere (macOS, musl) it is a no-op.
A job that runs for long (a corpus encoded shard by shard) also keeps large buffers out of
the heap (``map_large_allocations_apart``), so each is unmapped as soon as it is freed.

XLA:CPU allocates each step's temporaries afresh (a bf16 MNTP step: ~1.3 GB), above glibc's
mmap threshold, so every step maps them anew and the kernel faults them in 4 KiB at a time:
~320k page faults and 0.7 s of system time per step on a 2-core VM. With
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` glibc asks for transparent huge pages on those
mappings (where the kernel leaves huge pages to ``madvise``, the usual default) and the faults
drop ~400-fold. glibc reads tunables only at start-up, so ``python -m llm2vec_jax.<command>``
restarts itself once with it set (``restart_with_transparent_hugepages``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
HUGEPAGE_OPT_OUT = "LLM2VEC_JAX_HUGEPAGES"  # =0 keeps the C library's defaults
_THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


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


def _glibc_version() -> tuple[int, ...]:
    """(major, minor) of the glibc this process runs on; () for another C library."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    except (AttributeError, ValueError, OSError):
        return ()
    return tuple(int(part) for part in version.split(".")[:2]) if name == "glibc" else ()


def _transparent_hugepage_setting() -> str:
    try:
        return _THP_SETTING.read_text()
    except OSError:
        return ""


def transparent_hugepage_environment(environ=None, *, glibc_version=None,
                                     thp_setting: str | None = None) -> dict | None:
    """``environ`` (default ``os.environ``) with ``HUGEPAGE_TUNABLE`` added to
    ``GLIBC_TUNABLES``; None where that would change nothing: the tunable is there already,
    ``LLM2VEC_JAX_HUGEPAGES=0``, a C library other than glibc >= 2.35 (the first with the
    tunable), or a kernel whose huge-page mode is not ``madvise`` (``always`` already gives
    them, ``never`` refuses them). ``glibc_version`` (``()``: not glibc) and ``thp_setting``
    (the sysfs file's text) default to this machine's."""
    environ = dict(os.environ if environ is None else environ)
    glibc_version = _glibc_version() if glibc_version is None else glibc_version
    thp_setting = _transparent_hugepage_setting() if thp_setting is None else thp_setting
    tunables = environ.get("GLIBC_TUNABLES", "")
    if ("glibc.malloc.hugetlb" in tunables or environ.get(HUGEPAGE_OPT_OUT) == "0"
            or glibc_version < (2, 35) or "[madvise]" not in thp_setting):
        return None
    environ["GLIBC_TUNABLES"] = f"{tunables}:{HUGEPAGE_TUNABLE}" if tunables else HUGEPAGE_TUNABLE
    return environ


def running_as_command() -> bool:
    """True while ``python -m llm2vec_jax.<command>`` imports the package: the interpreter sets
    ``sys.argv[0]`` to ``"-m"`` until it has found the module."""
    if sys.argv[:1] != ["-m"]:
        return False
    args = sys.orig_argv[1:]
    for i, arg in enumerate(args):
        if arg.startswith("-m"):
            module = arg[2:] or (args[i + 1] if i + 1 < len(args) else "")
            return module.split(".")[0] == "llm2vec_jax"
    return False


def restart_with_transparent_hugepages() -> None:
    """Replace this process by itself (same interpreter, flags and arguments, same pid) with
    ``transparent_hugepage_environment``; returns only where that is None. Call it first thing
    in a command-line entry point, never in a library import: the restart reruns the program."""
    environ = transparent_hugepage_environment()
    if environ is None:
        return
    if "--debug" in sys.orig_argv:  # otherwise silent: an input error stays one stderr line
        print(f"llm2vec_jax: restarting with GLIBC_TUNABLES={environ['GLIBC_TUNABLES']} "
              f"(transparent huge pages for XLA's host buffers; {HUGEPAGE_OPT_OUT}=0 turns "
              "this off)", file=sys.stderr, flush=True)
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
