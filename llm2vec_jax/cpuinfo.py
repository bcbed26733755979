"""The host processor as Linux describes it in /proc/cpuinfo: what the CPU-dependent choices
(bf16 matmul operands, the compile cache's directory) and the benchmarks' records read."""

from __future__ import annotations

from pathlib import Path

_CPUINFO = Path("/proc/cpuinfo")
FLAG_FIELDS = ("flags", "Features")  # the instruction-set extensions: x86, Arm


def cpu_fields(cpuinfo: str | None = None) -> dict[str, str] | None:
    """Each field's first value (the first processor's), keys and values stripped
    (``cpuinfo``: the file's text, read when None); None where there is no such file."""
    if cpuinfo is None:
        try:
            cpuinfo = _CPUINFO.read_text(errors="replace")
        except OSError:
            return None
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields
