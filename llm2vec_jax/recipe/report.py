"""What a recipe prints: its plan before running, and the STS table at the end."""

from __future__ import annotations

import json
import os

from ..data.sources import is_hub_ref
from ..train.stages import describe_data
from .schema import Recipe


def describe(recipe: Recipe) -> str:
    lines = [f"recipe: {recipe.path}", f"  base model: {recipe.base_model} | output: "
             f"{recipe.output_dir}"]
    for s in recipe.stages:
        c = s.config
        seq = c.data.max_seq_length if c.run.stage == "mntp" else c.contrastive.max_length
        on = " + ".join(["base"] + list(s.chain))
        lines.append(f"  {s.name} ({c.run.stage}): {c.run.max_steps} steps x "
                     f"{c.run.global_batch_size} x {seq} tokens, on {on} | {describe_data(c)}")
    sts = recipe.sts_ref()
    if sts:
        limit = f", first {recipe.eval.limit} pairs" if recipe.eval.limit else ""
        split = f" (split {recipe.eval.split})" if is_hub_ref(sts) else ""
        lines.append(f"  STS eval before training and after each stage: {sts}{split}{limit}")
    elif recipe.eval.sts_dev:
        lines.append(f"  STS eval: skipped ({recipe.eval.sts_dev} not found)")
    else:
        lines.append("  STS eval: none (eval.sts_dev not set)")
    lines.append(f"  encoder: {os.path.join(recipe.output_dir, 'encoder')} = base + "
                 f"{' + '.join(recipe.stage(recipe.encoder_stage).chain + (recipe.encoder_stage,))}")
    return "\n".join(lines)


def format_table(data: dict, recipe: Recipe | None = None) -> str:
    rows = data.get("rows", {})
    columns: list[str] = []
    for row in rows.values():
        for key in row.get("sts", {}):
            if key not in columns:
                columns.append(key)
    header = ["stage"] + [f"{c} spearman/pearson" for c in columns] + ["train loss", "eval loss"]
    lines = []
    for name, row in rows.items():
        cells = [name]
        for c in columns:
            r = row.get("sts", {}).get(c)
            cells.append(f"{r['spearman'] * 100:.2f} / {r['pearson'] * 100:.2f}" if r else "-")
        train = row.get("train", {})
        cells += [f"{train['loss']:.4f}" if "loss" in train else "-",
                  f"{train['eval_loss']:.4f}" if "eval_loss" in train else "-"]
        lines.append(cells)
    widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]
    fmt = lambda cells: " | ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    sts = data.get("eval", {}).get("sts_dev")
    title = f"STS-B dev x100 ({sts}, n={_n(rows)})" if sts else "no STS eval"
    out = [title, fmt(header), "-+-".join("-" * w for w in widths)] + [fmt(c) for c in lines]
    if "encoder" in data:
        out.append(f"encoder: {data['encoder']['path']}")
    return "\n".join(out)


def usage_example(encoder_dir: str) -> str:
    return ("encode with it:\n  from llm2vec_jax import LLM2Vec\n"
            f"  LLM2Vec.from_pretrained({json.dumps(encoder_dir)}).encode([\"A sentence to embed.\"])")


def _n(rows: dict) -> str:
    for row in rows.values():
        for r in row.get("sts", {}).values():
            return str(r.get("n"))
    return "?"
