"""Our safetensors reader against files written by safetensors' own torch writer."""

import gc
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from llm2vec_jax.checkpoints.safetensors_io import SafetensorsFile, SafetensorsFormatError


def test_reads_every_dtype_exactly(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 5, generator=g), "f16": torch.randn(4, generator=g).half(),
        "bf16": torch.randn(2, 3, 4, generator=g).bfloat16(), "f64": torch.randn(2, generator=g).double(),
        "i64": torch.arange(-3, 3), "i32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "u8": torch.arange(250, 256, dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "all.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    with SafetensorsFile(path) as f:
        assert sorted(f.keys()) == sorted(tensors) and f.metadata == {"format": "pt"}
        for key, t in tensors.items():
            got = f.read(key)
            assert got.shape == tuple(t.shape) and f.shape(key) == tuple(t.shape)
            want = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
            np.testing.assert_array_equal(got.astype(want.dtype), want)
            assert got.dtype.itemsize == t.element_size(), key


@pytest.mark.parametrize("damage", ["truncate_data", "truncate_header", "garbage"])
def test_damaged_files_are_named(tmp_path, damage):
    path = tmp_path / "x.safetensors"
    save_file({"w": torch.ones(64, 64)}, str(path))
    whole = path.read_bytes()
    raw = {"truncate_data": whole[:-100], "truncate_header": whole[:20], "garbage": b"\\x07" * 4000}[damage]
    path.write_bytes(raw)
    unraisable = []
    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        with pytest.raises(SafetensorsFormatError, match="x.safetensors") as error:
            SafetensorsFile(path)
        gc.collect()  # the half-built object's __del__ must not close its descriptor twice
    finally:
        sys.unraisablehook = hook
    assert unraisable == []
    if damage == "truncate_data":
        assert str(error.value) == (f"{str(path)!r} is truncated: its header describes "
                                    f"{len(whole)} bytes, the file has {len(raw)}; download "
                                    "(or copy) it again")
