"""``LLM2Vec``: a decoder checkpoint (optionally + adapter) as a sentence encoder.

The text side (instruction handling, tokenization, pooling masks) is ``llm2vec_jax.text``
and pooling ``llm2vec_jax.models.pooling``; together they reproduce the PyTorch reference
``llm2vec`` 0.2.3 exactly. This module adds the model, batching and devices.

Execution model
---------------
Texts are packed into rows (``text.packing.plan_packed``): a batch is ``batch_size`` rows as wide as
the bucket of its longest text (at least 64 tokens; buckets from
``text.default_buckets(max_length, min_step=8)``: 8 tokens apart up to 64, then ~1/4 wider
each), and each row holds the longest text left followed by the longest ones that still fit.
Inside a row every text keeps to itself: attention is masked per segment, positions restart
at 0 for each text, and pooling is per segment (``models.pooling.pool_segments``), so a text's
embedding is what it would be alone in a row, up to float rounding. Rows come out nearly
full, with far less padding than when each text pads its own row to a bucket
(``packing=False``: one text per row, longest first; the shares: docs/performance.md).

The row count is ``batch_size`` for full batches and, for a final partial batch, the next
power of two, capped at ``batch_size`` (that batch is repacked into the narrowest bucket
that holds its texts in those rows); both rounded up to a multiple of the device count. One
``jax.jit`` function (forward in the compute dtype, pooling in float32) is compiled per
distinct (rows, width) shape and cached on the encoder, so the number of compilations is at
most ``len(buckets) * (1 + ceil(log2(batch_size)))`` over the encoder's lifetime and at most
``len(buckets) + 1`` for one ``encode`` call. ``encode(..., fixed_shapes=True)`` (the corpus
job's) keeps every batch at ``batch_size`` rows and 64 tokens or wider: one compilation per
bucket from 64 up, however many calls.

With several local devices, the batch axis is sharded over a 1-D ``data`` mesh of all local
devices and the parameters are replicated. With ``mesh=`` (``from_pretrained`` or the
constructor) the parameters are sharded instead, over the training mesh by the training
rules table, and the batch over its data × fsdp axes (``encoder_mesh``).

With the ``bits`` weight-indexing kernel (the CPU backend's, ``models/kernels.py``), 16-bit
float parameters on CPU devices are held as uint16 views of the same buffers and bitcast back
inside the jitted forward: XLA:CPU slices each layer's weights out of the stacked bits without
first converting (or copying) the whole stack.

Padding here is on the right (the reference pads left); per-text results are the same because
padding is masked in both attention modes, real tokens keep their relative positions (RoPE),
and pooling in ``models.pooling.pool_segments`` is padding-side agnostic.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from . import embeddings as emb_ops
from .models.pooling import pool_segments
from .text import tokenize as tok
from .text.packing import collate_packed, default_buckets, fixed_row_shapes, plan_packed
from .text.reference import DOC_MAX_LENGTH, validate_pooling
from .text.words import TokenEmbeddings, WordEmbeddings, join_words, word_embeddings
from .checkpoints.default_model import resolve_model
from .checkpoints.hf import resolve_checkpoint_dir, save_hf_checkpoint
from .checkpoints.encoder_config import (CONFIG_KEYS, DEFAULTS, LLM2VEC_CONFIG, read_jax_config,
                                         read_llm2vec_config, read_sentence_transformers,
                                         write_jax_config, write_llm2vec_config)
from .checkpoints.merged import load_merged
from .models.config import ModelConfig
from .checkpoints.tokenizer_files import make_portable
from .models.kernels import is_16bit_float
from .host_memory import compile_now
from .encoder_mesh import check_fits, resolve_mesh, state_shardings
from .sharding import BATCH_AXES, MeshConfig, weight_sharding_fn
from .lora import has_lora, merge_lora, unmerge_lora

def _load_tokenizer(directory: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    # As the reference: EOS pads (``text.tokenize.pad_token_id`` relies on it too).
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _name_or_path(path: str, directory: str) -> str:
    """What the reference's ``config._name_or_path`` would be (it keys chat wrappers on it).

    For a local directory the reference replaces it by the ``_name_or_path`` stored in
    config.json (empty when absent); for a hub id it stays the id.
    """
    if os.path.isdir(path):
        try:
            with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
                return str(json.load(f).get("_name_or_path", ""))
        except (OSError, ValueError):
            return ""
    return path


# llm2vec 0.2.3's from_pretrained keyword -> ours.
REFERENCE_ARGUMENT_NAMES = {"enable_bidirectional": "bidirectional",
                            "peft_model_name_or_path": "adapter"}


class LLM2Vec:
    """Sentence encoder over a Llama-family decoder, with the reference's ``encode`` semantics.

    Build with :meth:`from_pretrained`, or directly from a loaded model and tokenizer.
    ``bidirectional`` selects the attention mode at every forward (the same weights serve both).
    """

    def __init__(self, model, tokenizer, *, pooling_mode: str = "mean", max_length: int = 512,
                 doc_max_length: int = DOC_MAX_LENGTH, skip_instruction: bool = True,
                 bidirectional: bool = True, name_or_path: str = "",
                 buckets: Sequence[int] | None = None, devices: Sequence | None = None,
                 packing: bool = True, prompts: Mapping[str, str] | None = None,
                 similarity_fn_name: str = "cosine",
                 mesh: Mesh | MeshConfig | str | None = None):
        validate_pooling(pooling_mode, tokenizer)
        self.prompts = _check_prompts(prompts)
        self.similarity_fn_name = emb_ops.check_similarity_fn(similarity_fn_name)
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        if not isinstance(doc_max_length, int) or doc_max_length < 1:
            raise ValueError(f"doc_max_length must be a positive int, got {doc_max_length!r}")
        self.tokenizer = tokenizer
        self.pooling_mode = pooling_mode
        self.max_length = max_length
        self.doc_max_length = doc_max_length
        self.skip_instruction = bool(skip_instruction)
        self.bidirectional = bool(bidirectional)
        self.packing = bool(packing)
        self.name_or_path = name_or_path
        self.buckets = (tuple(buckets) if buckets is not None
                        else default_buckets(max_length, min_step=8))
        if max(self.buckets) < max_length:
            raise ValueError(f"largest bucket {max(self.buckets)} < max_length {max_length}")
        self.pad_id = tok.pad_token_id(tokenizer)
        self.devices = list(devices) if devices is not None else jax.local_devices()
        self.model = model
        self._graphdef, state = nnx.split(model)
        if mesh is None:  # parameters replicated, batch over all devices
            self.mesh = Mesh(np.array(self.devices), ("data",))
            self._data = NamedSharding(self.mesh, P("data"))
            self._batch_ways = len(self.devices)
            self._sharded = False
            state = jax.device_put(state, NamedSharding(self.mesh, P()))
        else:  # parameters by the rules table, batch over data × fsdp
            self.mesh = resolve_mesh(mesh, self.devices)
            self.devices = list(self.mesh.devices.flat)
            self._data = NamedSharding(self.mesh, P(BATCH_AXES))
            self._batch_ways = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
            self._sharded = True
            state = jax.device_put(state, state_shardings(state, self.mesh))
        self._state_shardings = jax.tree.map(lambda x: x.sharding, state)
        self._dtypes = jax.tree.map(lambda x: x.dtype, state)
        self._state = (jax.tree.map(_cpu_half_as_bits, state)
                       if model.config.kernels.weight_indexing == "bits" else state)
        # (rows, width, texts a row, token states instead of pooled) -> compiled forward
        self._compiled: dict[tuple[int, int, int, bool], Any] = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, adapter: str | os.PathLike | None = None,
                        pooling_mode: str | None = None, max_length: int | None = None,
                        doc_max_length: int | None = None, skip_instruction: bool | None = None,
                        bidirectional: bool | None = None, dtype: str = "float32",
                        devices: Sequence | None = None, packing: bool = True,
                        prompts: Mapping[str, str] | None = None,
                        similarity_fn_name: str | None = None,
                        mesh: Mesh | MeshConfig | str | None = None,
                        memory_per_device: int | None = None,
                        **config_overrides) -> "LLM2Vec":
        """Load an HF checkpoint (local dir, hub id or "smollm2"), optionally a PEFT adapter
        merged into it (what the reference does for the adapter stored with the base model
        and what its ``merge_peft=True`` does: unmerged PEFT gives the same outputs up to
        rounding, and the merged forward costs no more than the base model's).

        Encoder settings come, as in the reference, from ``llm2vec_config.json`` in the adapter
        directory when an adapter is given, else in the model directory; arguments that are
        not None override them; the rest default to pooling_mode="mean", max_length=512,
        doc_max_length=400, skip_instruction=True; a sentence-transformers checkpoint
        (``modules.json``) without them gets its own pooling. ``bidirectional=None`` takes the
        attention mode the encoder was trained with (``llm2vec_jax_config.json`` beside those
        settings, written by our training and ``save``), else a sentence-transformers
        embedder's (causal unless its config.json says ``is_causal: false``), else
        bidirectional. ``dtype`` is the parameter
        and compute dtype ("float32", "bfloat16", "float16"); embeddings are always float32.
        ``packing=False`` gives each text a row of its own (see the module docstring).
        ``prompts`` ({"query": ..., "document": ...}) and ``similarity_fn_name`` default to
        what ``llm2vec_jax_config.json`` holds (none, and "cosine").

        The reference's names ``enable_bidirectional=`` and ``peft_model_name_or_path=``
        are accepted for ``bidirectional=`` and ``adapter=``, so its calls port unchanged.

        ``mesh`` (a ``MeshConfig``, text such as ``"fsdp=8"`` or ``"tensor=2,data=4"``, or a
        ``sharding.make_mesh`` mesh; over ``devices``, default this process's) shards the
        parameters as training does: each weight is read straight into its shards, and the
        batch is split over the mesh's data × fsdp axes. Before reading anything the
        parameter bytes per device are checked against ``memory_per_device`` (default: what
        the devices report) and a ``ShardingError`` names both when they do not fit.
        """
        named = {"bidirectional": bidirectional, "adapter": adapter}
        for theirs, ours in REFERENCE_ARGUMENT_NAMES.items():
            if theirs in config_overrides:
                if named[ours] is not None:
                    raise TypeError(f"from_pretrained got both {ours}= and the reference's name "
                                    f"for it, {theirs}=: give one")
                named[ours] = config_overrides.pop(theirs)
        bidirectional, adapter = named["bidirectional"], named["adapter"]
        path = os.fspath(path_or_hub_id)
        devices = list(devices) if devices is not None else jax.local_devices()
        if mesh is None:
            replicated = NamedSharding(Mesh(np.array(devices), ("data",)), P())
            sharding_fn = lambda spec: replicated  # noqa: E731
        else:
            mesh = resolve_mesh(mesh, devices)
            directory = resolve_checkpoint_dir(resolve_model(path))
            check_fits(ModelConfig.from_hf(directory, param_dtype=dtype, **config_overrides),
                       mesh, memory_per_device)
            sharding_fn = weight_sharding_fn(mesh)
        directory, model = load_merged(path, [] if adapter is None else [adapter], dtype=dtype,
                                       sharding_fn=sharding_fn, **config_overrides)
        saved_in = adapter if adapter is not None else directory
        # An embedder saved by sentence-transformers carries its own pooling and attention;
        # our own settings files, then explicit arguments, take precedence.
        embedder = read_sentence_transformers(directory)
        extras = read_jax_config(saved_in)
        if bidirectional is None:
            mode = extras.get("attention") or embedder.get("attention", "bidirectional")
            bidirectional = mode == "bidirectional"
        model.config = model.config.replace(causal=not bidirectional)
        settings = dict(DEFAULTS)
        settings.update({k: v for k, v in embedder.items() if k in settings})
        settings.update(read_llm2vec_config(saved_in))
        explicit = {"pooling_mode": pooling_mode, "max_length": max_length,
                    "doc_max_length": doc_max_length, "skip_instruction": skip_instruction}
        settings.update({k: v for k, v in explicit.items() if v is not None})
        return cls.from_loaded(
            model, directory, path=path, bidirectional=bidirectional, packing=packing,
            devices=devices, mesh=mesh, prompts=extras.get("prompts") if prompts is None else prompts,
            similarity_fn_name=similarity_fn_name or extras.get("similarity_fn_name", "cosine"),
            **settings)

    @classmethod
    def from_loaded(cls, model, directory: str, *, path: str | None = None,
                    **settings) -> "LLM2Vec":
        """An encoder over ``model``, already loaded from the HF checkpoint ``directory``
        (``path``: the name it was loaded by, a hub id or that directory): its tokenizer
        and the reference's ``name_or_path`` come from there; ``settings`` as ``__init__``."""
        return cls(model, _load_tokenizer(directory),
                   name_or_path=_name_or_path(path or directory, directory), **settings)

    @property
    def config(self):
        return self.model.config

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def num_parameters(self) -> int:
        """Weights that make an embedding: an untied LM head (unused here) is not counted."""
        params = nnx.state(self.model, nnx.Param)
        return sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(params)
                   if "lm_head" not in jax.tree_util.keystr(path))

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in CONFIG_KEYS}

    def save(self, out_dir: str | os.PathLike, *, save_model: bool = True,
             overwrite: bool = False) -> str:
        """Write ``llm2vec_config.json`` and the tokenizer (and, by default, the weights as an
        HF checkpoint) to ``out_dir``; the result loads with :meth:`from_pretrained` and with
        the reference. Only the reference's four keys go to ``llm2vec_config.json`` (its
        constructor rejects others); the attention mode, the prompts and the similarity
        function go to ``llm2vec_jax_config.json``, which :meth:`from_pretrained` reads (the
        reference takes the mode as ``enable_bidirectional`` at load time)."""
        out_dir = os.fspath(out_dir)
        if save_model:
            # config.json + weights, atomically; refuses a non-empty dir unless overwrite.
            _save_weights(self.model, out_dir, overwrite)
        os.makedirs(out_dir, exist_ok=True)
        self.tokenizer.save_pretrained(out_dir)
        make_portable(out_dir)  # the reference's transformers 4.44 reads it as-is
        write_llm2vec_config(out_dir, self.settings())
        write_jax_config(out_dir, self.bidirectional, prompts=self.prompts,
                         similarity_fn_name=self.similarity_fn_name)
        return out_dir

    # ------------------------------------------------------------------ encoding

    def tokenize_rows(self, texts, *, with_offsets: bool = False) -> list[tok.TokenizedRow]:
        return tok.tokenize_rows(
            self.tokenizer, texts, max_length=self.max_length,
            doc_max_length=self.doc_max_length, skip_instruction=self.skip_instruction,
            pooling_mode=self.pooling_mode, model_type=self.model.config.model_type,
            name_or_path=self.name_or_path, with_offsets=with_offsets)

    def tokenize(self, texts, *, padding_side: str = "right") -> dict[str, np.ndarray]:
        """The padded features ``encode`` would build for ``texts`` as one batch."""
        return tok.collate(self.tokenize_rows(texts), pad_id=self.pad_id,
                            padding_side=padding_side)

    def _forward_fn(self, rows: int, width: int, per_row: int, tokens: bool = False):
        """The compiled forward + pooling for [rows, width] features of at most ``per_row``
        texts a row -> [rows, per_row, D] (``tokens``: the float32 [rows, width, D] hidden
        states instead)."""
        key = (rows, width, per_row, tokens)
        if key not in self._compiled:
            fn = jit_encode_step(self._graphdef, self._dtypes, not self.bidirectional,
                                 self.pooling_mode, per_row, self._state_shardings, self._data,
                                 tokens=tokens)
            spec = jax.ShapeDtypeStruct((rows, width), jnp.int32, sharding=self._data)
            # A sharded encoder pins activations by logical axes, as training does.
            with jax.set_mesh(self.mesh) if self._sharded else contextlib.nullcontext():
                self._compiled[key] = compile_now(fn, self._state, spec, spec, spec, spec)
        return self._compiled[key]

    def compile_fixed_shapes(self, batch_size: int = 32) -> None:
        """Compile now every shape ``encode(..., batch_size=batch_size, fixed_shapes=True)``
        can run. A corpus job calls it before its first shard, so no compilation (XLA's
        scratch memory, the executable) lands in the middle of a shard, amid its texts and
        arrays, where what it leaves behind would add to the peak RSS."""
        for rows, width, per_row in fixed_row_shapes(
                rows_per_batch=batch_size, max_length=self.max_length, buckets=self.buckets,
                packing=self.packing):
            self._forward_fn(self._device_rows(rows), width, per_row)

    def _device_rows(self, rows: int) -> int:
        return -(-rows // self._batch_ways) * self._batch_ways

    def _forward_batches(self, rows, batch_size: int, bar, *, tokens: bool = False,
                         fixed_shapes: bool = False):
        """Yield (numpy result, features, texts a row) of each packed batch of ``rows``,
        one batch in flight: the next is dispatched before the caller reads this one."""
        plan = plan_packed([len(r) for r in rows], rows_per_batch=batch_size,
                           max_length=self.max_length, buckets=self.buckets,
                           packing=self.packing, fixed_rows=fixed_shapes)
        bar.update(len(plan.empty))
        pending = None
        for batch in plan:
            feats = collate_packed(rows, batch, pad_id=self.pad_id,
                                   num_rows=self._device_rows(batch.computed_rows))
            fn = self._forward_fn(*feats["input_ids"].shape, batch.segments, tokens)
            args = [jax.device_put(feats[k], self._data)
                    for k in ("input_ids", "segment_ids", "positions", "embed_mask")]
            result = fn(self._state, *args)
            if pending is not None:
                yield np.asarray(pending[0]), *pending[1:]
            pending = (result, feats, batch.segments)
        if pending is not None:
            yield np.asarray(pending[0]), *pending[1:]

    def encode(self, texts, batch_size: int = 32, show_progress_bar: bool | None = None,
               normalize_embeddings: bool = False, truncate_dim: int | None = None,
               precision: str = "float32", prompt: str | None = None,
               prompt_name: str | None = None, convert_to: str = "numpy",
               return_truncated: bool = False, output_value: str = "sentence_embedding",
               fixed_shapes: bool = False):
        """Embed ``texts`` -> [N, D] (numpy; a jax array with ``convert_to="jax"``).

        ``texts``: a list whose items are ``str`` or ``[instruction, text]`` (a single ``str``
        is one text). Instruction tokens are attended but, with ``skip_instruction``, not
        pooled. ``prompt`` (or ``prompt_name``, a key of ``self.prompts``) is such an
        instruction for every ``str`` item (sentence-transformers' prompts, with the
        reference's semantics: the prompt is attended, not pooled).

        After pooling, as sentence-transformers: the first ``truncate_dim`` dimensions are
        kept (Matryoshka), rows are L2-normalised if ``normalize_embeddings``, then quantised
        to ``precision`` (float32, int8, uint8, binary, ubinary; ``llm2vec_jax.embeddings``;
        int8/uint8 calibrate on the embeddings of this call).

        Texts longer than ``max_length`` tokens are truncated at the end (and texts over
        ``doc_max_length`` shortened by whole words first), as the reference does; a warning
        counts them, or ``return_truncated=True`` returns ``(embeddings, truncated)`` with a
        bool [N] array marking them.
        An empty text has nothing to pool: it embeds to the zero vector (mean/weighted_mean
        always; last_token/eos_token only if the whole row is empty, otherwise the last
        instruction or suffix token). The reference's result there depends on the batch's
        padding, so it is not reproduced. ``batch_size`` is the rows per forward pass; with
        packing a row holds several short texts, so a pass may embed more texts than that.
        ``show_progress_bar=None`` shows one when stderr is a terminal.
        ``fixed_shapes=True``: every batch, the last included, has ``batch_size`` rows and
        (packing) is at least 64 tokens wide, so however many calls are made the forward
        compiles at most once per bucket from 64 up: what a job that calls ``encode`` for
        chunk after chunk of a large corpus wants (``corpus.encode_corpus``), as each compiled
        shape holds memory for the encoder's lifetime. It costs the padding of one final batch
        per call.

        ``output_value="token_embeddings"`` (sentence-transformers' name) returns instead a
        list with one ``text.words.TokenEmbeddings`` per text: the float32 final hidden
        states of its pooled tokens (instruction tokens excluded when ``skip_instruction``)
        with their ids and character offsets in the text (no truncate_dim, normalisation or
        quantisation).
        """
        if texts is None:
            raise TypeError("texts must be a list of str or [instruction, text] pairs, got None")
        if isinstance(texts, (bytes, dict)) or not hasattr(texts, "__iter__"):
            raise TypeError(f"texts must be a list of str or [instruction, text] pairs, "
                            f"got {type(texts).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if output_value not in ("sentence_embedding", "token_embeddings"):
            raise ValueError(f"output_value must be 'sentence_embedding' or 'token_embeddings', "
                             f"got {output_value!r}")
        if convert_to not in ("numpy", "jax"):
            raise ValueError(f"convert_to={convert_to!r}; choose 'numpy' or 'jax'")
        emb_ops.check_precision(precision)
        emb_ops.check_truncate_dim(truncate_dim, self.hidden_size)
        if show_progress_bar is None:
            show_progress_bar = sys.stderr.isatty()
        texts = [texts] if isinstance(texts, str) else list(texts)
        tokens = output_value == "token_embeddings"
        rows = self.tokenize_rows(_with_prompt(texts, self._resolve_prompt(prompt, prompt_name)),
                                  with_offsets=tokens)
        truncated = np.array([r.truncated for r in rows], bool)
        if tokens:
            states = self._token_states(rows, batch_size, show_progress_bar)
            return (states, truncated) if return_truncated else states
        emb = self._embed(rows, batch_size, show_progress_bar, fixed_shapes)
        emb = emb_ops.truncate(emb, truncate_dim)
        if normalize_embeddings:
            emb = emb_ops.normalize(emb)
        emb = emb_ops.quantize(emb, precision)
        emb = emb if convert_to == "numpy" else jnp.asarray(emb)
        if return_truncated:
            return emb, truncated
        if truncated.any():
            warnings.warn(f"{int(truncated.sum())} of {len(rows)} texts were longer than "
                          f"max_length={self.max_length} (or doc_max_length="
                          f"{self.doc_max_length}) tokens and were truncated; pass "
                          "return_truncated=True to see which", TruncationWarning, stacklevel=2)
        return emb

    def encode_query(self, texts, **kwargs):
        """``encode`` with the "query" prompt (when ``self.prompts`` has one)."""
        return self.encode(texts, **self._named_prompt("query", kwargs))

    def encode_document(self, texts, **kwargs):
        """``encode`` with the "document" prompt (when ``self.prompts`` has one)."""
        return self.encode(texts, **self._named_prompt("document", kwargs))

    def similarity(self, a, b) -> np.ndarray:
        """[Na, Nb] scores with ``self.similarity_fn_name`` (``embeddings.similarity``)."""
        return emb_ops.similarity(a, b, self.similarity_fn_name)

    def similarity_pairwise(self, a, b) -> np.ndarray:
        """[N] scores of corresponding rows with ``self.similarity_fn_name``."""
        return emb_ops.similarity_pairwise(a, b, self.similarity_fn_name)

    def _named_prompt(self, name: str, kwargs: dict) -> dict:
        if kwargs.get("prompt") is None and kwargs.get("prompt_name") is None \
                and name in self.prompts:
            kwargs = {**kwargs, "prompt_name": name}
        return kwargs

    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        """``prompt`` if given, else ``self.prompts[prompt_name]`` (as sentence-transformers)."""
        if prompt is not None or prompt_name is None:
            return prompt
        if prompt_name not in self.prompts:
            raise ValueError(f"prompt_name={prompt_name!r} is not one of this encoder's prompts "
                             f"{sorted(self.prompts)}; set them with prompts={{...}} "
                             "(saved in llm2vec_jax_config.json)")
        return self.prompts[prompt_name]

    def _embed(self, rows: list[tok.TokenizedRow], batch_size: int,
               show_progress_bar: bool, fixed_shapes: bool = False) -> np.ndarray:
        """Pooled float32 [N, D] embeddings of tokenized rows, in their order."""
        dim = self.hidden_size
        emb = np.zeros((len(rows), dim), np.float32)  # empty texts stay zero
        with _progress(len(rows), show_progress_bar) as bar:
            for result, feats, _ in self._forward_batches(rows, batch_size, bar,
                                                          fixed_shapes=fixed_shapes):
                emb[feats["indices"]] = result.reshape(-1, dim)[feats["slots"]]
                bar.update(len(feats["indices"]))
        return emb

    def _token_states(self, rows: list[tok.TokenizedRow], batch_size: int,
                      show_progress_bar: bool) -> list[TokenEmbeddings]:
        """Each row's pooled tokens with their float32 final hidden states, in row order."""
        # Texts of no token are in no batch; the others are filled in below.
        out = [_token_embeddings(row, np.zeros((0, self.hidden_size), np.float32))
               if not len(row) else None for row in rows]
        with _progress(len(rows), show_progress_bar) as bar:
            for result, feats, per_row in self._forward_batches(rows, batch_size, bar,
                                                                tokens=True):
                for index, slot in zip(feats["indices"], feats["slots"]):
                    r, j = divmod(int(slot), per_row)
                    pooled = (feats["segment_ids"][r] == j + 1) & (feats["embed_mask"][r] > 0)
                    out[index] = _token_embeddings(rows[index], result[r, pooled])
                bar.update(len(feats["indices"]))
        return out

    def encode_words(self, sentences, *, aggregation: str = "mean",
                     alignment: str = "same_token", instruction: str = "",
                     batch_size: int = 32,
                     show_progress_bar: bool = True) -> list[WordEmbeddings]:
        """One ``text.words.WordEmbeddings`` per pre-split sentence (a list of words, e.g.
        ``[["EU", "rejects", ...]]``): each word's subword states aggregated ("first", "mean"
        or "last") over the token group its ``alignment`` picks ("same_token", "next_token"
        or "next_word"; see ``llm2vec_jax.text.words``). An ``instruction`` is attended but
        is no word's token. Words cut off by ``max_length`` are not ``valid``."""
        texts, spans = zip(*(join_words(s) for s in sentences)) if sentences else ((), ())
        inputs = [[instruction, t] for t in texts] if instruction else list(texts)
        tokens = self.encode(inputs, batch_size=batch_size, show_progress_bar=show_progress_bar,
                             output_value="token_embeddings")
        return [word_embeddings(t, s, aggregation=aggregation, alignment=alignment)
                for t, s in zip(tokens, spans)]

    @property
    def num_compilations(self) -> int:
        return len(self._compiled)


class TruncationWarning(UserWarning):
    """Some texts were longer than the encoder's max_length and lost their end."""


def _check_prompts(prompts) -> dict[str, str]:
    prompts = dict(prompts or {})
    bad = {k: v for k, v in prompts.items() if not (isinstance(k, str) and isinstance(v, str))}
    if bad:
        raise ValueError(f"prompts must map names to instruction strings, got {bad!r}")
    return prompts


def jit_encode_step(graphdef, dtypes, causal: bool, pooling_mode: str, per_row: int,
                    state_shardings, data_sharding, *, tokens: bool = False):
    """The jitted forward (compute dtype) + per-segment pooling (float32) of a packed batch:
    (state, input_ids, segment_ids, positions, embed_mask), each [rows, width] ->
    [rows, per_row, D] (``tokens``: the float32 [rows, width, D] hidden states instead).
    ``dtypes``: the parameters' dtypes (16-bit ones may arrive as uint16 bits, see
    ``_cpu_half_as_bits``). Shared with ``plan``, which compiles it on abstract shapes to
    measure the memory of encoding."""

    def forward_pool(state, input_ids, segment_ids, positions, embed_mask):
        state = jax.tree.map(_bitcast_to, state, dtypes)
        model = nnx.merge(graphdef, state)
        hidden = model(input_ids, segment_ids, causal=causal, positions=positions)
        if tokens:
            return hidden.astype(jnp.float32)
        return pool_segments(hidden, segment_ids, embed_mask, pooling_mode, per_row)

    return jax.jit(forward_pool, in_shardings=(state_shardings,) + (data_sharding,) * 4,
                   out_shardings=data_sharding)


def _with_prompt(texts: list, prompt: str | None) -> list:
    """``[prompt, text]`` for every ``str`` item; a pair already has its instruction."""
    if prompt is None:
        return texts
    out = []
    for i, item in enumerate(texts):
        if not isinstance(item, str):
            raise ValueError(f"text #{i} is {item!r}, not a str: pass either a prompt or "
                             "[instruction, text] pairs, not both")
        out.append([prompt, item])
    return out


def _progress(total: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="sent", desc="Encoding", file=sys.stderr, disable=not show,
                dynamic_ncols=True)


def _token_embeddings(row: tok.TokenizedRow, states: np.ndarray) -> TokenEmbeddings:
    """A text's pooled tokens (the last ``n_pooled`` of its row) with their states."""
    n = row.n_pooled
    return TokenEmbeddings(states, np.asarray(row.offsets[len(row) - n:], np.int64).reshape(-1, 2),
                           np.asarray(row.input_ids[len(row) - n:], np.int64))


def _cpu_half_as_bits(x: jax.Array) -> jax.Array:
    """A 16-bit float array on CPU devices as uint16, sharing its buffers (numpy views, which
    ``device_put`` aliases on CPU); anything else unchanged."""
    if not is_16bit_float(x.dtype):
        return x
    shards = x.addressable_shards
    if any(s.device.platform != "cpu" for s in shards):
        return x
    views = [jax.device_put(np.asarray(s.data).view(np.uint16), s.device) for s in shards]
    return jax.make_array_from_single_device_arrays(x.shape, x.sharding, views)


def _bitcast_to(x: jax.Array, dtype) -> jax.Array:
    return x if x.dtype == dtype else jax.lax.bitcast_convert_type(x, dtype)


def _save_weights(model, out_dir: str, overwrite: bool) -> None:
    """HF checkpoint of the model; an attached adapter is merged into the saved weights only."""
    if not has_lora(model):
        save_hf_checkpoint(model, out_dir, overwrite=overwrite)
        return

    adapter = merge_lora(model)
    try:
        save_hf_checkpoint(model, out_dir, overwrite=overwrite)
    finally:
        unmerge_lora(model, adapter)


__all__ = ["LLM2Vec", "LLM2VEC_CONFIG", "TruncationWarning", "read_llm2vec_config"]
