#!/usr/bin/env bash
# The one command for the lent GPU machine (run from the repo root): our JAX train steps vs
# HF torch + peft on a random 1.1B Llama, see bench/gpu.py. Installs nothing: jax (CUDA),
# flax, optax, torch, transformers, peft are in that machine's image, and our package is
# used from the tree via PYTHONPATH (an editable pip install would need setuptools from the
# network under build isolation). Extra arguments go to bench/gpu.py (e.g. --budget 300).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
export OUT
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# JAX's child runs alone on the GPU (torch's child starts after it exits), so it may take
# most of the memory up front instead of growing into fragmentation.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-.90}"
# Persistent cache: a rerun on the same warm machine skips compilation and autotuning.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/llm2vec_jax_cache}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
# No XLA_FLAGS of our own: an unknown flag aborts the process, and jaxlib there (0.11.x) is
# newer than any we could check against. A caller's XLA_FLAGS pass through unchanged.

PY="${PYTHON:-python3}"
# find_spec, not import: importing jax and torch here would cost seconds of the budget.
"$PY" -c 'import importlib.util as u, sys
m = [n for n in ("jax", "flax", "optax", "numpy", "torch", "transformers", "peft", "yaml",
                 "safetensors") if u.find_spec(n) is None]
sys.exit("gpu.sh: missing from this python: " + ", ".join(m) if m else 0)' 

"$PY" bench/gpu.py "$@" 2>&1 | tee "$OUT/gpu_log.txt"
