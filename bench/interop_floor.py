"""How close can any fp32 implementation get to the PyTorch reference's embeddings of a real
model? The floor under the interop tolerance, measured on one encoder directory:

    python bench/interop_floor.py                       # SmolLM2 base, both attention modes
    python bench/interop_floor.py --encoder outputs/ablation-grid/seed-0/encoder

The reference (llm2vec 0.2.3 in its own venv, ``bench/setup_reference_env.sh``) loads the
directory as it is and encodes the texts in float32, in float64 (the exact answer, to fp32
precision) and in float32 after moving every weight one ulp (the fp32 problem's own
conditioning); we encode them in float32. Reported: max abs differences of the pooled
embeddings. If the reference's own fp32 result is further from float64 than a tolerance, no
fp32 implementation that does not replicate its exact operation order can meet that
tolerance against it. Results: ``bench/results/interop_floor-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

_REFERENCE = """
import json, sys, torch
from llm2vec import LLM2Vec
directory, texts_path, bidirectional, out_path = sys.argv[1:5]
texts = json.load(open(texts_path))
out = {}
for name, dtype in (("fp32", torch.float32), ("fp64", torch.float64)):
    l2v = LLM2Vec.from_pretrained(directory, torch_dtype=dtype, pooling_mode="mean",
                                  enable_bidirectional=bidirectional == "1")
    with torch.no_grad():
        out[name] = l2v.encode(texts, batch_size=2, show_progress_bar=False,
                               convert_to_numpy=False).double().numpy().tolist()
        if name == "fp32":
            torch.manual_seed(0)
            for p in l2v.model.parameters():
                up = torch.rand_like(p) < 0.5
                p.copy_(torch.nextafter(p, torch.where(up, torch.inf, -torch.inf)))
            out["fp32_one_ulp"] = l2v.encode(texts, batch_size=2, show_progress_bar=False,
                                             convert_to_numpy=False).double().numpy().tolist()
json.dump(out, open(out_path, "w"))
"""


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def measure(encoder: str, texts: list[str], bidirectional: bool, venv: str | None) -> dict:
    from llm2vec_jax import LLM2Vec

    with tempfile.TemporaryDirectory() as tmp:
        texts_path, out_path = Path(tmp) / "texts.json", Path(tmp) / "ref.json"
        texts_path.write_text(json.dumps(texts))
        done = subprocess.run([common.ref_python(venv), "-c", _REFERENCE, encoder,
                               str(texts_path), "1" if bidirectional else "0", str(out_path)],
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"reference side failed:\n{done.stderr[-3000:]}")
        ref = json.loads(out_path.read_text())
    ours = LLM2Vec.from_pretrained(encoder, pooling_mode="mean", max_length=512,
                                   bidirectional=bidirectional)
    emb = ours.encode(texts, batch_size=2, show_progress_bar=False)
    return {"max_abs_embedding": float(np.max(np.abs(ref["fp64"]))),
            "reference_fp32_vs_fp64": _max_abs(ref["fp32"], ref["fp64"]),
            "reference_fp32_one_ulp_weights_vs_fp32": _max_abs(ref["fp32_one_ulp"], ref["fp32"]),
            "ours_fp32_vs_reference_fp64": _max_abs(emb, ref["fp64"]),
            "ours_fp32_vs_reference_fp32": _max_abs(emb, ref["fp32"])}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default=None,
                   help="an HF directory we wrote (default: the converted SmolLM2 base)")
    p.add_argument("--texts", type=int, default=64, help="STS-B dev sample sentences encoded")
    p.add_argument("--modes", default="bidirectional,causal")
    p.add_argument("--ref-venv", default=None)
    p.add_argument("--name", default="interop_floor")
    args = p.parse_args(argv)
    from llm2vec_jax.evaluation import load_sts

    encoder = args.encoder or str(common.smollm2_hf_dir())
    sts = load_sts("sample:stsb-dev")
    half = args.texts // 2
    texts = list(sts.sentences1[:half]) + list(sts.sentences2[:args.texts - half])
    rows = {}
    for mode in common.split_list(args.modes):
        rows[mode] = measure(encoder, texts, mode == "bidirectional", args.ref_venv)
        print(mode, json.dumps(rows[mode], indent=1), flush=True)
    path = common.write_results(args.name, {"encoder": encoder, "texts": len(texts),
                                            "rows": rows})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
