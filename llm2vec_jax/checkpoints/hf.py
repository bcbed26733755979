"""Hugging Face checkpoints in and out, through ONE name table.

``HF_NAMES`` maps each of our weights (see ``models.transformer.weight_specs``) to its HF
tensor name in a ``*ForCausalLM`` checkpoint; a bare ``*Model`` checkpoint (an encoder
saved without its LM head, as PyTorch llm2vec's ``save()`` writes) has the same names without
the ``model.`` prefix, and is recognised by its tensor names. The layout change between the
two is derived from the projection's einsum:
HF stores ``nn.Linear`` weights as [out, in] with heads flattened, we store [in..., out...]
with heads as their own axes. Import applies ``to_ours``, export the inverse ``to_hf``.

Import streams: shapes are checked from the safetensors headers before any data is read,
then each of our (possibly sharded) arrays is assembled with ``jax.make_array_from_callback``,
which reads, per device shard, only the layer tensors it needs, one at a time. Safetensors
only: no pickle, no remote code.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Callable, Iterator

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from ..models.config import ModelConfig
from ..models.specs import PROJECTIONS, WeightSpec, input_rank, weight_specs
from ..models.transformer import Transformer, abstract_model
from ..host_memory import release_freed_host_memory
from .io import staged_directory
from .safetensors_io import SafetensorsFile, SafetensorsFormatError
from .tokenizer_files import make_portable

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "tokenizer.model", "chat_template.jinja")
# Buffers some exporters save that carry no learned weights.
IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)

HF_NAMES: dict[str, str] = {
    "embed": "model.embed_tokens.weight",
    "final_norm": "model.norm.weight",
    "lm_head": "lm_head.weight",
    "attn_norm": "model.layers.{i}.input_layernorm.weight",
    "mlp_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "q": "model.layers.{i}.self_attn.q_proj.weight",
    "k": "model.layers.{i}.self_attn.k_proj.weight",
    "v": "model.layers.{i}.self_attn.v_proj.weight",
    "o": "model.layers.{i}.self_attn.o_proj.weight",
    "gate": "model.layers.{i}.mlp.gate_proj.weight",
    "up": "model.layers.{i}.mlp.up_proj.weight",
    "down": "model.layers.{i}.mlp.down_proj.weight",
    **{f"{p}_bias": f"model.layers.{{i}}.self_attn.{p}_proj.bias" for p in "qkvo"},
    **{f"{p}_norm": f"model.layers.{{i}}.self_attn.{p}_norm.weight" for p in "qk"},
    **{f"{p}_bias": f"model.layers.{{i}}.mlp.{p}_proj.bias" for p in ("gate", "up", "down")},
    "mlp_post_norm": "model.layers.{i}.post_feedforward_layernorm.weight",
}
# With norms after attention and MLP too (Gemma 2), HF's post_attention_layernorm is the
# norm after attention and the MLP's own norm has a name of its own.
POST_NORM_HF_NAMES: dict[str, str] = {
    "attn_post_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "mlp_norm": "model.layers.{i}.pre_feedforward_layernorm.weight",
}


BARE_PREFIX = "model."


class CheckpointError(ValueError):
    """A checkpoint that does not match the model it claims to be."""


def to_ours(name: str, tensor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """One layer's HF tensor → our layout of ``shape`` (without the L axis)."""
    if name in PROJECTIONS:  # [out, in] -> [in..., out...]
        return np.ascontiguousarray(tensor.T).reshape(shape)
    return tensor.reshape(shape)


def to_hf(name: str, array: np.ndarray) -> np.ndarray:
    """One layer's weight in our layout → the HF tensor."""
    if name in PROJECTIONS:
        rank = input_rank(name)
        fan_in = math.prod(array.shape[:rank])
        return np.ascontiguousarray(array.reshape(fan_in, -1).T)
    if name.endswith("_bias"):
        return array.reshape(-1)
    return array


def hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name of the checkpoint ``config`` describes → its shape."""
    specs = {**weight_specs(config)["top"], **weight_specs(config)["layers"]}
    layers = weight_specs(config)["layers"]
    shapes = {}
    for name, keys in hf_tensor_names(config).items():
        layer_shape = specs[name].shape[1:] if name in layers else specs[name].shape
        shape = to_hf(name, np.empty(layer_shape, np.int8)).shape
        shapes.update({key: shape for key in keys})
    return shapes


def hf_tensor_names(config: ModelConfig) -> dict[str, list[str]]:
    """Our weight name → its HF tensor names (one per layer for stacked weights), in the
    layout ``config.lm_head`` says (bare ``*Model`` names when False)."""
    specs = weight_specs(config)

    table = {**HF_NAMES, **POST_NORM_HF_NAMES} if config.post_norms else HF_NAMES

    def hf_name(name: str) -> str:
        return table[name] if config.lm_head else table[name].removeprefix(BARE_PREFIX)

    names = {name: [hf_name(name)] for name in specs["top"]}
    for name in specs["layers"]:
        names[name] = [hf_name(name).format(i=i) for i in range(config.num_layers)]
    return names


def is_bare_layout(tensor_names) -> bool:
    """Whether a checkpoint's tensors are a bare ``*Model``'s (no ``model.`` prefix)."""
    return (HF_NAMES["embed"] not in tensor_names
            and HF_NAMES["embed"].removeprefix(BARE_PREFIX) in tensor_names)


# -- locating files -------------------------------------------------------------------------

def resolve_checkpoint_dir(path_or_id: str | os.PathLike) -> str:
    """A local checkpoint directory, downloading a hub id (``org/name``) when not local."""
    path = os.fspath(path_or_id)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise CheckpointError(f"{path!r} is a file; expected an HF checkpoint directory "
                              "(for a .gguf file run: python -m llm2vec_jax.convert gguf FILE OUT_DIR)")
    if path.count("/") == 1 and not path.startswith((".", "/")):
        from huggingface_hub import snapshot_download
        return snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "tokenizer*",
                                                       "*.jinja"])
    raise FileNotFoundError(f"checkpoint directory {path!r} does not exist (nor is it a hub id "
                            "like 'meta-llama/Llama-3.1-8B')")


def _safetensors_files(directory: str) -> dict[str, str]:
    """HF tensor name → file, from model.safetensors or the sharded index."""
    index = os.path.join(directory, SAFE_INDEX)
    single = os.path.join(directory, SAFE_SINGLE)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        return {k: os.path.join(directory, v) for k, v in weight_map.items()}
    if os.path.isfile(single):
        with _open(single) as f:
            return {k: single for k in f.keys()}
    found = sorted(os.listdir(directory))
    hint = " (PyTorch .bin checkpoints are not loaded: no pickle; re-save with safe_serialization)" \
        if any(n.endswith(".bin") for n in found) else ""
    raise FileNotFoundError(f"no {SAFE_SINGLE} or {SAFE_INDEX} in {directory!r}{hint}")


def _open(path: str) -> SafetensorsFile:
    try:
        return SafetensorsFile(path)
    except (SafetensorsFormatError, OSError) as e:
        raise CheckpointError(f"cannot read safetensors file {path!r} (corrupt or truncated?): {e}") from e


class _Reader:
    """Opens each safetensors file once and reads tensors on demand."""

    def __init__(self, files: dict[str, str]):
        self.files = files
        self._handles: dict[str, object] = {}

    def _handle(self, key: str):
        path = self.files[key]
        if path not in self._handles:
            self._handles[path] = _open(path)
        return self._handles[path]

    def shape(self, key: str) -> tuple[int, ...]:
        return self._handle(key).shape(key)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def read(self, key: str) -> np.ndarray:
        try:
            return self._handle(key).read(key)
        except (SafetensorsFormatError, OSError) as e:
            raise CheckpointError(f"cannot read tensor {key!r} from {self.files[key]!r} "
                                  f"(corrupt or truncated file?): {e}") from e


def _check_names_and_shapes(config: ModelConfig, reader: _Reader) -> None:
    shapes = hf_shapes(config)
    wanted = set(shapes)
    present = set(reader.files)
    missing = sorted(wanted - present)
    unexpected = sorted(k for k in present - wanted if not k.endswith(IGNORED_HF_SUFFIXES)
                        and not (k == HF_NAMES["lm_head"] and config.tie_word_embeddings))
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:8])}"
                        + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:8])}"
                        + (f" (+{len(unexpected) - 8} more)" if len(unexpected) > 8 else ""))
    for key, want in shapes.items():
        if key in present and reader.shape(key) != want:
            problems.append(f"{key} has shape {list(reader.shape(key))}, expected {list(want)}")
    if problems:
        raise CheckpointError("checkpoint does not match config.json: " + "; ".join(problems))


def _load_array(name: str, spec: WeightSpec, keys: list[str], stacked: bool, reader: _Reader,
                dtype, sharding: jax.sharding.Sharding) -> jax.Array:
    """Assemble one of our weights directly into ``sharding``, reading per shard."""
    last: dict[str, np.ndarray] = {}

    def layer_tensor(key: str, shape) -> np.ndarray:
        # Shards of one weight usually need the same layers in turn: keep the last one.
        if key not in last:
            last.clear()
            last[key] = to_ours(name, reader.read(key), shape).astype(dtype)
        return last[key]

    def callback(index: tuple[slice, ...]) -> np.ndarray:
        if not stacked:
            return layer_tensor(keys[0], spec.shape)[index]
        layer_ids = range(*index[0].indices(spec.shape[0]))
        return np.stack([layer_tensor(keys[i], spec.shape[1:])[index[1:]] for i in layer_ids])

    return jax.make_array_from_callback(spec.shape, sharding, callback)


ShardingFn = Callable[[WeightSpec], jax.sharding.Sharding]


def load_hf_checkpoint(path: str | os.PathLike, dtype: str = "float32", *,
                       compute_dtype: str | None = None, sharding_fn: ShardingFn | None = None,
                       **config_overrides) -> Transformer:
    """Load an HF checkpoint of a supported family (``models.config.FAMILIES``; local dir
    or hub id) into our model.

    A bare ``*Model`` checkpoint gives a model without an LM head (``config.lm_head=False``).

    ``dtype`` is the parameter dtype (and compute dtype unless ``compute_dtype`` is given);
    ``sharding_fn`` maps a weight's spec to its sharding (default: first local device);
    ``config_overrides`` go to ``ModelConfig`` (e.g. ``causal=False``, ``remat="full"``).
    """
    directory = resolve_checkpoint_dir(path)
    reader = _Reader(_safetensors_files(directory))
    config = ModelConfig.from_hf(directory, param_dtype=dtype, dtype=compute_dtype or dtype,
                                 lm_head=not is_bare_layout(reader.files), **config_overrides)
    _check_names_and_shapes(config, reader)
    if sharding_fn is None:
        device = jax.local_devices()[0]
        sharding_fn = lambda spec: jax.sharding.SingleDeviceSharding(device)  # noqa: E731
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    specs = weight_specs(config)
    names = hf_tensor_names(config)
    arrays: dict = {"layers": {}}
    try:
        for group, target in (("top", arrays), ("layers", arrays["layers"])):
            for name, spec in specs[group].items():
                target[name] = _load_array(name, spec, names[name], group == "layers", reader,
                                           np_dtype, sharding_fn(spec))
    finally:
        reader.close()
    model = merge_params(abstract_model(config), arrays)
    release_freed_host_memory()  # the host copies each weight passed through
    return model


def merge_params(model: Transformer, arrays: dict) -> Transformer:
    """Put concrete arrays (a nested dict as ``param_arrays`` returns) into an (abstract) model."""
    graphdef, state = nnx.split(model)
    nnx.replace_by_pure_dict(state, arrays)
    return nnx.merge(graphdef, state)


def param_arrays(model: Transformer) -> dict:
    """The base weights as a nested dict {name: array, "layers": {name: array}}."""
    specs = weight_specs(model.config)
    return {**{n: getattr(model, n)[...] for n in specs["top"]},
            "layers": {n: getattr(model.layers, n)[...] for n in specs["layers"]}}


# -- export ---------------------------------------------------------------------------------

def _hf_tensors(model: Transformer, config: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, numpy tensor) pairs in ``config``'s layout, one layer at a time (gathered
    from any sharding)."""
    arrays = param_arrays(model)
    names = hf_tensor_names(config)
    for name in weight_specs(config)["top"]:
        yield names[name][0], to_hf(name, np.asarray(jax.device_get(arrays[name])))
    for name in weight_specs(config)["layers"]:
        stacked = arrays["layers"][name]
        for i, key in enumerate(names[name]):
            yield key, to_hf(name, np.asarray(jax.device_get(stacked[i])))


