"""XLA's persistent compilation cache for the commands.

Every ``python -m llm2vec_jax.<command>`` starts with an empty in-memory cache, so a resumed
run, a recipe's next seed or an evaluation of the next checkpoint compiles again what an
earlier process compiled already: a supervised step compiles once per packed row count
(6 s each for SmolLM2-135M on a 2-core CPU; larger models compile for longer). JAX
can keep the executables on disk; the commands switch that on, in a directory of the user's
cache (``default_dir``), for programs that took at least a second to compile (JAX's own
threshold, so tiny programs never touch the disk).

XLA:CPU executables are machine code for the CPU that compiled them. JAX's cache key hashes
the program, the flags, the platform and its version and the devices' topology; nothing there
is documented to name the host's instruction set, and a home directory shared between
machines (NFS on a cluster) must not hand an AVX-512 program to a CPU without it. The default
directory is therefore one per host CPU model and feature set.

``LLM2VEC_JAX_COMPILE_CACHE=DIR`` chooses the directory, ``=0`` switches the cache off; a
``JAX_COMPILATION_CACHE_DIR`` the user set already wins over both. Importing the library
changes nothing: in a notebook or your own script, set JAX's option yourself.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

from .cpuinfo import FLAG_FIELDS, cpu_fields

CACHE_CHOICE = "LLM2VEC_JAX_COMPILE_CACHE"  # a directory, or 0 for no cache
JAX_OWN = "JAX_COMPILATION_CACHE_DIR"
# The /proc/cpuinfo fields that tell which machine code runs here (x86; Arm).
IDENTITY_FIELDS = ("model name", *FLAG_FIELDS, "CPU implementer", "CPU part")


def host_cpu_fingerprint(cpuinfo: str | None = None) -> str:
    """12 hex digits naming this host's CPU model and instruction-set extensions (the first
    processor's ``IDENTITY_FIELDS`` in /proc/cpuinfo, flags in any order; without them,
    ``platform.processor()``), with the machine type in front."""
    fields = cpu_fields(cpuinfo) or {}
    for key in FLAG_FIELDS:
        if key in fields:
            fields[key] = " ".join(sorted(fields[key].split()))
    identity = [f"{key}:{fields[key]}" for key in IDENTITY_FIELDS if key in fields]
    digest = hashlib.sha256("\n".join(identity or [platform.processor()]).encode()).hexdigest()
    return f"{platform.machine() or 'unknown'}-{digest[:12]}"


def default_dir(environ=None) -> Path:
    """``$XDG_CACHE_HOME`` (else ``~/.cache``) ``/llm2vec-jax/xla/<host CPU fingerprint>``."""
    environ = os.environ if environ is None else environ
    root = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "llm2vec-jax" / "xla" / host_cpu_fingerprint()


def chosen_dir(environ=None) -> str | None:
    """The directory the commands cache compiled programs in; None where there is none
    (``LLM2VEC_JAX_COMPILE_CACHE=0``) or where the user's ``JAX_COMPILATION_CACHE_DIR``
    already configures JAX itself."""
    environ = os.environ if environ is None else environ
    if environ.get(JAX_OWN):
        return None
    choice = environ.get(CACHE_CHOICE, "").strip()
    if choice == "0":
        return None
    return str(Path(choice).expanduser()) if choice else str(default_dir(environ))


def enable_for_commands() -> str | None:
    """Point JAX's persistent compilation cache at ``chosen_dir()``; the directory, or None
    where nothing changed. For command-line entry points only (a library import must not
    change the caller's JAX configuration)."""
    path = chosen_dir()
    if path is None:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    return path
