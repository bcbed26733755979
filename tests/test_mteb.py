"""MTEB 2.x wrapper: instructions as the reference applies them, and a full offline
``mteb.evaluate`` run of a local STS task (STS-B dev slice, no hub downloads)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import STSB_DEV

from llm2vec_jax.encoder import LLM2Vec
from llm2vec_jax.evaluation import read_sts_tsv, sts_scores
from llm2vec_jax.mteb_wrapper import LLM2VecMTEB, llm2vec_instruction

N_PAIRS = 32


def test_package_imports_without_mteb():
    code = ("import sys; sys.modules['mteb'] = None\n"
            "import llm2vec_jax, llm2vec_jax.mteb_wrapper\n"
            "assert llm2vec_jax.LLM2Vec is not None")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("raw, expected", [
    ("Retrieve semantically similar text.", "Retrieve semantically similar text:"),
    ("Given a question, retrieve passages", "Given a question, retrieve passages:"),
    ("Already: ", "Already: :"),  # only a final ":" counts, as in the reference
    ("Ends with colon:", "Ends with colon:"),
    ("", ""),
])
def test_llm2vec_instruction(raw, expected):
    assert llm2vec_instruction(raw) == expected


class _Recorder:
    """Stands in for LLM2Vec: records what the wrapper asks it to encode."""

    hidden_size, max_length, name_or_path, num_parameters = 3, 512, "recorder", 0

    def __init__(self):
        self.calls = []

    def encode(self, texts, batch_size=32, show_progress_bar=True):
        self.calls.append((texts, batch_size, show_progress_bar))
        return np.ones((len(texts), 3), np.float32)


class _Meta:
    def __init__(self, name, prompt=None):
        self.name, self.prompt = name, prompt


@pytest.fixture
def recorder_wrapper():
    rec = _Recorder()
    wrapper = LLM2VecMTEB.__new__(LLM2VecMTEB)
    wrapper.model, wrapper.revision, wrapper.model_name = rec, None, "recorder"
    wrapper.adapter = wrapper.base = None
    wrapper.task_to_instructions = {"MyRetrieval": "Given a query, find the passage."}
    return wrapper, rec


def test_instruction_selection(recorder_wrapper):
    mteb = pytest.importorskip("mteb")
    from mteb.types import PromptType

    wrapper, rec = recorder_wrapper
    batches = [{"text": ["a", "b"]}, {"text": ["c"]}]
    wrapper.encode(batches, task_metadata=_Meta("MyRetrieval"), prompt_type=PromptType.query,
                   batch_size=7, show_progress_bar=False)
    assert rec.calls[-1] == ([["Given a query, find the passage:", t] for t in "abc"], 7, False)
    wrapper.encode(batches, task_metadata=_Meta("MyRetrieval"), prompt_type=PromptType.document)
    assert rec.calls[-1][0] == [["", t] for t in "abc"]
    # No custom instruction: the task's own prompt (per prompt type when it is a dict).
    wrapper.encode(batches, task_metadata=_Meta("X", {"query": "Find it"}),
                   prompt_type=PromptType.query)
    assert rec.calls[-1][0][0] == ["Find it:", "a"]
    # Symmetric task without a prompt: mteb's STS default instruction, on every text.
    sts = mteb.get_task("STSBenchmark")
    wrapper.encode(batches, task_metadata=sts.metadata, prompt_type=None)
    assert rec.calls[-1][0] == [["Retrieve semantically similar text:", t] for t in "abc"]
    assert isinstance(wrapper, mteb.models.EncoderProtocol)


def test_similarity(recorder_wrapper):
    wrapper, _ = recorder_wrapper
    a = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    b = np.array([[3.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(wrapper.similarity_pairwise(a, b), [1.0, 2 ** -0.5, 0.0],
                               atol=1e-6)
    np.testing.assert_allclose(wrapper.similarity(a, b)[1], [0.0, 2 ** -0.5, 1.0], atol=1e-6)


@pytest.fixture(scope="module")
def local_sts_task():
    mteb = pytest.importorskip("mteb")
    from datasets import Dataset

    data = read_sts_tsv(STSB_DEV)
    base = type(mteb.get_task("STSBenchmark"))

    class LocalSTSB(base):
        """STSBenchmark's definition with a local slice of STS-B dev as its test split."""

        def load_data(self, *args, **kwargs):
            self.dataset = {"default": {"test": Dataset.from_dict({
                "sentence1": list(data.sentences1[:N_PAIRS]),
                "sentence2": list(data.sentences2[:N_PAIRS]),
                "score": [float(s) for s in data.scores[:N_PAIRS]]})}}
            self.data_loaded = True

    return LocalSTSB(), data


