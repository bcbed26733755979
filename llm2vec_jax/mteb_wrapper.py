"""An ``LLM2Vec`` encoder for MTEB 2.x (``mteb.evaluate(model, tasks)``).

mteb is optional: this module imports without it, and only ``mteb_model_meta``, the
instruction fallback and the task runner (``resolve_tasks``, ``run_mteb``: what
``python -m llm2vec_jax.evaluate mteb`` calls) touch it, lazily.

Instructions follow the reference's MTEB usage (llm2vec's ``experiments/mteb_eval_custom.py``
and mteb's own ``llm2vec_models.py``): the task's instruction (from ``task_to_instructions``,
e.g. llm2vec's ``test_configs/mteb/task_to_instructions.json``, else the task's MTEB prompt)
is passed through ``llm2vec_instruction`` -- a non-empty instruction not ending in ":" loses
trailing dots and gets ":" appended -- and every text is encoded as ``[instruction, text]``.
Documents of asymmetric tasks (``prompt_type == "document"``) get no instruction, as in
llm2vec's ``encode_corpus`` and the paper ("only for queries in asymmetric tasks");
symmetric tasks such as STS (``prompt_type`` None) instruct both sides.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .embeddings import similarity, similarity_pairwise
from .encoder import LLM2Vec


# The reference's MTEB instruction table (configs/mteb/README.md), in a source checkout.
INSTRUCTIONS_FILE = Path(__file__).resolve().parents[1] / "configs" / "mteb" / \
    "task_to_instructions.json"


class MTEBError(ValueError):
    """An unknown task, task data that cannot be had offline, or a bad instruction table:
    one line in the CLI (llm2vec_jax/cli_errors.py)."""


def load_instructions(path: str | os.PathLike | None) -> dict[str, str]:
    """A ``{task name: instruction}`` JSON table ({} for None)."""
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except ValueError as e:
        raise MTEBError(f"{path}: not valid JSON: {e}") from None
    if not (isinstance(table, dict) and all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in table.items())):
        raise MTEBError(f"{path}: expected a JSON object of task name -> instruction string")
    return table


def resolve_tasks(names: list[str], *, load_data: bool = True) -> list:
    """mteb's task objects for ``names``, their data loaded (from the datasets cache when
    offline): an unknown task or data that cannot be had is an ``MTEBError`` naming it."""
    import mteb

    tasks = []
    for name in names:
        try:
            tasks.append(mteb.get_task(name))
        except KeyError:
            raise MTEBError(f"unknown MTEB task {name!r}; list them with python -c \"import "
                            "mteb; print([t.metadata.name for t in mteb.get_tasks()])\"") from None
    for task in tasks if load_data else ():
        try:
            task.load_data()
        except OSError as e:  # datasets' ConnectionError when offline and not cached
            name = task.metadata.name
            raise MTEBError(
                f"the data of MTEB task {name!r} is not in the datasets cache and the hub "
                f"cannot be reached ({str(e).splitlines()[0]}); download it once online with "
                f"python -c \"import mteb; mteb.get_task('{name}').load_data()\" (same "
                "HF_HOME / HF_DATASETS_CACHE), then run offline") from None
    return tasks


def run_mteb(wrapper: "LLM2VecMTEB", tasks: list, output_dir: str | os.PathLike, *,
             batch_size: int = 32, show_progress_bar: bool = True):
    """``mteb.evaluate`` of ``tasks``, writing mteb's result files under ``output_dir``
    (``results/<model name>/<revision>/<task>.json`` and ``model_meta.json``)."""
    import mteb
    from mteb.cache import ResultCache

    return mteb.evaluate(wrapper, tasks, cache=ResultCache(cache_path=output_dir),
                         overwrite_strategy="always", show_progress_bar=show_progress_bar,
                         encode_kwargs={"batch_size": batch_size,
                                        "show_progress_bar": show_progress_bar})


def llm2vec_instruction(instruction: str) -> str:
    if len(instruction) > 0 and instruction[-1] != ":":
        instruction = instruction.strip(".") + ":"
    return instruction


def _prompt_type_value(prompt_type) -> str | None:
    if prompt_type is None:
        return None
    return getattr(prompt_type, "value", str(prompt_type))


def _texts_from_inputs(inputs) -> list[str]:
    """mteb passes a DataLoader of batches ``{"text": [...], ...}``; plain lists also work."""
    texts: list[str] = []
    for item in inputs:
        if isinstance(item, Mapping):
            texts.extend(item["text"])
        else:
            texts.append(item)
    return texts


class LLM2VecMTEB:
    """mteb ``EncoderProtocol`` implementation around :class:`LLM2Vec`.

    ``model`` is an ``LLM2Vec`` or a checkpoint path / hub id (then ``from_pretrained_kwargs``
    go to ``LLM2Vec.from_pretrained``). ``batch_size`` and ``show_progress_bar`` given to
    ``encode`` by mteb are honoured; other mteb encode kwargs are ignored.
    """

    def __init__(self, model: LLM2Vec | str | os.PathLike, revision: str | None = None, *,
                 task_to_instructions: Mapping[str, str] | None = None,
                 model_name: str | None = None, device: str | None = None,
                 **from_pretrained_kwargs: Any):
        self.adapter = from_pretrained_kwargs.get("adapter")
        self.base = None if isinstance(model, LLM2Vec) else os.fspath(model)
        if not isinstance(model, LLM2Vec):
            model_name = model_name or _model_name(self.base, self.adapter)
            model = LLM2Vec.from_pretrained(model, **from_pretrained_kwargs)
        elif from_pretrained_kwargs:
            raise TypeError(f"unexpected arguments for an already built LLM2Vec: "
                            f"{sorted(from_pretrained_kwargs)}")
        self.model = model
        self.revision = revision
        self.task_to_instructions = dict(task_to_instructions or {})
        self.model_name = model_name or model.name_or_path or "llm2vec-jax"

    # -- instructions --------------------------------------------------------------------

    def get_instruction(self, task_metadata, prompt_type=None) -> str:
        """The task's raw instruction (before ``llm2vec_instruction``); "" for documents."""
        kind = _prompt_type_value(prompt_type)
        if kind == "document":
            return ""
        name = getattr(task_metadata, "name", None)
        if name in self.task_to_instructions:
            return self.task_to_instructions[name]
        prompt = getattr(task_metadata, "prompt", None)
        if isinstance(prompt, Mapping):
            prompt = prompt.get(kind or "query")
        if prompt:
            return prompt
        try:  # mteb's per-task-type default, e.g. STS: "Retrieve semantically similar text."
            from mteb.abstasks.abstask import get_abstask_prompt
        except ImportError:
            return ""
        return get_abstask_prompt(name) if name else ""

    # -- EncoderProtocol -----------------------------------------------------------------

    def encode(self, inputs, *, task_metadata=None, hf_split: str | None = None,
               hf_subset: str | None = None, prompt_type=None, **kwargs: Any) -> np.ndarray:
        instruction = llm2vec_instruction(self.get_instruction(task_metadata, prompt_type))
        texts = _texts_from_inputs(inputs)
        return self.model.encode([[instruction, t] for t in texts],
                                 batch_size=int(kwargs.get("batch_size", 32)),
                                 show_progress_bar=bool(kwargs.get("show_progress_bar", True)))

    def similarity(self, embeddings1, embeddings2) -> np.ndarray:
        """Similarity matrix [N1, N2] with the encoder's function (cosine by default)."""
        return similarity(embeddings1, embeddings2, self._similarity_fn)

    def similarity_pairwise(self, embeddings1, embeddings2) -> np.ndarray:
        """Similarity of corresponding rows [N]."""
        return similarity_pairwise(embeddings1, embeddings2, self._similarity_fn)

    @property
    def _similarity_fn(self) -> str:
        return getattr(self.model, "similarity_fn_name", "cosine")

    @property
    def mteb_model_meta(self):
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        return ModelMeta.create_empty(overwrites={
            "name": self.model_name,
            "revision": self.revision,
            "n_parameters": int(self.model.num_parameters),
            "embed_dim": self.model.hidden_size,
            "max_tokens": self.model.max_length,
            "similarity_fn_name": ScoringFunction(self._similarity_fn),
            "framework": ["JAX", "LLM2Vec"],
            "use_instructions": True,
            "modalities": ["text"],
            "model_type": ["dense"],
            "open_weights": True,
            "adapted_from": self.base if self.adapter is not None else None,
            "reference": "https://arxiv.org/abs/2404.05961",
        })


def _model_name(base: str, adapter) -> str:
    """mteb wants "org/name"; ours: llm2vec-jax/<the adapter's or model's directory name>."""
    path = os.fspath(adapter if adapter is not None else base)
    return "llm2vec-jax/" + (os.path.basename(os.path.normpath(path)) or "model")


__all__ = ["INSTRUCTIONS_FILE", "LLM2VecMTEB", "MTEBError", "llm2vec_instruction",
           "load_instructions", "resolve_tasks", "run_mteb"]
