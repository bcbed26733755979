"""Reference (PyTorch llm2vec 0.2.3) side of the benchmarks.

Runs INSIDE the reference venv (bench/setup_reference_env.sh): it imports torch, llm2vec and
peft, never llm2vec_jax. Each invocation measures one configuration and prints one JSON line,
so that ``ru_maxrss`` (peak RSS of this process) belongs to that configuration alone.

The training steps rebuild what the reference's own scripts do (experiments/run_mntp.py and
run_simcse.py of llm2vec 0.2.3), minus the HF Trainer loop, so that the timed region is one
optimizer step and nothing else:
* MNTP: ``LlamaBiForMNTP`` with peft LoRA on its inner ``LlamaBiModel`` (``get_model_for_peft``),
  texts concatenated and cut into max_seq_length blocks (run_mntp's ``group_texts``), 20 % of
  tokens replaced by the mask token ``_`` (DataCollatorForLanguageModelingWithFullMasking),
  loss = LlamaForCausalLM's shifted cross-entropy.
* SimCSE: ``LLM2Vec.from_pretrained(..., attention_dropout=0.3)`` (bidirectional
  ``LlamaBiModel``), LoRA on ``model.model``, the same batch fed twice (dropout makes the two
  views differ), ``LLM2Vec.forward`` pooling, ``HardNegativeNLLLoss(scale=20)``.
Gradient checkpointing is switched on the way the HF Trainer does (``gradient_checkpointing_enable``
on the top-level model after peft is attached).

usage (see --help of each subcommand):
  python bench/reference_side.py encode      --model-dir D --sentences F --dtype float32
  python bench/reference_side.py make_batch  --stage mntp --model-dir D --sentences F --out B.npz
  python bench/reference_side.py mntp_step   --model-dir D --batch B.npz [--grad-ckpt]
  python bench/reference_side.py simcse_step --model-dir D --batch B.npz [--grad-ckpt]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

LORA_TARGETS = ["q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MNTP_MASK_TOKEN = "_"  # run_mntp's mask_token_type "blank" for tokenizers without a mask token


TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def read_sentences(path: str, limit: int | None) -> list[str]:
    with open(path) as fh:
        s = [l.rstrip("\n") for l in fh if l.strip()]
    return s[:limit] if limit else s


def versions() -> dict:
    import llm2vec  # noqa: F401
    import peft
    import transformers
    from importlib.metadata import version

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "llm2vec": version("llm2vec"),
        "torch_threads": torch.get_num_threads(),
    }


def emit(d: dict) -> None:
    d["peak_rss_mb"] = round(peak_rss_mb(), 1)
    d["side"] = "reference"
    d["versions"] = versions()
    print(json.dumps(d), flush=True)


def summarize(times: list[float]) -> dict:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": [round(t, 4) for t in times],
    }


# ---------------------------------------------------------------------------- encode


def cmd_encode(a) -> None:
    from llm2vec import LLM2Vec

    dtype = TORCH_DTYPES[a.dtype]
    t0 = time.perf_counter()
    model = LLM2Vec.from_pretrained(
        a.model_dir, enable_bidirectional=True, pooling_mode="mean", max_length=a.max_length,
        torch_dtype=dtype, attn_implementation="sdpa",
    )
    load_s = time.perf_counter() - t0
    texts = read_sentences(a.sentences, a.limit)

    # Real tokens exactly as encode() builds its rows (separator removed, truncation on).
    strs = [model._convert_to_str("", t) for t in texts]
    feats = model.tokenize([model.prepare_for_tokenization(s) for s in strs])
    real_tokens = int(feats["attention_mask"].sum())

    times = []
    emb = None
    for i in range(a.warmup + a.passes):
        t = time.perf_counter()
        emb = model.encode(texts, batch_size=a.batch_size, show_progress_bar=False)
        dt = time.perf_counter() - t
        if i >= a.warmup:
            times.append(dt)
    s = summarize(times)
    out = {
        "bench": "encode", "dtype": a.dtype, "n_sentences": len(texts), "batch_size": a.batch_size,
        "max_length": a.max_length, "real_tokens": real_tokens, "warmup": a.warmup,
        "passes": a.passes, "load_s": round(load_s, 2), **s,
        "tokens_per_s": real_tokens / s["median_s"], "sentences_per_s": len(texts) / s["median_s"],
    }
    if a.save_embeddings:
        np.save(a.save_embeddings, emb.float().numpy())
        out["embeddings"] = a.save_embeddings
    emit(out)


# ---------------------------------------------------------------------------- batches


def _tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.eos_token  # as LLM2Vec.from_pretrained
    tok.padding_side = "left"
    return tok


def make_mntp_batch(model_dir, texts, batch_size, seq_len, mlm_probability, seed) -> dict:
    tok = _tokenizer(model_dir)
    if tok.mask_token is None:
        tok.mask_token = MNTP_MASK_TOKEN
    enc = tok(texts, return_special_tokens_mask=True)
    ids = [i for row in enc["input_ids"] for i in row]
    special = [i for row in enc["special_tokens_mask"] for i in row]
    need = batch_size * seq_len
    if len(ids) < need:
        raise SystemExit(f"only {len(ids)} tokens in the sentences, need {need}")
    input_ids = torch.tensor(ids[:need]).view(batch_size, seq_len)
    special_mask = torch.tensor(special[:need], dtype=torch.bool).view(batch_size, seq_len)
    # DataCollatorForLanguageModelingWithFullMasking: every selected token becomes the mask
    # token (no 80/10/10 split), the rest are ignored by the loss.
    g = torch.Generator().manual_seed(seed)
    prob = torch.full(input_ids.shape, mlm_probability)
    prob.masked_fill_(special_mask, 0.0)
    masked = torch.bernoulli(prob, generator=g).bool()
    labels = input_ids.clone()
    labels[~masked] = -100
    inputs = input_ids.clone()
    inputs[masked] = tok.convert_tokens_to_ids(tok.mask_token)
    return {
        "input_ids": inputs.numpy().astype(np.int32),
        "attention_mask": np.ones(inputs.shape, np.int32),
        "labels": labels.numpy().astype(np.int32),
        "mask_token_id": np.int32(tok.convert_tokens_to_ids(tok.mask_token)),
    }


def make_simcse_batch(model_dir, texts, batch_size, seq_len) -> dict:
    """Rows that fill seq_len: consecutive sentences joined until they are long enough.

    Full rows keep "real tokens/s" equal to the work done and sidestep the reference's
    quirk that SimCSE mean pooling (no separator => empty embed_mask) also averages pad
    positions; with no padding both sides pool the same positions.
    """
    tok = _tokenizer(model_dir)
    rows, cur = [], ""
    for t in texts:
        cur = (cur + " " + t).strip()
        if len(tok(cur, add_special_tokens=True)["input_ids"]) >= seq_len:
            rows.append(cur)
            cur = ""
            if len(rows) == batch_size:
                break
    if len(rows) < batch_size:
        raise SystemExit(f"not enough text for {batch_size} rows of {seq_len} tokens")
    enc = tok(rows, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    return {
        "input_ids": enc["input_ids"].astype(np.int32),
        "attention_mask": enc["attention_mask"].astype(np.int32),
        "texts": np.array(rows),
    }


def cmd_make_batch(a) -> None:
    texts = read_sentences(a.sentences, None)
    if a.stage == "mntp":
        b = make_mntp_batch(a.model_dir, texts, a.batch_size or 8, a.seq_len or 128, a.mlm_probability, a.seed)
    else:
        b = make_simcse_batch(a.model_dir, texts, a.batch_size or 16, a.seq_len or 64)
    np.savez(a.out, **b)
    print(json.dumps({"batch": a.out, "shape": list(b["input_ids"].shape),
                      "real_tokens": int(b["attention_mask"].sum())}))


def _load_batch(path: str) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------------- training steps


def _initialize_peft(model, r, alpha, dropout):
    """run_mntp.py / run_simcse.py ``initialize_peft`` of llm2vec 0.2.3."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=LORA_TARGETS,
                        lora_dropout=dropout, bias="none", task_type=None)
    return get_peft_model(model, config)


