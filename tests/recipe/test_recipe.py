"""The recipe runner: base eval -> MNTP -> eval -> SimCSE -> eval -> merged encoder, resumable.

A tiny random Llama with SmolLM2's real tokenizer goes through the whole pipeline with a few
steps per stage via the CLI; the exported encoder must equal base + adapters merged through
the API, load in transformers, and a rerun must skip everything already done.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, WIKITEXT
from hf_oracle import tiny_model_with_tokenizer
from reference_oracle import needs_reference, reference_embeddings, run_reference
from llm2vec_jax.recipe import load_recipe
from llm2vec_jax.train.config import TrainConfigError, load_config

RECIPES = REPO / "configs" / "recipes"
ONE_HOUR = RECIPES / "smollm2-1h.yaml"
ONE_HOUR_CAUSAL = RECIPES / "smollm2-1h-causal.yaml"
TINY_RUN = dict(global_batch_size=4, log_every=1, eval_every=3, eval_batches=1, save_every=3,
                progress_bar=False, async_checkpointing=False)


def _recipe(root: Path, model: str, corpus: Path) -> Path:
    data = {
        "output_dir": str(root / "out"),
        "model": {"path": model},
        "eval": {"sts_dev": "sample:stsb-dev", "limit": 16, "batch_size": 8, "max_length": 64},
        "stages": [
            {"name": "mntp", "data": {"kind": "file", "path": str(corpus), "max_seq_length": 32},
             "lora": {"r": 4, "alpha": 8},
             "optimizer": {"learning_rate": 1e-3, "schedule": "constant"},
             "run": {"stage": "mntp", "max_steps": 3, **TINY_RUN}},
            {"name": "simcse", "data": {"kind": "file", "path": str(corpus), "eval_fraction": 0.1},
             "contrastive": {"max_length": 16},
             "lora": {"r": 4, "alpha": 8},
             "optimizer": {"learning_rate": 1e-3, "schedule": "constant"},
             "run": {"stage": "simcse", "max_steps": 2, **TINY_RUN}},
        ],
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _cli(recipe: Path, *extra):
    return subprocess.run([sys.executable, "-m", "llm2vec_jax.train", "--config", str(recipe),
                           *extra], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("recipe")
    model = tiny_model_with_tokenizer(root / "model", tokenizer_dir)
    lines = WIKITEXT.read_text(encoding="utf-8").splitlines()
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(ln for ln in lines[:400] if ln.strip()) + "\n", encoding="utf-8")
    recipe = _recipe(root, model, corpus)
    done = _cli(recipe)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root, model, recipe, done


def test_recipe_trains_evaluates_and_writes_results(recipe_run):
    root, _, _, done = recipe_run
    out = root / "out"
    for stage in ("mntp", "simcse"):
        assert (out / stage / "DONE").is_file()
        assert (out / stage / "adapter" / "adapter_model.safetensors").is_file()
    # SimCSE started from the MNTP adapter, as the paper's second stage does.
    simcse_config = json.loads((out / "simcse" / "train_config.json").read_text())
    assert simcse_config["model"]["adapter"] == str(out / "mntp" / "adapter")
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert list(rows) == ["base", "mntp", "simcse"]
    assert set(rows["base"]["sts"]) == {"bidirectional_mean", "causal_mean"}
    for name in ("mntp", "simcse"):
        assert set(rows[name]["sts"]) == {"bidirectional_mean"}
        assert np.isfinite(rows[name]["train"]["loss"])
        assert rows[name]["train_wall_s"] > 0 and rows[name]["eval_wall_s"] > 0
    for row in rows.values():
        for scores in row["sts"].values():
            assert scores["n"] == 16 and -1 <= scores["spearman"] <= 1
    assert results["encoder"]["adapters"] == ["mntp", "simcse"]
    assert "STS-B dev x100" in done.stdout and "simcse" in done.stdout.split("STS-B dev x100")[-1]


def test_recipe_sts_eval_applies_its_instruction(recipe_run):
    """eval.instruction reaches both sentences of every pair: the recipe's score equals
    evaluate_sts of the same encoder with that instruction, and differs without it."""
    from llm2vec_jax import LLM2Vec
    from llm2vec_jax.checkpoints.merged import load_merged
    from llm2vec_jax.evaluation import evaluate_sts, load_sts
    from llm2vec_jax.recipe.runner import sts_eval
    from llm2vec_jax.recipe.schema import EvalSettings

    _, model, _, _ = recipe_run
    data = load_sts("sample:stsb-dev")
    instruction = "Retrieve semantically similar text."
    directory, loaded = load_merged(model, [])
    settings = EvalSettings(limit=16, batch_size=8, max_length=64, instruction=instruction)
    ours = sts_eval(loaded, directory, data, settings, [(True, "mean")])["bidirectional_mean"]
    encoder = LLM2Vec.from_pretrained(model, bidirectional=True, pooling_mode="mean",
                                      max_length=64)
    direct = evaluate_sts(encoder, data, limit=16, batch_size=8, instruction=instruction,
                          show_progress_bar=False)
    plain = evaluate_sts(encoder, data, limit=16, batch_size=8, show_progress_bar=False)
    assert ours["spearman"] == pytest.approx(direct["spearman"], abs=1e-6)
    assert ours["pearson"] != pytest.approx(plain["pearson"], abs=1e-4)


def test_encoder_equals_base_plus_adapters(recipe_run):
    from llm2vec_jax import LLM2Vec
    from llm2vec_jax.checkpoints.hf import load_hf_checkpoint
    from llm2vec_jax.checkpoints.peft import load_peft_adapter
    from llm2vec_jax.encoder import _load_tokenizer
    from llm2vec_jax.lora import merge_lora

    root, model_dir, _, _ = recipe_run
    encoder_dir = root / "out" / "encoder"
    for name in ("mntp", "simcse"):
        assert (encoder_dir / "adapters" / name / "adapter_config.json").is_file()
    settings = json.loads((encoder_dir / "llm2vec_config.json").read_text())
    assert settings["pooling_mode"] == "mean" and settings["max_length"] == 512

    texts = ["A man is playing a guitar.", ["Retrieve similar text:", "A dog runs."],
             "Three people sit on a bench near the river."]
    exported = LLM2Vec.from_pretrained(encoder_dir).encode(texts, show_progress_bar=False)
    model = load_hf_checkpoint(model_dir)
    for name in ("mntp", "simcse"):
        load_peft_adapter(model, root / "out" / name / "adapter")
        merge_lora(model)
    direct = LLM2Vec(model, _load_tokenizer(model_dir)).encode(texts, show_progress_bar=False)
    np.testing.assert_allclose(exported, direct, atol=1e-5, rtol=0)
    # The adapters really moved the model: the encoder is not the base model.
    base = LLM2Vec.from_pretrained(model_dir).encode(texts, show_progress_bar=False)
    assert np.max(np.abs(base - direct)) > 1e-4


def test_encoder_loads_in_transformers(recipe_run):
    torch = pytest.importorskip("torch")
    import transformers

    from llm2vec_jax.checkpoints.hf import load_hf_checkpoint

    root, _, _, _ = recipe_run
    encoder_dir = root / "out" / "encoder"
    hf = transformers.AutoModel.from_pretrained(encoder_dir, attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(encoder_dir)
    ids = tokenizer(["A man is playing a guitar on stage."], return_tensors="np")
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids["input_ids"]),
                    attention_mask=torch.tensor(ids["attention_mask"])).last_hidden_state.numpy()
    ours = np.asarray(load_hf_checkpoint(encoder_dir)(ids["input_ids"], ids["attention_mask"],
                                                      causal=True))
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@needs_reference
def test_encoder_loads_in_the_reference_library(recipe_run):
    """The PyTorch llm2vec 0.2.3 loads OUTPUT_DIR/encoder/ as a bidirectional model, reads its
    llm2vec_config.json, and embeds like we do."""
    from llm2vec_jax import LLM2Vec

    root, _, _, _ = recipe_run
    encoder_dir = root / "out" / "encoder"
    # The reference takes all strings or all [instruction, text] pairs, not a mix.
    texts = [["", "A man is playing a guitar."], ["Retrieve similar text:", "A dog runs."],
             ["", "Three people sit on a bench near the river."]]
    theirs = reference_embeddings(encoder_dir, texts)
    ours = LLM2Vec.from_pretrained(encoder_dir).encode(texts, show_progress_bar=False)
    assert theirs.shape == ours.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


_REFERENCE_ADAPTERS = """
import json, sys
import torch
from llm2vec import LLM2Vec
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModel
base, mntp, simcse, texts, adapters = (sys.argv[1], sys.argv[2], sys.argv[3],
                                       json.loads(sys.argv[4]), json.loads(sys.argv[5]))
