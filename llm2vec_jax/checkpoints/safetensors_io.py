"""Reading safetensors files with positioned reads: every dtype HF checkpoints use
(including BF16, which ``safetensors.numpy`` cannot return) and no memory map; writing them
one tensor at a time.

The format is an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}}`` and the tensor bytes, offsets
counted from the end of the header. ``safetensors.safe_open`` maps the whole file, and every
page a load touches stays in the process's resident set until the file is closed: loading a
checkpoint would peak at twice its size. Here each tensor is read into its own array.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Callable, Sequence

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsFormatError(ValueError):
    """The file is not a readable safetensors file."""


class SafetensorsFile:
    """``keys()``, ``shape(key)``, ``dtype(key)`` from the header; ``read(key)`` → np.ndarray."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            self._entries, self.metadata, self._data_start = self._read_header()
        except BaseException:
            self.close()  # and mark it closed, or __del__ closes the number again
            raise

    def _fail(self, problem: str) -> SafetensorsFormatError:
        return SafetensorsFormatError(f"{self.path!r} is not a valid safetensors file "
                                      f"(corrupt or truncated?): {problem}")

    def _read_header(self):
        size = os.fstat(self._fd).st_size
        raw = os.pread(self._fd, 8, 0)
        if len(raw) < 8:
            raise self._fail("shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", raw)
        if length > min(_MAX_HEADER, size - 8):
            raise self._fail(f"header length {length} exceeds the file")
        try:
            header = json.loads(os.pread(self._fd, length, 8))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._fail(f"header is not JSON ({e})") from None
        metadata = header.pop("__metadata__", None) or {}
        data_start, data_size = 8 + length, size - 8 - length
        data_end = 0
        for key, entry in header.items():
            try:
                dtype, shape = DTYPES[entry["dtype"]], tuple(entry["shape"])
                begin, end = entry["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise self._fail(f"bad header entry for {key!r}: {entry}") from None
            if end - begin != math.prod(shape) * dtype.itemsize or not 0 <= begin <= end:
                raise self._fail(f"tensor {key!r}: offsets {begin}..{end} do not fit "
                                 f"{entry['dtype']}{list(shape)}")
            data_end = max(data_end, end)
        if data_end > data_size:  # the usual corruption: an interrupted download or copy
            raise SafetensorsFormatError(
                f"{self.path!r} is truncated: its header describes {data_start + data_end} "
                f"bytes, the file has {size}; download (or copy) it again")
        return header, metadata, data_start

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key]["shape"])

    def dtype(self, key: str) -> np.dtype:
        return DTYPES[self._entries[key]["dtype"]]

    def read(self, key: str) -> np.ndarray:
        entry = self._entries[key]
        begin, end = entry["data_offsets"]
        out = np.empty(self.shape(key), self.dtype(key))
        view = memoryview(out.reshape(-1).view(np.uint8))
        done = 0
        while done < end - begin:  # pread may return less than asked for large reads
            got = os.preadv(self._fd, [view[done:]], self._data_start + begin + done)
            if got <= 0:
                raise self._fail(f"tensor {key!r} ends early")
            done += got
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()


def write_safetensors(path: str | os.PathLike, entries: Sequence[tuple[str, np.dtype, tuple]],
                      produce: Callable[[str], np.ndarray], *,
                      metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file one tensor at a time: the header from ``entries`` (name,
    dtype, shape) first, then ``produce(name)`` for each in turn, so peak memory is one
    tensor, not the whole file."""
    names = {dtype: name for name, dtype in DTYPES.items()}
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, dtype, shape in entries:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        header[name] = {"dtype": names[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for name, dtype, shape in entries:
            a = np.ascontiguousarray(produce(name))
            if a.dtype != np.dtype(dtype) or a.shape != tuple(shape):
                raise ValueError(f"{name}: produced {a.dtype}{list(a.shape)}, declared "
                                 f"{np.dtype(dtype)}{list(shape)}")
            fh.write(a.tobytes())
        fh.flush()
        os.fsync(fh.fileno())
