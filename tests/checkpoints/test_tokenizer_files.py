"""The tokenizer files we write load, unchanged, in transformers 5 and in the PyTorch
reference's transformers 4.44 + tokenizers 0.19, and both tokenize to the same ids."""

import json
import shutil

import pytest
import transformers

from conftest import REFERENCE
from llm2vec_jax.checkpoints.tokenizer_files import MODEL_INPUT_NAMES, make_portable
from reference_oracle import needs_reference, run_reference

SENTENCES = (REFERENCE / "encode_sentences_512.txt").read_text().splitlines()

_TOKENIZE = """
import json, sys
import tokenizers, transformers
assert transformers.__version__.startswith("4.44.") and tokenizers.__version__.startswith("0.19."), (
    transformers.__version__, tokenizers.__version__)
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
texts = json.load(open(sys.argv[2]))
enc = tok(texts)
chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
named = {k: getattr(tok, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
print(json.dumps({"class": type(tok).__name__, "ids": enc["input_ids"], "keys": sorted(enc.keys()),
                  "special": [named, sorted(tok.all_special_tokens)], "chat": chat}))
"""


def _ours(directory, texts):
    tok = transformers.AutoTokenizer.from_pretrained(directory)
    enc = tok(texts)
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    # named tokens + the full special set (5.x keeps the extra ones out of special_tokens_map)
    named = {k: getattr(tok, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    return {"ids": enc["input_ids"], "keys": sorted(enc.keys()),
            "special": [named, sorted(tok.all_special_tokens)], "chat": chat}


@pytest.fixture(scope="module")
def written_dirs(smollm2_dir, tmp_path_factory):
    """Tokenizer directories as our writers leave them: the GGUF converter's, and
    transformers 5's save_pretrained of that tokenizer followed by make_portable (what
    LLM2Vec.save, the adapter export and save_hf_checkpoint do)."""
    resaved = tmp_path_factory.mktemp("resaved")
    transformers.AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(resaved)
    make_portable(resaved)
    return {"gguf": smollm2_dir, "save_pretrained": str(resaved)}


@pytest.mark.parametrize("writer", ["gguf", "save_pretrained"])
def test_written_tokenizer_files_are_readable_by_both_generations(written_dirs, writer):
    directory = written_dirs[writer]
    tc = json.load(open(f"{directory}/tokenizer_config.json"))
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tc["model_input_names"] == MODEL_INPUT_NAMES
    assert tc["chat_template"]
    merges = json.load(open(f"{directory}/tokenizer.json"))["model"]["merges"]
    assert isinstance(merges[0], str)  # the form tokenizers 0.19 parses
    ours = _ours(directory, SENTENCES)
    assert ours["keys"] == ["attention_mask", "input_ids"]


@needs_reference
@pytest.mark.parametrize("writer", ["gguf", "save_pretrained"])
def test_both_stacks_tokenize_the_shared_sentences_identically(written_dirs, writer, tmp_path):
    directory = written_dirs[writer]
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(SENTENCES))
    theirs = json.loads(run_reference(_TOKENIZE, directory, str(texts)).strip().splitlines()[-1])
    ours = _ours(directory, SENTENCES)
    assert theirs["class"] == "PreTrainedTokenizerFast"
    # no token_type_ids: LlamaModel.forward rejects them
    assert theirs["keys"] == ours["keys"] == ["attention_mask", "input_ids"]
    assert theirs["special"] == ours["special"]
    assert theirs["chat"] == ours["chat"]
    assert len(theirs["ids"]) == len(SENTENCES) == 512
    assert theirs["ids"] == ours["ids"]
    # and the same ids as the tokenizer we converted from (nothing lost in the rewrite)
    assert ours["ids"] == _ours(written_dirs["gguf"], SENTENCES)["ids"]


def test_make_portable_is_idempotent_and_keeps_merges_it_cannot_downgrade(written_dirs, tmp_path):
    directory = shutil.copytree(written_dirs["save_pretrained"], tmp_path / "again")
    before = {f: (directory / f).read_text() for f in ("tokenizer.json", "tokenizer_config.json")}
    make_portable(directory)
    assert {f: (directory / f).read_text() for f in before} == before
    # A merge containing a space has no lossless "a b" form: the pair form stays (5.x reads it).
    tok = json.loads(before["tokenizer.json"])
    tok["model"]["merges"] = [["a b", "c"], ["d", "e"]]
    (directory / "tokenizer.json").write_text(json.dumps(tok))
    make_portable(directory)
    merges = json.loads((directory / "tokenizer.json").read_text())["model"]["merges"]
    assert merges == [["a b", "c"], ["d", "e"]]
