"""Run as a script with 8 fake CPU devices: loss and LoRA gradients of the MNTP and
contrastive objectives on several meshes, printed as JSON (driven by test_sharding.py)."""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from llm2vec_jax import sharding as shd  # noqa: E402
from llm2vec_jax.checkpoints.hf import load_hf_checkpoint  # noqa: E402
from llm2vec_jax.data.batches import ContrastiveBatch, Features  # noqa: E402
from llm2vec_jax.data.mntp import MNTPCollator  # noqa: E402
from llm2vec_jax.lora import LoRAConfig, attach_lora  # noqa: E402
from llm2vec_jax.train.steps import contrastive_objective, mntp_objective, split_model  # noqa: E402

MESHES = [(1, 1, 1), (8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2)]


def batches(batch_size=8, seq=16, vocab=128):
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab, (batch_size, seq)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    mask[5, 9:] = 0
    collator = MNTPCollator(mask_token_id=3, vocab_size=vocab, mlm_probability=0.3)
    mntp = collator(ids, mask, np.zeros_like(ids), np.random.default_rng(1))
    embed_mask = mask.copy()
    embed_mask[:, :2] = 0  # an "instruction" that is attended but not pooled
    pairs = ContrastiveBatch(*(Features((ids + off) % vocab, mask, embed_mask) for off in (0, 7)))
    return mntp, pairs


def grads_on(mesh_shape, checkpoint):
    devices = jax.devices()[:int(np.prod(mesh_shape))]
    mesh = shd.make_mesh(shd.MeshConfig(*mesh_shape), devices)
    model = load_hf_checkpoint(checkpoint, sharding_fn=shd.weight_sharding_fn(mesh))
    attach_lora(model, LoRAConfig(r=4, dropout=0.0), seed=1,
                sharding_fn=shd.weight_sharding_fn(mesh))
    for p in model.lora_config.targets:  # B != 0, so A's gradients are non-zero too
        var = getattr(model.layers, f"{p}_lora_b")
        noise = jax.random.normal(jax.random.key(len(p)), (var.size,))  # flat: compiles faster
        var.set_value(var[...] + 0.05 * noise.reshape(var.shape))
    graphdef, lora, frozen = split_model(model)
    out = {"shardings": {name: list(array.sharding.spec) for name, array in
                         (("q", model.layers.q[...]), ("embed", model.embed[...]),
                          ("q_lora_b", model.layers.q_lora_b[...]))},
           "q_shard_shape": list(model.layers.q[...].sharding.shard_shape(model.layers.q[...].shape))}
    mntp, pairs = batches()
    for name, objective, batch in (("mntp", mntp_objective, mntp),
                                   ("contrastive", lambda m, b, r: contrastive_objective(m, b, r, scale=20.0), pairs)):
        batch = shd.global_batch(mesh, batch)

        @jax.jit
        def loss_and_grads(lora, frozen, batch):
            def f(lora):
                return objective(nnx.merge(graphdef, lora, frozen), batch, None)[0]
            return jax.value_and_grad(f)(lora)

        loss, grads = loss_and_grads(lora, frozen, batch)
        out[name] = {"loss": float(loss),
                     "grads": {"/".join(map(str, k)): np.asarray(v).ravel()[:64].tolist()
                               for k, v in nnx.to_flat_state(grads)}}
    return out


if __name__ == "__main__":
    checkpoint = sys.argv[1]
    print(json.dumps({",".join(map(str, m)): grads_on(m, checkpoint) for m in MESHES}))
