"""Will a training stage fit on a chip? Compile the real train step without any weights.

    python -m llm2vec_jax.plan --config configs/mntp/llama3-8b.yaml --mesh fsdp=8 \\
        [--device tpu-v4|tpu-v5e|tpu-v5p|h100] [--remat none|dots|full] [--set k=v ...] \\
        [--batch N --seq S] [--model NAME_OR_CONFIG_JSON] [--json]

The model, its LoRA adapter, the optimizer state and a batch of the stage's shapes are built
as ``jax.ShapeDtypeStruct``s carrying the ``NamedSharding``s the training loop would give
them (``abstract``: the weight table's logical axes through ``sharding.LOGICAL_AXIS_RULES``);
then the same jitted train step the loop runs (``steps.jit_train_step`` over
``make_train_step`` and the stage's objective) is lowered and compiled for a mesh of fake CPU
devices of the target size (``--xla_force_host_platform_device_count``; ``compile``). Nothing
of the model's size is ever allocated: compilation only needs shapes and shardings.

Reported per device (``report``): XLA's ``memory_analysis()`` of the compiled step
(arguments, outputs, aliased/donated, temporaries, generated code), our own per-group argument
bytes from the shardings, model FLOPs (``train.flops``) and XLA's ``cost_analysis()`` FLOPs,
and the step time an assumed MFU would give on the chosen chip; beside it, the memory of
encoding with the same weights on the same mesh (``LLM2Vec(mesh=...)``: the encoder's own
jitted forward + pooling for batch rows × seq tokens, compiled the same way; ``encode``).

Caveat: the executable is compiled by XLA:CPU, not by the TPU/GPU compiler. Argument and
output sizes follow from shapes and shardings and carry over exactly; temporaries depend on
the backend's fusion, layout, rematerialisation and scheduling decisions and are an
estimate of what the accelerator compile will need (see docs/fit.md).

The architecture is one of the paper's models (``models.presets``: offline, their
``config.json`` fields are written out there), or a local ``config.json`` / HF checkpoint
directory given as ``model.path`` or ``--model``.
"""

from .abstract import abstract_batch, abstract_state
from .compile import PlanError, architecture, parse_mesh, plan
from .report import CHIPS, FIT_FRACTION, Chip, format_report

__all__ = ["CHIPS", "Chip", "FIT_FRACTION", "PlanError", "abstract_batch", "abstract_state",
           "architecture", "format_report", "parse_mesh", "plan"]