def _enable_grad_ckpt(top, hf_model) -> None:
    """Gradient checkpointing as the HF Trainer switches it on, plus the input-grad hook.

    The Trainer calls ``gradient_checkpointing_enable()`` (reentrant checkpointing in 4.44)
    on the model *after* run_mntp/run_simcse attached LoRA with ``get_peft_model``. peft only
    hooks the embeddings' output to require grad when checkpointing is already on at attach
    time, and transformers only when peft was attached through its own integration, so
    neither happens: with frozen (here: tied, hence frozen) embeddings no checkpointed input
    requires grad and backward fails with "element 0 of tensors does not require grad".
    ``enable_input_require_grads`` is the standard fix (what both libraries do in their
    usual paths); it is recorded in the result as ``grad_ckpt_fix``.
    """
    top.gradient_checkpointing_enable()
    hf_model.enable_input_require_grads()


def _time_steps(step, warmup, steps) -> tuple[list[float], list[float]]:
    times, losses = [], []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss = step()
        dt = time.perf_counter() - t
        losses.append(loss)
        if i >= warmup:
            times.append(dt)
    return times, losses


def _optimizer_step(params, opt) -> None:
    # HF Trainer defaults used by run_mntp/run_simcse: grad-norm clip 1.0 before AdamW.
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def _adamw(model, lr):
    params = [p for p in model.parameters() if p.requires_grad]
    # weight_decay=0: the HF Trainer's default (torch's own AdamW default would be 0.01)
    return params, torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _train_common(a, model, step, batch, real_tokens, n_sequences, extra) -> None:
    trainable = [p for p in model.parameters() if p.requires_grad]
    times, losses = _time_steps(step, a.warmup, a.steps)
    s = summarize(times)
    emit({
        "bench": a.cmd, "grad_ckpt": a.grad_ckpt, "dtype": a.dtype,
        "batch_shape": list(batch["input_ids"].shape), "real_tokens_per_step": real_tokens,
        "warmup": a.warmup, "steps": a.steps, **s,
        "tokens_per_s": real_tokens / s["median_s"], "sentences_per_s": n_sequences / s["median_s"],
        "trainable_params": sum(p.numel() for p in trainable),
        "losses": [round(float(l), 5) for l in losses],
        "grad_ckpt_fix": "enable_input_require_grads" if a.grad_ckpt else None, **extra,
    })


