"""The PyTorch reference (llm2vec 0.2.3 in its own venv, ``bench/setup_reference_env.sh``) as a
test oracle: it embeds texts with an encoder directory we wrote. Tests that need it are
skipped where that venv does not exist (CI installs no second torch stack)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

REFERENCE_VENV = Path(os.environ.get("LLM2VEC_REF_VENV",
                                    Path.home() / ".cache" / "llm2vec-jax" / "refvenv"))
needs_reference = pytest.mark.skipif(
    not (REFERENCE_VENV / "bin" / "python").is_file(),
    reason="no reference venv (bench/setup_reference_env.sh creates it)")

_ENCODE = """
import json, sys
import torch
from llm2vec import LLM2Vec
encoder_dir, texts, bidirectional = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1"
l2v = LLM2Vec.from_pretrained(encoder_dir, torch_dtype=torch.float32,
                              enable_bidirectional=bidirectional)
assert l2v.pooling_mode == "mean" and l2v.max_length == 512, (l2v.pooling_mode, l2v.max_length)
emb = l2v.encode(texts, batch_size=2, show_progress_bar=False)
print(json.dumps(emb.float().numpy().tolist()))
"""


def reference_embeddings(encoder_dir: Path, texts, scratch: Path, *,
                         bidirectional: bool = True) -> np.ndarray:
    """The reference's ``encode(texts)`` of ``encoder_dir`` (mean pooling, max_length 512)."""
    sys.path.insert(0, str(REPO / "bench"))
    import common  # bench/: the tokenizer.json downgrade the reference's tokenizers 0.19 needs

    legacy_view = common.reference_model_dir(Path(encoder_dir), cache_dir=scratch)
    done = subprocess.run([str(REFERENCE_VENV / "bin" / "python"), "-c", _ENCODE,
                           str(legacy_view), json.dumps(texts), "1" if bidirectional else "0"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.array(json.loads(done.stdout.strip().splitlines()[-1]), np.float32)
