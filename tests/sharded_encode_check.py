"""Run as a script with 8 fake CPU devices, printing JSON (driven by test_encoder_mesh.py):

    sharded_encode_check.py embeddings CHECKPOINT   a tiny model encoded replicated and on
                                                    sharded meshes (pooled and token
                                                    embeddings), and where its weights went
    sharded_encode_check.py memory                  the compiled encode step of a
                                                    Llama-3-8B-shaped bf16 model (abstract
                                                    shapes only) on fsdp=8 and replicated
"""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json  # noqa: E402

import jax  # noqa: E402

from llm2vec_jax.encoder import LLM2Vec  # noqa: E402

TEXTS = ["The cat sat on the mat.", ["Retrieve a passage", "Where do cats sit?"],
         "A longer sentence about the weather, which was cold and wet all week long in town.",
         "x", "", ["Represent the title", "Sharding weights over eight devices"]] * 3


def memory() -> None:
    from llm2vec_jax.models.config import ModelConfig
    from llm2vec_jax.models.presets import preset
    from llm2vec_jax.plan.encode import encode_memory
    from llm2vec_jax.sharding import MeshConfig, make_mesh

    config = ModelConfig.from_hf(preset("llama-3-8b"), param_dtype="bfloat16", dtype="bfloat16")
    out = {name: encode_memory(config, make_mesh(MeshConfig(**sizes), jax.devices()), 8, 256)
           for name, sizes in (("fsdp=8", dict(data=1, fsdp=8)), ("data=8", dict(data=8)))}
    print(json.dumps(out))


def embeddings(checkpoint: str) -> None:
    out = {}
    for mesh in (None, "fsdp=8", "tensor=2,data=4", "data=2,fsdp=2,tensor=2"):
        encoder = LLM2Vec.from_pretrained(checkpoint, mesh=mesh, pooling_mode="mean")
        emb = encoder.encode(TEXTS, batch_size=4, show_progress_bar=False)
        tokens = encoder.encode(TEXTS, batch_size=4, show_progress_bar=False,
                                output_value="token_embeddings")
        q = encoder.model.layers.q[...]
        out[str(mesh)] = {"embeddings": emb.tolist(),
                          "token_embeddings": [t.embeddings.tolist() for t in tokens],
                          "q_spec": [str(a) for a in q.sharding.spec],
                          "q_shard_shape": list(q.sharding.shard_shape(q.shape)),
                          "q_shape": list(q.shape),
                          "devices": len(encoder.devices)}
    assert len(jax.devices()) == 8
    print(json.dumps(out))


if __name__ == "__main__":
    memory() if sys.argv[1] == "memory" else embeddings(sys.argv[2])
