"""GGUF metadata as a plain dict, and the error every GGUF problem raises."""

from __future__ import annotations

from typing import Any


class GGUFError(ValueError):
    """A GGUF file this converter cannot convert faithfully."""


def read_metadata(reader) -> dict[str, Any]:
    """``GGUFReader`` fields as {key: value} (the reader's own ``GGUF.*`` entries left out)."""
    return {name: field.contents() for name, field in reader.fields.items()
            if not name.startswith("GGUF.")}


def require(meta: dict, key: str):
    if key not in meta:
        raise GGUFError(f"GGUF metadata is missing required key {key!r}")
    return meta[key]
