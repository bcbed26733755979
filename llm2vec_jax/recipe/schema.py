"""A recipe: the whole LLM2Vec pipeline as one file (the stages, their order and adapter chain,
the STS evaluation, the exported encoder), read and validated without running anything.

A recipe is a YAML file with a top-level ``stages:`` list::

    output_dir: outputs/llm2vec-smollm2
    model: smollm2                    # or {path: ..., dtype: bfloat16, remat: full}
    eval: {sts_dev: hf:mteb/stsbenchmark-sts, split: validation, limit: null, batch_size: 32}
    encoder: {stage: null, max_length: 512}  # stage: whose adapter chain is exported (last)
    stages:
      - config: ../mntp/smollm2-wikitext.yaml   # a stage YAML (relative to this file) and/or
        run: {max_steps: 50}                     # inline sections, deep-merged over the file
      - name: simcse
        config: ../simcse/smollm2.yaml
        set: {run.max_steps: 30}                 # dotted overrides, applied last
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

import dataclasses
import os
import sys
from pathlib import Path

import yaml

from ..data.samples import is_sample
from ..data.sources import DatasetUnavailableError, is_hub_ref
from ..evaluation import STS_COLUMNS, load_sts
from ..train.config import STAGES, TrainConfig
from ..typed_config import (TrainConfigError, check_keys, deep_merge, from_dict, load_yaml,
                            parse_override, set_dotted)

DEFAULT_RECIPE = Path(__file__).with_name("default.yaml")
SECTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig))
RECIPE_KEYS = ("output_dir", "model", "eval", "encoder", "stages")
STAGE_KEYS = ("name", "stage", "config", "after", "set") + SECTIONS
EVAL_KEYS = ("sts_dev", "split", "config", "columns", "if_missing", "limit", "batch_size",
             "max_length", "causal_base", "instruction")
ENCODER_KEYS = ("stage", "max_length", "dtype")
_AFTER_PREVIOUS = object()


def is_recipe(path: str | os.PathLike | None) -> bool:
    """Whether the YAML at ``path`` is a recipe (a top-level ``stages:`` list)."""
    if path is None or not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return isinstance(data, dict) and "stages" in data


def _check_keys(data, known: tuple[str, ...], where: str) -> None:
    check_keys(data, known, where, what="recipe key")


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
    # Prepended to both sentences of every pair, as the paper evaluates STS (its instruction
    # is "Retrieve semantically similar text."); null: plain sentences.
    instruction: str | None = None


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
        return ref if os.path.isfile(ref) else None

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


def _include_stage_configs(raw: dict, base_dir: str) -> None:
    """Every stage entry's ``config:`` path made absolute from the recipe's directory."""
    stages = raw.get("stages") if isinstance(raw, dict) else None
    for i, entry in enumerate(stages if isinstance(stages, list) else []):
        if isinstance(entry, str):
            entry = stages[i] = {"config": entry}
        if isinstance(entry, dict) and entry.get("config"):
            entry["config"] = os.path.join(base_dir, os.fspath(entry["config"]))


def _apply_overrides(raw: dict, overrides: list[str]) -> None:
    """``key=value`` (YAML value) into the recipe; ``stages.<name>.<key>=v`` into that stage."""
    for item in overrides:
        key, value = parse_override(item)
        keys = key.split(".")
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
            set_dotted(raw, ".".join(keys), value)


def _entry_name(entry: dict) -> str | None:
    if entry.get("name"):
        return str(entry["name"])
    if entry.get("stage"):
        return str(entry["stage"])
    run = entry.get("run")
    if isinstance(run, dict) and run.get("stage"):
        return str(run["stage"])
    if entry.get("config"):
        path = entry["config"]
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
            stage = (data.get("run") or {}).get("stage")
            if stage:
                return str(stage)
    return None


def load_recipe(path: str | os.PathLike | None = None, overrides: list[str] = (),
                only: list[str] | None = None) -> Recipe:
    """Read and validate a recipe (default: the package's ``recipe/default.yaml``) and every
    stage config in it; nothing is run or loaded. A stage's ``config:`` is a path relative to
    the recipe file. ``only``: run just these stages (the unsupervised half of a recipe, say);
    each keeps the adapter chain it has in the whole recipe, so the stages it builds on must
    be kept too, and the encoder defaults to the last one kept."""
    path = os.fspath(path) if path is not None else str(DEFAULT_RECIPE)
    raw = load_yaml(path, "recipe file")
    _include_stage_configs(raw, os.path.dirname(os.path.abspath(path)))
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
    settings = from_dict(EvalSettings, eval_raw, "eval")
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
    in_recipe = [s.name for s in stages]
    if only:
        stages = _keep_stages(stages, list(only))
    encoder_stage = encoder_raw.get("stage") or stages[-1].name
    if encoder_stage not in in_recipe:
        raise TrainConfigError(f"encoder.stage={encoder_stage!r} is not a stage of the recipe")
    if encoder_stage not in [s.name for s in stages]:
        raise TrainConfigError(
            f"encoder.stage={encoder_stage!r} is not among the stages to run "
            f"({', '.join(s.name for s in stages)}); add --set encoder.stage=STAGE naming "
            "one of them, or run it too")
    return Recipe(path=path, output_dir=output_dir, model=model, eval=settings,
                  stages=tuple(stages), encoder_stage=encoder_stage,
                  encoder_max_length=int(encoder_raw.get("max_length") or 512),
                  encoder_dtype=encoder_raw.get("dtype") or stages[0].config.model.dtype)


def _keep_stages(stages: list[Stage], names: list[str]) -> list[Stage]:
    known = [s.name for s in stages]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise TrainConfigError(f"no stage named {', '.join(unknown)} in this recipe "
                               f"(it has {', '.join(known)})")
    kept = [s for s in stages if s.name in names]
    for stage in kept:
        missing = [n for n in stage.chain if n not in names]
        if missing:
            raise TrainConfigError(f"{stage.name} trains on the adapter of "
                                   f"{' + '.join(stage.chain)}; run {', '.join(missing)} too")
    return kept


def _load_stage(entry, index: int, earlier: list[Stage], output_dir: str, model: dict) -> Stage:
    where = f"stages[{index}]"
    _check_keys(entry, STAGE_KEYS, where)
    data: dict = {}
    if entry.get("config"):
        file = entry["config"]
        if not os.path.isfile(file):
            raise TrainConfigError(f"{where}.config: {file!r} does not exist (a stage config "
                                   "is a path relative to the recipe file)")
        data = load_yaml(file)
    data = deep_merge(data, {"model": model})
    data = deep_merge(data, {k: entry[k] for k in SECTIONS if k in entry})
    if entry.get("stage"):
        set_dotted(data, "run.stage", entry["stage"])
    overrides = entry.get("set") or {}
    if isinstance(overrides, list):  # ["key=value", ...] as on the command line
        overrides = dict(item.split("=", 1) for item in overrides)
        overrides = {k: yaml.safe_load(v) for k, v in overrides.items()}
    for key, value in overrides.items():
        set_dotted(data, key, value)

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
    set_dotted(data, "run.output_dir", os.path.join(output_dir, name))
    try:
        config = from_dict(TrainConfig, data)
    except TrainConfigError as e:
        raise TrainConfigError(f"{where} ({name}): {e}") from None
    if config.run.stage not in STAGES:
        raise TrainConfigError(f"{where}: run.stage={config.run.stage!r}")
    return Stage(name=name, config=config, chain=chain)
