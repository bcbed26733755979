#!/usr/bin/env bash
# Creates the virtual environment that runs the PyTorch reference (llm2vec 0.2.3) for the
# side-by-side benchmarks in bench/. It lives outside the repo by default so the multi-GB
# torch install never gets near `git add`.
#
# usage: bench/setup_reference_env.sh [VENV_DIR]     (or LLM2VEC_REF_VENV=VENV_DIR)
set -euo pipefail

VENV="${1:-${LLM2VEC_REF_VENV:-$HOME/.cache/llm2vec-jax/refvenv}}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

# Exactly this torch: the machine's pip finds a local CPU wheel for it, any other spec
# resolves to a multi-GB CUDA build from the index.
TORCH_SPEC="torch==2.13.0"

mkdir -p "$(dirname "$VENV")"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)

# llm2vec's dependency tree (peft, accelerate, ...) declares torch ranges; without a
# constraint pip may "upgrade" torch to satisfy one of them.
CONSTRAINTS="$VENV/bench-constraints.txt"
cat > "$CONSTRAINTS" <<CEOF
$TORCH_SPEC
transformers==4.44.2
peft==0.13.2
llm2vec==0.2.3
CEOF

"${PIP[@]}" install --upgrade pip wheel setuptools
"${PIP[@]}" install -c "$CONSTRAINTS" "$TORCH_SPEC"
# psutil: RSS bookkeeping in bench/reference_side.py; numpy: the reference stack needs it.
"${PIP[@]}" install -c "$CONSTRAINTS" "llm2vec==0.2.3" "peft==0.13.2" psutil numpy

"$VENV/bin/python" - <<'PYEOF'
import torch, transformers, peft, llm2vec  # noqa: F401
from importlib.metadata import version
got = {p: version(p) for p in ("torch", "transformers", "peft", "llm2vec")}
print("reference env:", got)
assert got["torch"].startswith("2.13.0"), got
assert got["transformers"].startswith("4.44."), got
assert got["peft"] == "0.13.2", got
assert got["llm2vec"] == "0.2.3", got
PYEOF
echo "reference venv ready: $VENV/bin/python"