def test_mteb_evaluate_offline(smollm2_dir, local_sts_task, monkeypatch, tmp_path):
    mteb = pytest.importorskip("mteb")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task, data = local_sts_task
    wrapper = LLM2VecMTEB(smollm2_dir, max_length=128)
    result = mteb.evaluate(wrapper, task, cache=None, show_progress_bar=False,
                           encode_kwargs={"batch_size": 16, "show_progress_bar": False})
    scores = result.task_results[0].scores["test"][0]
    # Same numbers from our own pipeline: the STS instruction on both sides, cosine, Spearman.
    instr = "Retrieve semantically similar text:"
    n = N_PAIRS
    # One encode call per side, as mteb makes them: packed rows put each text next to others,
    # so a different grouping changes float32 rounding (and these scores in the 6th digit).
    emb1, emb2 = (wrapper.model.encode([[instr, t] for t in side[:n]], batch_size=16,
                                       show_progress_bar=False)
                  for side in (data.sentences1, data.sentences2))
    ours = sts_scores(emb1, emb2, data.scores[:n])
    assert scores["cosine_spearman"] == pytest.approx(ours["spearman"], abs=1e-6)
    assert scores["cosine_pearson"] == pytest.approx(ours["pearson"], abs=1e-6)
    assert scores["main_score"] == pytest.approx(ours["spearman"], abs=1e-6)


# ------------------------------------------------------------------ the mteb CLI


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer_dir):
    from hf_oracle import tiny_model_with_tokenizer
    return tiny_model_with_tokenizer(tmp_path_factory.mktemp("mteb-tiny") / "tiny", tokenizer_dir)


def test_mteb_cli_writes_mteb_result_files(tiny_model_dir, local_sts_task, monkeypatch,
                                           tmp_path):
    pytest.importorskip("mteb")
    import json

    import safetensors.numpy

    from llm2vec_jax import evaluate, mteb_wrapper
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task, data = local_sts_task
    # The local task stands in for mteb's STSBenchmark (whose data is not cached here).
    monkeypatch.setattr(mteb_wrapper, "resolve_tasks", lambda names: [task])
    table = tmp_path / "instructions.json"
    table.write_text(json.dumps({"STSBenchmark": "Find similar sentences."}))
    out = tmp_path / "mteb-out"
    args = evaluate.build_parser().parse_args(
        ["mteb", "--model", tiny_model_dir, "--tasks", "STSBenchmark", "--output-dir", str(out),
         "--instructions", str(table), "--max-length", "64", "--batch-size", "16", "--quiet"])
    lines = evaluate.run_mteb_tasks(args)
    folder = out / "results" / "llm2vec-jax__tiny" / "no_revision_available"
    written = json.loads((folder / "STSBenchmark.json").read_text())
    meta = json.loads((folder / "model_meta.json").read_text())
    # The score mteb wrote is our own pipeline's: the table's instruction + ":" on both sides.
    enc = LLM2Vec.from_pretrained(tiny_model_dir, max_length=64)
    instr = "Find similar sentences:"
    emb1, emb2 = (enc.encode([[instr, t] for t in side[:N_PAIRS]], batch_size=16,
                             show_progress_bar=False)
                  for side in (data.sentences1, data.sentences2))
    ours = sts_scores(emb1, emb2, data.scores[:N_PAIRS])
    assert written["scores"]["test"][0]["main_score"] == pytest.approx(ours["spearman"], abs=1e-6)
    assert lines == [{"task": "STSBenchmark", "main_score": pytest.approx(ours["spearman"]),
                      "results": str(out / "results")}]
    weights = safetensors.numpy.load_file(f"{tiny_model_dir}/model.safetensors")
    # The encoder's weights: the HF file's, less its LM head (untied here, unused to embed).
    assert "lm_head.weight" in weights
    assert meta["n_parameters"] == sum(v.size for k, v in weights.items()
                                       if k != "lm_head.weight")
    assert (meta["name"], meta["embed_dim"], meta["max_tokens"]) == (
        "llm2vec-jax/tiny", enc.hidden_size, 64)
    assert meta["similarity_fn_name"] == "cosine" and meta["use_instructions"] is True
    assert meta["framework"] == ["JAX", "LLM2Vec"]


def _evaluate_cli(tmp_path, *args):
    import os
    # An empty cache: no task's data can be there, whatever this machine downloaded before.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "hf" / "ds")}
    return subprocess.run([sys.executable, "-m", "llm2vec_jax.evaluate", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_mteb_cli_errors_are_one_line(tmp_path):
    pytest.importorskip("mteb")
    done = _evaluate_cli(tmp_path, "mteb", "--model", "unused", "--tasks", "NoSuchTask",
                         "--output-dir", str(tmp_path))
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith(
        "mteb error: unknown MTEB task 'NoSuchTask'")
    # A real task whose data was never downloaded here: named, with how to get it.
    done = _evaluate_cli(tmp_path, "mteb", "--model", "unused", "--tasks", "STS12",
                         "--output-dir", str(tmp_path))
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("mteb error: the data of MTEB task 'STS12' is not in the datasets "
                           "cache"), last
    assert "mteb.get_task('STS12').load_data()" in last
    assert "Traceback" not in done.stderr


def test_reference_instruction_table_ships_in_configs():
    from llm2vec_jax.mteb_wrapper import INSTRUCTIONS_FILE, load_instructions
    table = load_instructions(INSTRUCTIONS_FILE)
    assert table["STS16"] == "Retrieve semantically similar text:"
    assert table["SciFact"] == ("Given a scientific claim, retrieve documents that support or "
                                "refute the claim:")
    assert len(table) == 27
