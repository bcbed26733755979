"""What the compiled training step holds, by dtype: XLA's memory analysis of our MNTP and
SimCSE steps (``bench/train_step.py``'s shapes and batches, SmolLM2-135M, LoRA r16), and the
buffers the layer scan saves for the backward pass (the residuals, stacked on the L axis),
grouped by element type. Compiles only; nothing is run, so the machine need not be idle.

    python bench/step_memory.py                               # both stages, fp32 and bf16
    python bench/step_memory.py --stages simcse --dtype bfloat16

Why: the bf16 step's peak RSS was nearly the fp32 one (``train_step_bf16-*.json``), though
its base weights and most activations are half the size. If the residuals are float32 in
the bf16 step, that is where the memory went.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from train_step import STAGE_SHAPES, _batch_path, build_ours_step  # noqa: E402

# An HLO array type: element type and dimensions, e.g. ``bf16[30,16,64,576]{3,2,1,0}``.
_ARRAY = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|f16|bf16|f32|f64)\[([0-9,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4,
          "u32": 4, "f32": 4, "f64": 8}


def stacked_buffers(hlo_text: str, num_layers: int, batch_dims: set[int]) -> dict[str, dict]:
    """The layer scan's stacked residuals, per element type (count, bytes, shapes): the
    elements of a ``while`` loop's tuple with a leading ``num_layers`` axis and a batch-sized
    axis after it (stacked weights have no batch axis), from the loop that carries the most
    such bytes: the forward scan, which writes the residuals for the backward."""
    best: dict[str, dict] = {}
    best_bytes = -1
    for line in hlo_text.splitlines():
        if ") while(" not in line:
            continue
        tuple_type = line.split("= (", 1)[-1].split(") while(", 1)[0]
        found: dict[str, dict] = {}
        total = 0
        for etype, dims in _ARRAY.findall(tuple_type):
            shape = [int(d) for d in dims.split(",") if d]
            if len(shape) < 3 or shape[0] != num_layers or shape[1] not in batch_dims:
                continue
            size = _BYTES[etype]
            for d in shape:
                size *= d
            entry = found.setdefault(etype, {"arrays": 0, "bytes": 0, "shapes": []})
            entry["arrays"] += 1
            entry["bytes"] += size
            entry["shapes"].append(shape)
            total += size
        if total > best_bytes:
            best, best_bytes = found, total
    return best


def analyse(stage: str, dtype: str, model_dir: Path, batch_file: Path, grad_ckpt: bool) -> dict:
    import numpy as np

    with np.load(batch_file) as z:
        batch = {k: z[k] for k in z.files}
    step_fn, state, dev_batch, root, _, _ = build_ours_step(stage, str(model_dir), batch,
                                                            grad_ckpt=grad_ckpt, dtype=dtype)
    t = time.perf_counter()
    compiled = step_fn.lower(state, dev_batch, root).compile()
    compile_s = time.perf_counter() - t
    mem = compiled.memory_analysis()
    rows = batch["input_ids"].shape[0]
    layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
    residuals = stacked_buffers(compiled.as_text(), layers, {rows, 2 * rows})
    return {"stage": stage, "dtype": dtype, "grad_ckpt": grad_ckpt,
            "compile_s": round(compile_s, 1),
            "temp_mb": round(mem.temp_size_in_bytes / 2**20, 1),
            "argument_mb": round(mem.argument_size_in_bytes / 2**20, 1),
            "output_mb": round(mem.output_size_in_bytes / 2**20, 1),
            "alias_mb": round(mem.alias_size_in_bytes / 2**20, 1),
            "residuals": {k: {**v, "mb": round(v["bytes"] / 2**20, 1)}
                          for k, v in residuals.items()}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", default="mntp,simcse")
    p.add_argument("--dtype", default="float32,bfloat16")
    p.add_argument("--grad-ckpt", default="off", help="comma list of off/on")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--sentences", default=str(common.SENTENCES_512))
    p.add_argument("--ref-venv", default=None)
    p.add_argument("--cache-dir", default=str(common.CACHE_DIR))
    p.add_argument("--name", default="step_memory")
    a = p.parse_args(argv)
    model_dir = common.smollm2_hf_dir(Path(a.cache_dir))
    rows = []
    for stage in common.split_list(a.stages):
        batch_file = _batch_path(a, stage, model_dir)
        for ckpt in common.split_list(a.grad_ckpt):
            for dtype in common.split_list(a.dtype):
                r = analyse(stage, dtype, model_dir, batch_file, ckpt == "on")
                res = ", ".join(f"{k} {v['mb']} MB in {v['arrays']}"
                                for k, v in r["residuals"].items())
                print(f"{stage} {'x'.join(map(str, STAGE_SHAPES[stage]))} ckpt={ckpt} {dtype}: "
                      f"temp {r['temp_mb']} MB, args {r['argument_mb']} MB; "
                      f"stacked residuals: {res}", flush=True)
                rows.append(r)
    path = common.write_results(a.name, {"bench": "step_memory",
                                         "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                         "args": vars(a), "rows": rows})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
