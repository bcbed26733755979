"""The encoder's settings files: ``llm2vec_config.json`` (the reference's four keys, which its
loader passes to its constructor) and ``llm2vec_jax_config.json`` (what that file cannot hold:
the attention mode the encoder was trained with, named prompts, the similarity function)."""

from __future__ import annotations

import json
import os

from ..embeddings import SIMILARITY_FNS
from ..models.config import ATTENTION_MODES
from ..text.reference import DOC_MAX_LENGTH

LLM2VEC_CONFIG = "llm2vec_config.json"
# What the reference's llm2vec_config.json cannot hold (its constructor rejects unknown keys):
# the attention mode the encoder was trained with (the reference takes it at load time
# instead, ``enable_bidirectional``), the sentence-transformers-style named prompts and
# similarity function.
ATTENTION_CONFIG = "llm2vec_jax_config.json"
JAX_CONFIG_KEYS = ("attention", "prompts", "similarity_fn_name")
# The keys the reference writes and reads; its constructor would reject anything else.
CONFIG_KEYS = ("pooling_mode", "max_length", "doc_max_length", "skip_instruction")


class EncoderConfigError(ValueError):
    """An unreadable ``llm2vec_config.json`` / ``llm2vec_jax_config.json``: the checkpoint's
    fault, so one line in the CLIs (llm2vec_jax/cli_errors.py), not a traceback."""


DEFAULTS = {"pooling_mode": "mean", "max_length": 512, "doc_max_length": DOC_MAX_LENGTH,
            "skip_instruction": True}


def read_llm2vec_config(directory: str | os.PathLike | None) -> dict:
    """The encoder settings in ``directory/llm2vec_config.json`` ({} when absent)."""
    if directory is None:
        return {}
    path = os.path.join(os.fspath(directory), LLM2VEC_CONFIG)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            cfg = json.load(f)
        except ValueError as e:
            raise EncoderConfigError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise EncoderConfigError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    if unknown:
        raise EncoderConfigError(f"{path}: unknown keys {unknown}; known: {list(CONFIG_KEYS)}")
    return cfg


def read_jax_config(directory: str | os.PathLike | None) -> dict:
    """``directory/llm2vec_jax_config.json`` validated ({} when absent): ``attention``,
    ``prompts`` ({name: instruction}, e.g. query/document) and ``similarity_fn_name``."""
    path = os.path.join(os.fspath(directory), ATTENTION_CONFIG) if directory is not None else None
    if path is None or not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            cfg = json.load(f)
        except ValueError:
            cfg = None
    if not isinstance(cfg, dict):
        raise EncoderConfigError(f"{path}: expected a JSON object like "
                                 '{"attention": "bidirectional"}')
    unknown = sorted(set(cfg) - set(JAX_CONFIG_KEYS))
    if unknown:
        raise EncoderConfigError(f"{path}: unknown keys {unknown}; known: {list(JAX_CONFIG_KEYS)}")
    if "attention" in cfg and cfg["attention"] not in ATTENTION_MODES:
        raise EncoderConfigError(f"{path}: attention={cfg['attention']!r}; choose one of "
                                 f"{ATTENTION_MODES}")
    prompts = cfg.get("prompts", {})
    if not (isinstance(prompts, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items())):
        raise EncoderConfigError(f"{path}: prompts must map names to instruction strings, e.g. "
                                 '{"query": "Given a question, retrieve passages:"}')
    if "similarity_fn_name" in cfg and cfg["similarity_fn_name"] not in SIMILARITY_FNS:
        raise EncoderConfigError(f"{path}: similarity_fn_name={cfg['similarity_fn_name']!r}; "
                                 f"choose one of {SIMILARITY_FNS}")
    return cfg


def write_jax_config(directory: str | os.PathLike, bidirectional: bool, *,
                     prompts: dict | None = None, similarity_fn_name: str | None = None) -> None:
    cfg = {"attention": "bidirectional" if bidirectional else "causal"}
    if prompts:
        cfg["prompts"] = dict(prompts)
    if similarity_fn_name is not None:
        cfg["similarity_fn_name"] = similarity_fn_name
    with open(os.path.join(os.fspath(directory), ATTENTION_CONFIG), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)


def write_llm2vec_config(directory: str | os.PathLike, settings: dict) -> None:
    """``llm2vec_config.json`` with exactly the reference's keys, from ``settings``."""
    missing = sorted(set(CONFIG_KEYS) - set(settings))
    if missing:
        raise ValueError(f"encoder settings lack {missing}")
    with open(os.path.join(os.fspath(directory), LLM2VEC_CONFIG), "w", encoding="utf-8") as f:
        json.dump({k: settings[k] for k in CONFIG_KEYS}, f, indent=4)


# A sentence-transformers checkpoint (modules.json + a Pooling module's config.json): the
# pooling its model card promises, in our names. Its other flags have no equivalent here.
ST_MODULES = "modules.json"
ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_weightedmean_tokens":
              "weighted_mean", "pooling_mode_lasttoken": "last_token",
              "pooling_mode_cls_token": "bos_token"}


def read_sentence_transformers(directory: str | os.PathLike) -> dict:
    """``{"pooling_mode", "attention"}`` of a sentence-transformers checkpoint ({} when
    ``directory`` is not one). Such embedders (Qwen3-Embedding, gte-Qwen2, e5-mistral …)
    attend causally unless their ``config.json`` says ``"is_causal": false``."""
    directory = os.fspath(directory)
    modules_path = os.path.join(directory, ST_MODULES)
    if not os.path.isfile(modules_path):
        return {}
    with open(modules_path, encoding="utf-8") as f:
        modules = json.load(f)
    pooling = [m for m in modules if str(m.get("type", "")).endswith("models.Pooling")]
    if not pooling:
        return {}
    config_path = os.path.join(directory, pooling[0].get("path", ""), "config.json")
    with open(config_path, encoding="utf-8") as f:
        flags = {k for k, v in json.load(f).items() if k.startswith("pooling_mode_") and v}
    if len(flags) != 1 or not flags <= set(ST_POOLING):
        raise EncoderConfigError(f"{config_path}: pooling {sorted(flags)} has no equivalent here; "
                                 f"supported: exactly one of {sorted(ST_POOLING)} (or pass "
                                 "pooling_mode=... explicitly)")
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        causal = json.load(f).get("is_causal", True) is not False
    return {"pooling_mode": ST_POOLING[flags.pop()],
            "attention": "causal" if causal else "bidirectional"}