def save_hf_checkpoint(model: Transformer, out_dir: str | os.PathLike, *,
                       tokenizer_dir: str | os.PathLike | None = None,
                       max_shard_bytes: int = 4 * 2 ** 30, overwrite: bool = False,
                       bare: bool | None = None) -> str:
    """Write a standard HF checkpoint (config.json, safetensors, tokenizer files) to out_dir.

    ``bare=True`` writes a bare ``*Model`` (no LM head, no ``model.`` prefix), False a
    ``*ForCausalLM``, None the model's own layout (``*ForCausalLM`` unless it was loaded
    from a bare checkpoint). A model without an LM head and with untied embeddings has no
    ``*ForCausalLM`` form.

    Written into a temporary sibling directory that replaces ``out_dir`` only when complete
    (``io.staged_directory``), so an interrupted export never leaves a directory that looks
    complete. A non-empty ``out_dir`` is refused unless ``overwrite``.
    """
    config = model.config
    if bare is not None:
        if not bare and not config.has_logits:
            raise CheckpointError("cannot export as *ForCausalLM: the model has no LM head "
                                  "(loaded from a bare *Model checkpoint); export it bare")
        config = config.replace(lm_head=not bare)
    out_dir = os.fspath(out_dir)
    with staged_directory(out_dir, overwrite=overwrite) as tmp:
        _write_safetensors(_hf_tensors(model, config), tmp, max_shard_bytes)
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config.to_hf(), f, indent=2)
        if tokenizer_dir is not None:
            for name in TOKENIZER_FILES:
                src = os.path.join(tokenizer_dir, name)
                if os.path.isfile(src):
                    shutil.copy2(src, tmp)
            make_portable(tmp)  # whatever wrote tokenizer_dir, transformers 4.44 reads the copy
    return out_dir