# peft 0.13.2 loads every adapter directory we wrote, with exactly the tensors in the file
# (a key it does not match would only warn, so the values are compared).
for directory in adapters:
    peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(base), directory)
    loaded = get_peft_model_state_dict(peft_model)
    written = load_file(directory + "/adapter_model.safetensors")
    assert set(loaded) == set(written), (directory, sorted(set(loaded) ^ set(written))[:4])
    for key, value in written.items():
        assert torch.equal(loaded[key], value), (directory, key)
# The paper's recipe in the reference: MNTP merged into its own bidirectional base, then our
# SimCSE adapter applied on top (the pooling and length the exported encoder uses).
l2v = LLM2Vec.from_pretrained(base, peft_model_name_or_path=mntp, merge_peft=True,
                              enable_bidirectional=True, torch_dtype=torch.float32,
                              pooling_mode="mean", max_length=512)
l2v.model = PeftModel.from_pretrained(l2v.model, simcse)
emb = l2v.encode(texts, batch_size=2, show_progress_bar=False)
print(json.dumps(emb.float().numpy().tolist()))
"""


@needs_reference
def test_reference_applies_our_adapters_on_its_own_merged_base(recipe_run):
    """peft 0.13.2 loads every adapter the recipe writes, and the reference's own MNTP merge +
    our SimCSE adapter embeds like our merged encoder."""
    from llm2vec_jax import LLM2Vec
    from llm2vec_jax.checkpoints.hf import load_hf_checkpoint, save_hf_checkpoint

    root, model_dir, _, _ = recipe_run
    out = root / "out"
    # The base as our writer leaves it (the test model was saved by transformers 5, whose
    # tokenizer files 4.44 cannot read); same weights.
    base = save_hf_checkpoint(load_hf_checkpoint(model_dir), root / "base-ours",
                              tokenizer_dir=model_dir, overwrite=True)
    adapters = [out / "mntp" / "adapter", out / "simcse" / "adapter",
                out / "encoder" / "adapters" / "mntp", out / "encoder" / "adapters" / "simcse"]
    texts = [["", "A man is playing a guitar."], ["Retrieve similar text:", "A dog runs."],
             ["", "Three people sit on a bench near the river."]]
    stdout = run_reference(_REFERENCE_ADAPTERS, base, str(adapters[0]),
                           str(adapters[1]), json.dumps(texts),
                           json.dumps([str(a) for a in adapters]))
    theirs = np.array(json.loads(stdout.strip().splitlines()[-1]), np.float32)
    ours = LLM2Vec.from_pretrained(out / "encoder").encode(texts, show_progress_bar=False)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_one_hour_recipe_runs_end_to_end(recipe_run, tmp_path):
    """The shipped one-CPU-hour recipe at a tiny budget on the tiny model and bundled samples:
    bidirectional SimCSE, then supervised NLI (packed triplets) on the SimCSE adapter, STS
    scored with the recipe's instruction after each stage, a bidirectional encoder exported;
    and the causal recipe is the same chain, causal in every stage, with its own SimCSE rate
    and no instruction."""
    _, model, _, _ = recipe_run
    tiny = ["stages.simcse.data.path=sample:wiki1m", "stages.simcse.data.data_files=null",
            "stages.supervised.data.path=sample:nli", "stages.supervised.data.config=null",
            "stages.supervised.data.columns=null", "stages.supervised.data.eval_fraction=0.1",
            "eval.sts_dev=sample:stsb-dev", "eval.limit=16", "eval.batch_size=8",
            "eval.max_length=64"]
    for stage in ("simcse", "supervised"):
        tiny += [f"stages.{stage}.run.{k}={v}" for k, v in dict(
            TINY_RUN, max_steps=2, save_every=2, eval_every=2).items()]
        tiny += [f"stages.{stage}.lora.r=4", f"stages.{stage}.lora.alpha=8",
                 f"stages.{stage}.contrastive.max_length=32"]
    out = tmp_path / "out"
    settings = [f"model.path={model}", f"output_dir={out}"] + tiny
    done = _cli(ONE_HOUR, *(arg for setting in settings for arg in ("--set", setting)))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["eval"]["instruction"] == "Retrieve semantically similar text."
    rows = results["rows"]
    assert list(rows) == ["base", "simcse", "supervised"]
    assert set(rows["supervised"]["sts"]) == {"bidirectional_mean"}
    assert results["encoder"]["adapters"] == ["simcse", "supervised"]
    supervised = json.loads((out / "supervised" / "train_config.json").read_text())
    assert supervised["model"]["adapter"] == str(out / "simcse" / "adapter")
    assert supervised["model"]["attention"] == "bidirectional"
    assert json.loads((out / "encoder" / "llm2vec_jax_config.json").read_text())[
        "attention"] == "bidirectional"
    causal = load_recipe(ONE_HOUR_CAUSAL)
    shipped = load_recipe(ONE_HOUR)
    assert {s.config.model.attention for s in causal.stages} == {"causal"}
    assert [(s.name, s.chain) for s in causal.stages] == [(s.name, s.chain) for s in shipped.stages]
    assert causal.eval.instruction in ("", None)
    # Its SimCSE stage's tuned rate overrides the config file's (the bidirectional one).
    assert causal.stage("simcse").config.optimizer.learning_rate == 2e-3
    assert shipped.stage("simcse").config.optimizer.learning_rate == load_config(
        REPO / "configs" / "simcse" / "smollm2.yaml").optimizer.learning_rate == 3e-4


def test_stages_runs_part_of_a_recipe(recipe_run, tmp_path):
    """``--stages mntp`` trains and scores MNTP only and exports base + MNTP."""
    _, _, recipe, _ = recipe_run
    out = tmp_path / "out"
    done = _cli(recipe, "--stages", "mntp", "--set", f"output_dir={out}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results["rows"]) == ["base", "mntp"]
    assert results["encoder"]["adapters"] == ["mntp"]
    assert not (out / "simcse").exists()


def test_stages_keep_each_stage_s_chain():
    cut = load_recipe(ONE_HOUR, only=["simcse"])
    whole = load_recipe(ONE_HOUR)
    assert [s.name for s in cut.stages] == ["simcse"] and cut.encoder_stage == "simcse"
    assert cut.stage("simcse") == whole.stage("simcse")
    paper = load_recipe(RECIPES / "llama3-8b.yaml", ["encoder.stage=simcse"],
                        only=["mntp", "simcse"])
    assert paper.stage("simcse").chain == ("mntp",)
    with pytest.raises(TrainConfigError, match=r"no stage named mntp in this recipe "
                                               r"\(it has simcse, supervised\)"):
        load_recipe(ONE_HOUR, only=["simcse", "mntp"])
    # A stage cut off from the adapter it trains on would silently train on the bare base.
    with pytest.raises(TrainConfigError, match="supervised trains on the adapter of simcse; "
                                               "run simcse too"):
        load_recipe(ONE_HOUR, only=["supervised"])
    with pytest.raises(TrainConfigError, match="simcse trains on the adapter of mntp"):
        load_recipe(RECIPES / "smollm2.yaml", only=["simcse"])
    with pytest.raises(TrainConfigError, match="encoder.stage='supervised' is not among the "
                                               "stages to run"):
        load_recipe(RECIPES / "llama3-8b.yaml", only=["mntp", "simcse"])
    single = _cli(REPO / "configs" / "simcse" / "smollm2.yaml", "--stages", "simcse")
    assert single.returncode != 0
    assert single.stderr.strip().splitlines()[-1].startswith(
        "--stages picks stages of a recipe; this runs a single stage"), single.stderr[-2000:]


def test_rerun_skips_completed_stages(recipe_run):
    root, _, recipe, _ = recipe_run
    out = root / "out"
    stamp = (out / "encoder" / "model.safetensors").stat().st_mtime_ns
    results_before = json.loads((out / "results.json").read_text())["rows"]
    again = _cli(recipe)
    assert again.returncode == 0, again.stderr[-3000:]
    for name in ("mntp", "simcse"):
        assert f"skipping {name}: done" in again.stdout
        assert f"skipping STS eval of {name}" in again.stdout
    assert "skipping encoder export" in again.stdout
    assert "resumed from step" not in again.stderr  # no trainer was even started
    assert (out / "encoder" / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text())["rows"] == results_before


def test_shipped_recipes_parse_and_chain_adapters():
    for path in sorted(RECIPES.glob("*.yaml")):
        if path.name in (ONE_HOUR.name, ONE_HOUR_CAUSAL.name):
            continue  # not the paper's chain: test_one_hour_recipe_runs_end_to_end
        recipe = load_recipe(path)
        names = [s.name for s in recipe.stages]
        assert names[:2] == ["mntp", "simcse"], path
        for stage in recipe.stages:
            assert stage.config.run.output_dir == f"{recipe.output_dir}/{stage.name}"
            assert stage.config.model.path == recipe.base_model
        assert recipe.stage("simcse").config.model.adapter == f"{recipe.output_dir}/mntp/adapter"
        if "supervised" in names:  # the paper trains it on MNTP, not on SimCSE
            assert recipe.stage("supervised").chain == ("mntp",)
    # The README's MNTP study: the shipped MNTP file at lr 2e-4 for 60 steps, all else as is.
    mntp = load_recipe(RECIPES / "smollm2.yaml").stage("mntp").config
    shipped = load_config(REPO / "configs" / "mntp" / "smollm2-wikitext.yaml")
    assert (mntp.optimizer.learning_rate, mntp.run.max_steps) == (2e-4, 60)
    assert dataclasses.replace(mntp.optimizer, learning_rate=5e-5) == shipped.optimizer
    assert (mntp.data, mntp.lora) == (shipped.data, shipped.lora)
    default = load_recipe(None)  # llm2vec_jax/recipe/default.yaml
    assert default.base_model == "smollm2"
    # Offline: the bundled samples, for training and for the STS evaluation.
    assert [s.config.data.path for s in default.stages] == ["sample:wikitext", "sample:wiki1m"]
    assert default.eval.sts_dev == "sample:stsb-dev" and default.eval.causal_base
    assert [s.config.run.max_steps for s in default.stages] == [20, 20]


def test_nothing_shipped_reads_outside_the_repository():
    """Configs, the package, notebooks and TPU scripts name data by hub id, bundled sample or
    a path the user provides: never a folder beside the checkout."""
    root = REPO
    offenders = [str(p.relative_to(root)) for folder in ("configs", "llm2vec_jax", "notebooks",
                                                         "tpu_scripts")
                 for p in (root / folder).rglob("*") if p.is_file() and p.suffix in
                 (".py", ".yaml", ".yml", ".ipynb", ".sh", ".md", ".txt")
                 and "shared/" in p.read_text(encoding="utf-8", errors="replace")]
    assert not offenders, offenders


def test_recipe_overrides_and_errors(tmp_path):
    recipe = load_recipe(None, ["output_dir=/tmp/x", "stages.simcse.run.max_steps=3",
                                "eval.limit=5"])
    assert recipe.stage("simcse").config.run.max_steps == 3
    assert recipe.stage("simcse").config.run.output_dir == "/tmp/x/simcse"
    assert recipe.eval.limit == 5
    with pytest.raises(TrainConfigError, match="no stage 'simcsee'"):
        load_recipe(None, ["stages.simcsee.run.max_steps=3"])
    with pytest.raises(TrainConfigError, match="stages.<name>.run.max_steps"):
        load_recipe(None, ["run.max_steps=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - {name: mntp, run: {max_step: 3}}\n")
    with pytest.raises(TrainConfigError, match=r"did you mean 'max_steps'"):
        load_recipe(bad)
    bad.write_text("stages:\n  - {name: mntp}\n  - {name: simcse, stage: simcse, after: mntpp}\n")
    with pytest.raises(TrainConfigError, match="not an earlier stage"):
        load_recipe(bad)
    bad.write_text("stagess: []\n")
    with pytest.raises(TrainConfigError, match="did you mean 'stages'"):
        load_recipe(bad)