def cmd_mntp_step(a) -> None:
    from llm2vec.models import LlamaBiForMNTP

    torch.manual_seed(a.seed)
    batch = _load_batch(a.batch)
    model = LlamaBiForMNTP.from_pretrained(a.model_dir, torch_dtype=TORCH_DTYPES[a.dtype],
                                           attn_implementation="sdpa")
    model.model = _initialize_peft(model.get_model_for_peft(), a.lora_r, a.lora_alpha, a.lora_dropout)
    if a.grad_ckpt:
        _enable_grad_ckpt(model, model)
    model.train()
    params, opt = _adamw(model, a.lr)
    inputs = {k: torch.from_numpy(batch[k]).long() for k in ("input_ids", "attention_mask", "labels")}

    def step():
        out = model(**inputs)
        out.loss.backward()
        _optimizer_step(params, opt)
        return out.loss.item()

    real = int(batch["attention_mask"].sum())
    _train_common(a, model, step, batch, real, batch["input_ids"].shape[0],
                  {"masked_tokens_per_step": int((batch["labels"] != -100).sum())})


def cmd_simcse_step(a) -> None:
    from llm2vec import LLM2Vec
    from llm2vec.loss.utils import load_loss

    torch.manual_seed(a.seed)
    batch = _load_batch(a.batch)
    model = LLM2Vec.from_pretrained(
        a.model_dir, enable_bidirectional=True, pooling_mode="mean",
        max_length=batch["input_ids"].shape[1], torch_dtype=TORCH_DTYPES[a.dtype],
        attn_implementation="sdpa", attention_dropout=a.simcse_dropout,
    )
    model.model = _initialize_peft(model.model, a.lora_r, a.lora_alpha, a.lora_dropout)
    if a.grad_ckpt:
        _enable_grad_ckpt(model, model.model)
    model.train()
    loss_fn = load_loss("HardNegativeNLLLoss", scale=a.loss_scale)
    params, opt = _adamw(model, a.lr)
    ids = torch.from_numpy(batch["input_ids"]).long()
    am = torch.from_numpy(batch["attention_mask"]).long()

    def features():
        # What the reference collator produces for texts without the instruction separator:
        # an all-zero embed_mask (so get_pooling's mean covers the whole row).
        return {"input_ids": ids, "attention_mask": am.clone(), "embed_mask": torch.zeros_like(am)}

    def step():
        q = model(features())
        d = model(features())
        loss = loss_fn(q, d)
        loss.backward()
        _optimizer_step(params, opt)
        return loss.item()

    real = int(batch["attention_mask"].sum())
    # two views: each step encodes every row twice
    _train_common(a, model, step, batch, 2 * real, batch["input_ids"].shape[0],
                  {"views": 2, "real_tokens_per_view": real})


