"""The PyTorch reference (llm2vec 0.2.3 in its own venv, ``bench/setup_reference_env.sh``) as a
test oracle: it loads the directories we write, as they are, and embeds texts with them. Tests
that need it are skipped where that venv does not exist, except in CI (``CI=true``), which
builds it (.ci/run) and where a missing venv is a failure: the interop tests must run there."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest


REFERENCE_VENV = Path(os.environ.get("LLM2VEC_REF_VENV",
                                    Path.home() / ".cache" / "llm2vec-jax" / "refvenv"))
REFERENCE_PYTHON = REFERENCE_VENV / "bin" / "python"
IN_CI = os.environ.get("CI", "").lower() == "true"
needs_reference = pytest.mark.skipif(
    not REFERENCE_PYTHON.is_file() and not IN_CI,
    reason="no reference venv (bench/setup_reference_env.sh creates it)")


def run_reference(script: str, *args: str, timeout: int = 600) -> str:
    """Run ``script`` with the reference venv's python; its stdout (the test fails, naming
    the venv, when it is missing: only CI gets here without one)."""
    if not REFERENCE_PYTHON.is_file():
        pytest.fail(f"CI=true but no reference venv at {REFERENCE_VENV} (LLM2VEC_REF_VENV; "
                    "bench/setup_reference_env.sh creates it)")
    done = subprocess.run([str(REFERENCE_PYTHON), "-c", script, *args],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout

_ENCODE = """
import json, sys
import torch
from llm2vec import LLM2Vec
encoder_dir, texts, bidirectional = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1"
l2v = LLM2Vec.from_pretrained(encoder_dir, torch_dtype=getattr(torch, sys.argv[4]),
                              enable_bidirectional=bidirectional)
assert l2v.pooling_mode == "mean" and l2v.max_length == 512, (l2v.pooling_mode, l2v.max_length)
emb = l2v.encode(texts, batch_size=2, show_progress_bar=False, convert_to_numpy=False)
print(json.dumps(emb.double().numpy().tolist()))
"""


def reference_embeddings(encoder_dir: Path, texts, *, bidirectional: bool = True,
                         dtype: str = "float32") -> np.ndarray:
    """The reference's ``encode(texts)`` of ``encoder_dir`` as we wrote it, no conversion
    (mean pooling, max_length 512), run in ``dtype`` ("float64": the exact answer that
    float32 implementations approximate); float64 numbers out."""
    out = run_reference(_ENCODE, str(encoder_dir), json.dumps(texts),
                        "1" if bidirectional else "0", dtype)
    return np.array(json.loads(out.strip().splitlines()[-1]), np.float64)
