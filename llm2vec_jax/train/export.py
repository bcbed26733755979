"""A finished stage's output: ``OUTPUT_DIR/adapter``, the LoRA adapter in PEFT format with the
tokenizer, ``llm2vec_config.json`` and the attention mode (loadable by ``LLM2Vec.from_pretrained(base,
adapter=...)`` and by the PyTorch reference)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

from etils import epath
from flax import nnx

from ..checkpoints.encoder_config import write_jax_config, write_llm2vec_config
from ..checkpoints.io import is_remote, join
from ..checkpoints.peft import save_peft_adapter
from ..checkpoints.tokenizer_files import make_portable
from ..distributed import is_main_process
from ..text.reference import DOC_MAX_LENGTH
from .config import TrainConfig
from .steps import TrainState

log = logging.getLogger("llm2vec_jax.train")


def export_adapter(config: TrainConfig, graphdef, state: TrainState, model_path: str,
                   tokenizer) -> None:
    if not is_main_process():
        return
    model = nnx.merge(graphdef, state.lora, state.frozen)
    out = join(config.run.output_dir, "adapter")
    # PEFT/tokenizer writers need a local directory: stage there, then copy to e.g. gs://.
    local = tempfile.mkdtemp(prefix="adapter-") if is_remote(out) else out
    save_peft_adapter(model, local, base_model_name_or_path=model_path)
    tokenizer.save_pretrained(local)
    make_portable(local)  # the reference's transformers 4.44 reads it as-is
    max_length = (config.data.max_seq_length if config.run.stage == "mntp"
                  else config.contrastive.max_length)
    write_llm2vec_config(local, {"pooling_mode": config.contrastive.pooling,
                                 "max_length": max_length, "doc_max_length": DOC_MAX_LENGTH,
                                 "skip_instruction": True})
    write_jax_config(local, config.model.attention == "bidirectional")
    if local != out:
        epath.Path(out).mkdir(parents=True, exist_ok=True)
        for name in os.listdir(local):
            epath.Path(os.path.join(local, name)).copy(epath.Path(join(out, name)), overwrite=True)
        shutil.rmtree(local)
    log.info("adapter written to %s", out)
