"""The whole LLM2Vec pipeline as one resumable run: base eval -> MNTP -> SimCSE [-> supervised]
-> a merged encoder.

A recipe is a YAML file with a top-level ``stages:`` list::

    output_dir: outputs/llm2vec-smollm2
    model: smollm2                    # or {path: ..., dtype: bfloat16, remat: full}
    eval: {sts_dev: hf:mteb/stsbenchmark-sts, split: validation, limit: null, batch_size: 32}
    encoder: {stage: null, max_length: 512}  # stage: whose adapter chain is exported (last)
    stages:
      - config: configs/mntp/smollm2-wikitext.yaml     # a stage YAML, and/or inline sections
        run: {max_steps: 50}                            # deep-merged over the file
      - name: simcse
        config: configs/simcse/smollm2.yaml
        set: {run.max_steps: 30}                        # dotted overrides, applied last
      - {name: supervised, config: ..., after: mntp}    # the paper trains it on MNTP only

Each stage is an ordinary ``TrainConfig`` (``llm2vec_jax.train.config``) run by ``train()``;
the recipe owns ``model.path`` (the recipe's base model), ``model.adapter`` (the adapter
of the stage named by ``after``, default the previous stage; ``after: null`` = the base model)
and ``run.output_dir`` (``OUTPUT_DIR/<name>``). A finished stage gets ``OUTPUT_DIR/<name>/DONE``
and is skipped on a rerun; an interrupted one resumes from its own checkpoints.

Outputs: ``OUTPUT_DIR/results.json`` (STS-B dev Spearman/Pearson per stage, final train
metrics) and ``OUTPUT_DIR/encoder/``: base + the adapter chain merged, as an HF checkpoint
with tokenizer and ``llm2vec_config.json`` (loads with ``LLM2Vec.from_pretrained`` and
``transformers.AutoModel``), plus each chain adapter in PEFT format under ``adapters/<name>/``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from .data.samples import is_sample
from .data.sources import DatasetUnavailableError, is_hub_ref
from .evaluation import STS_COLUMNS, load_sts
from .train.config import STAGES, TrainConfig
from .typed_config import TrainConfigError, from_dict as _from_dict, set_dotted as _set_dotted

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO_ROOT / "configs" / "recipes" / "default.yaml"
SECTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig))
RECIPE_KEYS = ("output_dir", "model", "eval", "encoder", "stages")
STAGE_KEYS = ("name", "stage", "config", "after", "set") + SECTIONS
EVAL_KEYS = ("sts_dev", "split", "config", "columns", "if_missing", "limit", "batch_size",
             "max_length", "causal_base")
ENCODER_KEYS = ("stage", "max_length", "dtype")
RECIPE_INFO = "llm2vec_recipe.json"   # not llm2vec_config.json: the reference rejects extra keys
_AFTER_PREVIOUS = object()


def is_recipe(path: str | os.PathLike | None) -> bool:
    """Whether the YAML at ``path`` is a recipe (a top-level ``stages:`` list)."""
    if path is None or not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return isinstance(data, dict) and "stages" in data


def _resolve(path: str) -> str:
    # As the stage configs: relative to the working directory, else to the repository root
    # (so the recipes work from anywhere in a checkout).
    if os.path.isabs(path) or os.path.exists(path):
        return path
    candidate = REPO_ROOT / path
    return str(candidate) if candidate.exists() else path


def _check_keys(data: dict, known: tuple[str, ...], where: str) -> None:
    if not isinstance(data, dict):
        raise TrainConfigError(f"{where}: expected a mapping, got {data!r}")
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            raise TrainConfigError(f"unknown recipe key {where + '.' if where else ''}{key}{hint}")


def _deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# -- the recipe ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    config: TrainConfig
    chain: tuple[str, ...]      # earlier stages whose adapters this one starts from, in order

    @property
    def dir(self) -> str:
        return self.config.run.output_dir

    @property
    def adapter(self) -> str:
        return os.path.join(self.dir, "adapter")

    @property
    def done_marker(self) -> str:
        return os.path.join(self.dir, "DONE")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    # A local STS TSV (source, score, sentence1, sentence2), sample:stsb-dev (300 bundled
    # pairs) or a hub dataset, hf:mteb/stsbenchmark-sts, read with split/config/columns.
    sts_dev: str | None = None
    split: str = "validation"
    config: str | None = None
    columns: tuple[str, ...] = STS_COLUMNS
    if_missing: str = "error"       # error | skip: a missing file / unreachable hub dataset
    limit: int | None = None        # first N pairs (quick runs)
    batch_size: int = 32
    max_length: int = 512
    causal_base: bool = True        # also score the base model with causal attention


@dataclasses.dataclass(frozen=True)
class Recipe:
    path: str | None
    output_dir: str
    model: dict                     # ModelSection fields applied to every stage
    eval: EvalSettings
    stages: tuple[Stage, ...]
    encoder_stage: str
    encoder_max_length: int
    encoder_dtype: str

    @property
    def base_model(self) -> str:
        return self.model["path"]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def adapter_dirs(self, names) -> list[str]:
        return [self.stage(n).adapter for n in names]

    def sts_ref(self) -> str | None:
        """``eval.sts_dev`` as ``load_sts`` reads it: a sample or hub reference as written,
        a local file resolved (None when it does not exist)."""
        ref = self.eval.sts_dev
        if not ref or is_sample(ref) or is_hub_ref(ref):
            return ref or None
        path = _resolve(ref)
        return path if os.path.isfile(path) else None

    def load_sts(self):
        """The STS pairs, or None (with a note) when they are missing and if_missing: skip."""
        ref = self.sts_ref()
        if ref is None:
            if self.eval.sts_dev and self.eval.if_missing == "error":
                raise FileNotFoundError(f"eval.sts_dev {self.eval.sts_dev!r} does not exist "
                                        "(set eval.if_missing: skip to run without the STS "
                                        "evaluation)")
            return None
        try:
            return load_sts(ref, split=self.eval.split, config=self.eval.config,
                            columns=self.eval.columns)
        except DatasetUnavailableError as e:
            if self.eval.if_missing == "error":
                raise
            print(f"STS eval skipped: {e}", file=sys.stderr, flush=True)
            return None


def _apply_overrides(raw: dict, overrides: list[str]) -> None:
    """``key=value`` (YAML value) into the recipe; ``stages.<name>.<key>=v`` into that stage."""
    for item in overrides:
        if "=" not in item:
            raise TrainConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        keys = key.strip().split(".")
        value = yaml.safe_load(value)
        if keys[0] == "stages":
            if len(keys) < 3:
                raise TrainConfigError(f"--set {key}: use stages.<name>.<section>.<key>=VALUE")
            matches = [s for s in raw.get("stages") or [] if isinstance(s, dict) and
                       _entry_name(s) == keys[1]]
            if not matches:
                names = [_entry_name(s) for s in raw.get("stages") or [] if isinstance(s, dict)]
                raise TrainConfigError(f"--set {key}: no stage {keys[1]!r} (stages: {names})")
            matches[0].setdefault("set", {})[".".join(keys[2:])] = value
        elif keys[0] in SECTIONS and keys[0] not in RECIPE_KEYS:
            raise TrainConfigError(f"--set {key}: a recipe takes stage settings as "
                                   f"stages.<name>.{key}=VALUE")
        else:
            _set_dotted(raw, ".".join(keys), value)


def _entry_name(entry: dict) -> str | None:
    if entry.get("name"):
        return str(entry["name"])
    if entry.get("stage"):
        return str(entry["stage"])
    run = entry.get("run")
    if isinstance(run, dict) and run.get("stage"):
        return str(run["stage"])
    if entry.get("config"):
        path = _resolve(str(entry["config"]))
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
            stage = (data.get("run") or {}).get("stage")
            if stage:
                return str(stage)
    return None


def load_recipe(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> Recipe:
    """Read and validate a recipe (default: ``configs/recipes/default.yaml``) and every stage
    config in it; nothing is run or loaded."""
    path = os.fspath(path) if path is not None else str(DEFAULT_RECIPE)
    if not os.path.isfile(path):
        raise TrainConfigError(f"recipe file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    _check_keys(raw, RECIPE_KEYS, "")
    _apply_overrides(raw, list(overrides))
    _check_keys(raw, RECIPE_KEYS, "")

    output_dir = raw.get("output_dir") or "outputs/llm2vec"
    model = raw.get("model", "smollm2")
    model = {"path": model} if isinstance(model, str) else dict(model or {})
    if model.get("adapter"):
        raise TrainConfigError("recipe model.adapter: the recipe chains the stages' adapters "
                               "itself; merge an existing adapter into the base model first")
    model.pop("adapter", None)
    model.setdefault("path", "smollm2")

    eval_raw = raw.get("eval") or {}
    _check_keys(eval_raw, EVAL_KEYS, "eval")
    settings = _from_dict(EvalSettings, eval_raw, "eval")
    if settings.if_missing not in ("error", "skip"):
        raise TrainConfigError(f"eval.if_missing={settings.if_missing!r}; choose error or skip")

    entries = raw.get("stages")
    if not isinstance(entries, list) or not entries:
        raise TrainConfigError("recipe 'stages' must be a non-empty list of stage entries")
    stages: list[Stage] = []
    for i, entry in enumerate(entries):
        stages.append(_load_stage(entry, i, stages, output_dir, model))

    encoder_raw = raw.get("encoder") or {}
    _check_keys(encoder_raw, ENCODER_KEYS, "encoder")
    encoder_stage = encoder_raw.get("stage") or stages[-1].name
    if encoder_stage not in [s.name for s in stages]:
        raise TrainConfigError(f"encoder.stage={encoder_stage!r} is not a stage of the recipe")
    return Recipe(path=path, output_dir=output_dir, model=model, eval=settings,
                  stages=tuple(stages), encoder_stage=encoder_stage,
                  encoder_max_length=int(encoder_raw.get("max_length") or 512),
                  encoder_dtype=encoder_raw.get("dtype") or stages[0].config.model.dtype)


def _load_stage(entry, index: int, earlier: list[Stage], output_dir: str, model: dict) -> Stage:
    where = f"stages[{index}]"
    if isinstance(entry, str):
        entry = {"config": entry}
    _check_keys(entry, STAGE_KEYS, where)
    data: dict = {}
    if entry.get("config"):
        file = _resolve(str(entry["config"]))
        if not os.path.isfile(file):
            raise TrainConfigError(f"{where}.config: {entry['config']!r} does not exist")
        with open(file, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    data = _deep_merge(data, {"model": model})
    data = _deep_merge(data, {k: entry[k] for k in SECTIONS if k in entry})
    if entry.get("stage"):
        _set_dotted(data, "run.stage", entry["stage"])
    overrides = entry.get("set") or {}
    if isinstance(overrides, list):  # ["key=value", ...] as on the command line
        overrides = dict(item.split("=", 1) for item in overrides)
        overrides = {k: yaml.safe_load(v) for k, v in overrides.items()}
    for key, value in overrides.items():
        _set_dotted(data, key, value)

    kind = (data.get("run") or {}).get("stage", "mntp")
    name = str(entry.get("name") or kind)
    if name in [s.name for s in earlier]:
        raise TrainConfigError(f"{where}: a stage named {name!r} already exists; give it a name")
    after = entry.get("after", _AFTER_PREVIOUS)
    if after is _AFTER_PREVIOUS:
        after = earlier[-1].name if earlier else None
    if after in (None, "base"):
        chain: tuple[str, ...] = ()
    else:
        previous = {s.name: s for s in earlier}
        if after not in previous:
            raise TrainConfigError(f"{where}.after={after!r}: not an earlier stage "
                                   f"({list(previous) or 'none'})")
        chain = previous[after].chain + (after,)
    adapters = [os.path.join(output_dir, n, "adapter") for n in chain]
    data["model"]["path"] = model["path"]
    data["model"]["adapter"] = (adapters[0] if len(adapters) == 1 else adapters) if adapters else None
    _set_dotted(data, "run.output_dir", os.path.join(output_dir, name))
    try:
        config = _from_dict(TrainConfig, data)
    except TrainConfigError as e:
        raise TrainConfigError(f"{where} ({name}): {e}") from None
    if config.run.stage not in STAGES:
        raise TrainConfigError(f"{where}: run.stage={config.run.stage!r}")
    return Stage(name=name, config=config, chain=chain)


# -- models and STS -------------------------------------------------------------------------------

def merged_model(base: str, adapters: list[str], dtype: str = "float32"):
    """The base checkpoint with each PEFT adapter merged in order (as training saw it)."""
    from .checkpoints.merged import load_merged
    return load_merged(base, adapters, dtype=dtype)


def _encoder(model, directory: str, *, bidirectional: bool, pooling: str, max_length: int):
    from .encoder import LLM2Vec, _load_tokenizer, _name_or_path
    return LLM2Vec(model, _load_tokenizer(directory), pooling_mode=pooling,
                   max_length=max_length, bidirectional=bidirectional,
                   name_or_path=_name_or_path(directory, directory))


def sts_eval(model, directory: str, data, settings: EvalSettings, modes) -> dict:
    """{"bidirectional_mean": {"spearman", "pearson", "n"}, ...} for (bidirectional, pooling)."""
    from .evaluation import evaluate_sts
    results = {}
    for bidirectional, pooling in modes:
        encoder = _encoder(model, directory, bidirectional=bidirectional, pooling=pooling,
                           max_length=settings.max_length)
        key = f"{'bidirectional' if bidirectional else 'causal'}_{pooling}"
        results[key] = evaluate_sts(encoder, data, limit=settings.limit,
                                    batch_size=settings.batch_size, show_progress_bar=False)
    return results


# -- running ------------------------------------------------------------------------------------

def _barrier(name: str) -> None:
    import jax
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


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


def describe(recipe: Recipe) -> str:
    from .train.stages import describe_data
    lines = [f"recipe: {recipe.path}", f"  base model: {recipe.base_model} | output: "
             f"{recipe.output_dir}"]
    for s in recipe.stages:
        c = s.config
        seq = c.data.max_seq_length if c.run.stage == "mntp" else c.contrastive.max_length
        on = " + ".join(["base"] + list(s.chain))
        lines.append(f"  {s.name} ({c.run.stage}): {c.run.max_steps} steps x "
                     f"{c.run.global_batch_size} x {seq} tokens, on {on} | {describe_data(c)}")
    sts = recipe.sts_ref()
    if sts:
        limit = f", first {recipe.eval.limit} pairs" if recipe.eval.limit else ""
        split = f" (split {recipe.eval.split})" if is_hub_ref(sts) else ""
        lines.append(f"  STS eval before training and after each stage: {sts}{split}{limit}")
    elif recipe.eval.sts_dev:
        lines.append(f"  STS eval: skipped ({recipe.eval.sts_dev} not found)")
    else:
        lines.append("  STS eval: none (eval.sts_dev not set)")
    lines.append(f"  encoder: {os.path.join(recipe.output_dir, 'encoder')} = base + "
                 f"{' + '.join(recipe.stage(recipe.encoder_stage).chain + (recipe.encoder_stage,))}")
    return "\n".join(lines)


def run_recipe(recipe: Recipe) -> dict:
    """Run (or resume) every stage, the evaluations and the encoder export; returns results."""
    from .distributed import is_main_process, maybe_initialize_distributed
    from .train.loop import train

    maybe_initialize_distributed()
    main = is_main_process()
    sts_data = recipe.load_sts()
    sts_ref = recipe.sts_ref() if sts_data is not None else None
    if sts_ref and not (is_sample(sts_ref) or is_hub_ref(sts_ref)):
        sts_ref = os.path.abspath(sts_ref)
    signature = {"sts_dev": sts_ref, "limit": recipe.eval.limit,
                 "max_length": recipe.eval.max_length}
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
        directory, model = merged_model(recipe.base_model, adapters, dtype)
        row["sts"] = sts_eval(model, directory, sts_data, recipe.eval, modes)
        row["sts_eval"] = signature
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
            metrics = train(stage.config)
            if main:
                # A stage whose checkpoints had already reached max_steps trains no step and
                # reports nothing: keep the metrics of the run that did.
                if metrics or "train" not in row:
                    row["train"] = {k: float(v) for k, v in metrics.items()}
                with open(stage.done_marker, "w", encoding="utf-8") as f:
                    json.dump({"config": stage.config.to_dict(), "metrics": row["train"]}, f,
                              indent=2)
            results.save()
            fresh.add(stage.name)
            _barrier(f"llm2vec-recipe-{stage.name}")  # the next stage reads this adapter
        pooling = stage.config.contrastive.pooling
        evaluate(stage.name, recipe.adapter_dirs(stage.chain + (stage.name,)), [(True, pooling)])

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
    _barrier("llm2vec-recipe-end")
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
    directory, model = merged_model(recipe.base_model, recipe.adapter_dirs(chain),
                                    recipe.encoder_dtype)
    encoder = _encoder(model, directory, bidirectional=True,
                       pooling=stage.config.contrastive.pooling,
                       max_length=recipe.encoder_max_length)
    parent = os.path.dirname(os.path.abspath(encoder_dir))
    tmp = os.path.join(parent, ".tmp-encoder")
    shutil.rmtree(tmp, ignore_errors=True)
    encoder.save(tmp)
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
    if os.path.isdir(encoder_dir):
        shutil.rmtree(encoder_dir)
    os.rename(tmp, encoder_dir)
    print(f"encoder written to {encoder_dir} (base + {' + '.join(chain)} merged)", flush=True)
    return encoder_dir


def format_table(data: dict, recipe: Recipe | None = None) -> str:
    rows = data.get("rows", {})
    columns: list[str] = []
    for row in rows.values():
        for key in row.get("sts", {}):
            if key not in columns:
                columns.append(key)
    header = ["stage"] + [f"{c} spearman/pearson" for c in columns] + ["train loss", "eval loss"]
    lines = []
    for name, row in rows.items():
        cells = [name]
        for c in columns:
            r = row.get("sts", {}).get(c)
            cells.append(f"{r['spearman'] * 100:.2f} / {r['pearson'] * 100:.2f}" if r else "-")
        train = row.get("train", {})
        cells += [f"{train['loss']:.4f}" if "loss" in train else "-",
                  f"{train['eval_loss']:.4f}" if "eval_loss" in train else "-"]
        lines.append(cells)
    widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]
    fmt = lambda cells: " | ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    sts = data.get("eval", {}).get("sts_dev")
    title = f"STS-B dev x100 ({sts}, n={_n(rows)})" if sts else "no STS eval"
    out = [title, fmt(header), "-+-".join("-" * w for w in widths)] + [fmt(c) for c in lines]
    if "encoder" in data:
        out.append(f"encoder: {data['encoder']['path']}")
    return "\n".join(out)


def usage_example(encoder_dir: str) -> str:
    return ("encode with it:\n  from llm2vec_jax import LLM2Vec\n"
            f"  LLM2Vec.from_pretrained({json.dumps(encoder_dir)}).encode([\"A sentence to embed.\"])")


def _n(rows: dict) -> str:
    for row in rows.values():
        for r in row.get("sts", {}).values():
            return str(r.get("n"))
    return "?"


__all__ = ["Recipe", "Stage", "is_recipe", "load_recipe", "run_recipe", "describe",
           "export_encoder", "merged_model", "format_table", "DEFAULT_RECIPE"]