def _write_safetensors(tensors: Iterator[tuple[str, np.ndarray]], directory: str,
                       max_shard_bytes: int) -> None:
    """One model.safetensors, or numbered shards + index when over ``max_shard_bytes``."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    written: list[str] = []

    def flush():
        nonlocal size
        if not shards[-1]:
            return
        name = f"shard-{len(written) + 1:05d}.safetensors"
        save_file(shards[-1], os.path.join(directory, name), metadata={"format": "pt"})
        written.append(name)
        weight_map.update({k: name for k in shards[-1]})
        shards[-1] = {}
        size = 0

    weight_map: dict[str, str] = {}
    for key, tensor in tensors:
        if size and size + tensor.nbytes > max_shard_bytes:
            flush()
        shards[-1][key] = tensor
        size += tensor.nbytes
    flush()
    if len(written) == 1:
        os.rename(os.path.join(directory, written[0]), os.path.join(directory, SAFE_SINGLE))
        return
    total = len(written)
    renames = {old: f"model-{i + 1:05d}-of-{total:05d}.safetensors" for i, old in enumerate(written)}
    for old, new in renames.items():
        os.rename(os.path.join(directory, old), os.path.join(directory, new))
    index = {"metadata": {"total_size": sum(os.path.getsize(os.path.join(directory, n))
                                            for n in renames.values())},
             "weight_map": {k: renames[v] for k, v in weight_map.items()}}
    with open(os.path.join(directory, SAFE_INDEX), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