# ---------------------------------------------------------------------------- cli


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    sub = p.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("encode")
    e.add_argument("--model-dir", required=True)
    e.add_argument("--sentences", required=True)
    e.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--max-length", type=int, default=128)
    e.add_argument("--limit", type=int, default=None, help="first N sentences only (smoke runs)")
    e.add_argument("--warmup", type=int, default=1)
    e.add_argument("--passes", type=int, default=3)
    e.add_argument("--save-embeddings", default=None)

    m = sub.add_parser("make_batch")
    m.add_argument("--stage", choices=["mntp", "simcse"], required=True)
    m.add_argument("--model-dir", required=True)
    m.add_argument("--sentences", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--batch-size", type=int, default=None)
    m.add_argument("--seq-len", type=int, default=None)
    m.add_argument("--mlm-probability", type=float, default=0.2)
    m.add_argument("--seed", type=int, default=42)

    for name in ("mntp_step", "simcse_step"):
        t = sub.add_parser(name)
        t.add_argument("--model-dir", required=True)
        t.add_argument("--batch", required=True, help="npz written by make_batch")
        t.add_argument("--grad-ckpt", action="store_true")
        t.add_argument("--warmup", type=int, default=2)
        t.add_argument("--steps", type=int, default=10)
        t.add_argument("--lr", type=float, default=5e-5)
        t.add_argument("--lora-r", type=int, default=16)
        t.add_argument("--lora-alpha", type=int, default=32)
        t.add_argument("--lora-dropout", type=float, default=0.05)
        t.add_argument("--seed", type=int, default=42)
        # bfloat16: the base model in bf16; peft keeps the LoRA weights (and so their grads
        # and AdamW state) in float32 (its autocast_adapter_dtype default), as ours does.
        t.add_argument("--dtype", choices=list(TORCH_DTYPES), default="float32")
        if name == "simcse_step":
            t.add_argument("--simcse-dropout", type=float, default=0.3)
            t.add_argument("--loss-scale", type=float, default=20.0)

    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    {"encode": cmd_encode, "make_batch": cmd_make_batch, "mntp_step": cmd_mntp_step,
     "simcse_step": cmd_simcse_step}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
