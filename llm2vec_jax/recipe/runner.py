"""Running a recipe: every stage (resumable; a finished one is skipped), the STS evaluation
before training and after each stage, and the merged encoder export."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

from ..checkpoints.io import staged_directory
from ..checkpoints.merged import load_merged
from ..distributed import barrier, is_main_process, maybe_initialize_distributed
from ..encoder import LLM2Vec
from ..evaluation import evaluate_sts
from ..train.loop import train
from .report import format_table, usage_example
from ..data.samples import is_sample
from ..data.sources import is_hub_ref
from .schema import EvalSettings, Recipe, Stage

RECIPE_INFO = "llm2vec_recipe.json"   # not llm2vec_config.json: the reference rejects extra keys


def _encoder(model, directory: str, *, bidirectional: bool, pooling: str, max_length: int):
    return LLM2Vec.from_loaded(model, directory, pooling_mode=pooling, max_length=max_length,
                               bidirectional=bidirectional)


def sts_eval(model, directory: str, data, settings: EvalSettings, modes) -> dict:
    """{"bidirectional_mean": {"spearman", "pearson", "n"}, ...} for (bidirectional, pooling)."""
    results = {}
    for bidirectional, pooling in modes:
        encoder = _encoder(model, directory, bidirectional=bidirectional, pooling=pooling,
                           max_length=settings.max_length)
        key = f"{'bidirectional' if bidirectional else 'causal'}_{pooling}"
        results[key] = evaluate_sts(encoder, data, limit=settings.limit,
                                    batch_size=settings.batch_size,
                                    instruction=settings.instruction, show_progress_bar=False)
    return results


class Results:
    """OUTPUT_DIR/results.json, rewritten after every change so an interrupted run keeps it."""

    def __init__(self, path: str, main: bool):
        self.path, self.main = path, main
        self.data: dict = {"rows": {}}
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                self.data = json.load(f)
            self.data.setdefault("rows", {})

    def row(self, name: str) -> dict:
        return self.data["rows"].setdefault(name, {})

    def save(self) -> None:
        if not self.main:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.data, f, indent=2)
        os.replace(tmp, self.path)


def run_recipe(recipe: Recipe) -> dict:
    """Run (or resume) every stage, the evaluations and the encoder export; returns results."""
    maybe_initialize_distributed()
    main = is_main_process()
    sts_data = recipe.load_sts()
    sts_ref = recipe.sts_ref() if sts_data is not None else None
    if sts_ref and not (is_sample(sts_ref) or is_hub_ref(sts_ref)):
        sts_ref = os.path.abspath(sts_ref)
    signature = {"sts_dev": sts_ref, "limit": recipe.eval.limit,
                 "max_length": recipe.eval.max_length}
    if recipe.eval.instruction:
        signature["instruction"] = recipe.eval.instruction
    if is_hub_ref(sts_ref):
        signature["split"] = recipe.eval.split
    results = Results(os.path.join(recipe.output_dir, "results.json"), main)
    results.data.update(model=recipe.base_model, eval=signature)
    results.save()
    dtype = recipe.stages[0].config.model.dtype
    fresh: set[str] = set()   # stages trained (not skipped) in this run

    def evaluate(name: str, adapters: list[str], modes) -> None:
        row = results.row(name)
        if sts_data is None or not main:
            return
        trained = () if name == "base" else recipe.stage(name).chain + (name,)
        stale = bool(fresh.intersection(trained))
        if not stale and row.get("sts_eval") == signature and "sts" in row:
            print(f"skipping STS eval of {name}: already in results.json", flush=True)
            return
        start = time.perf_counter()
        directory, model = load_merged(recipe.base_model, adapters, dtype=dtype)
        row["sts"] = sts_eval(model, directory, sts_data, recipe.eval, modes)
        row["sts_eval"] = signature
        row["eval_wall_s"] = round(time.perf_counter() - start, 1)
        results.save()
        print(f"STS {name}: " + ", ".join(f"{k} spearman {v['spearman'] * 100:.2f}"
                                          for k, v in row["sts"].items())
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)

    base_modes = [(True, "mean")] + ([(False, "mean")] if recipe.eval.causal_base else [])
    evaluate("base", [], base_modes)
    for stage in recipe.stages:
        row = results.row(stage.name)
        if os.path.isfile(stage.done_marker) and os.path.isfile(
                os.path.join(stage.adapter, "adapter_model.safetensors")):
            print(f"skipping {stage.name}: done ({stage.done_marker}; delete it to train again)",
                  flush=True)
            _warn_if_changed(stage)
        else:
            print(f"== {stage.name} ({stage.config.run.stage}) -> {stage.dir}", flush=True)
            start = time.perf_counter()
            metrics = train(stage.config)
            if main:
                row["train_wall_s"] = round(time.perf_counter() - start, 1)
                # A stage whose checkpoints had already reached max_steps trains no step and
                # reports nothing: keep the metrics of the run that did.
                if metrics or "train" not in row:
                    row["train"] = {k: float(v) for k, v in metrics.items()}
                with open(stage.done_marker, "w", encoding="utf-8") as f:
                    json.dump({"config": stage.config.to_dict(), "metrics": row["train"]}, f,
                              indent=2)
            results.save()
            fresh.add(stage.name)
            barrier(f"llm2vec-recipe-{stage.name}")  # the next stage reads this adapter
        mode = (stage.config.model.attention == "bidirectional", stage.config.contrastive.pooling)
        evaluate(stage.name, recipe.adapter_dirs(stage.chain + (stage.name,)), [mode])

    encoder_dir = os.path.join(recipe.output_dir, "encoder")
    chain = recipe.stage(recipe.encoder_stage).chain + (recipe.encoder_stage,)
    if main:
        if os.path.isdir(encoder_dir) and not fresh.intersection(chain):
            print(f"skipping encoder export: {encoder_dir} exists", flush=True)
        else:
            export_encoder(recipe, chain, encoder_dir)
        results.data["encoder"] = {"path": encoder_dir, "adapters": list(chain)}
        results.save()
        print(format_table(results.data, recipe), flush=True)
        print(usage_example(encoder_dir), flush=True)
    barrier("llm2vec-recipe-end")
    return results.data


def _warn_if_changed(stage: Stage) -> None:
    try:
        with open(stage.done_marker, encoding="utf-8") as f:
            before = json.load(f).get("config")
    except (OSError, ValueError):
        return
    now = json.loads(json.dumps(stage.config.to_dict()))  # tuples -> lists, as stored
    if before is not None and before != now:
        changed = sorted(f"{section}.{key}" for section in now
                         for key in now[section]
                         if (before.get(section) or {}).get(key) != now[section][key])
        print(f"  warning: {stage.name}'s config differs from the finished run "
              f"({', '.join(changed[:8])}); delete {stage.done_marker} to retrain",
              file=sys.stderr, flush=True)


def export_encoder(recipe: Recipe, chain: tuple[str, ...], encoder_dir: str) -> str:
    """Merged HF checkpoint + tokenizer + llm2vec_config.json + adapters/<stage>/, atomically."""
    stage = recipe.stage(chain[-1])
    directory, model = load_merged(recipe.base_model, recipe.adapter_dirs(chain),
                                   dtype=recipe.encoder_dtype)
    encoder = _encoder(model, directory,
                       bidirectional=stage.config.model.attention == "bidirectional",
                       pooling=stage.config.contrastive.pooling,
                       max_length=recipe.encoder_max_length)
    with staged_directory(encoder_dir) as tmp:
        encoder.save(tmp, overwrite=True)
        config_path = os.path.join(tmp, "config.json")
        with open(config_path, encoding="utf-8") as f:
            hf_config = json.load(f)
        # The reference keys Llama-3's instruction template on config._name_or_path: keep the
        # base model's, so the merged encoder formats instructions as base + adapters would.
        name = encoder.name_or_path or (recipe.base_model if not os.path.isdir(recipe.base_model)
                                        and recipe.base_model != "smollm2" else "")
        if name:
            hf_config["_name_or_path"] = name
            with open(config_path, "w", encoding="utf-8") as f:
                json.dump(hf_config, f, indent=2)
        for name_ in chain:
            shutil.copytree(recipe.stage(name_).adapter, os.path.join(tmp, "adapters", name_))
        with open(os.path.join(tmp, RECIPE_INFO), "w", encoding="utf-8") as f:
            json.dump({"base_model": recipe.base_model, "adapters": list(chain),
                       "recipe": recipe.path}, f, indent=2)
    print(f"encoder written to {encoder_dir} (base + {' + '.join(chain)} merged)", flush=True)
    return encoder_dir
