"""The chips a plan is measured against, and the report printed for a person."""

from __future__ import annotations

import dataclasses

from ..train.flops import peak_flops

GiB = 1024 ** 3
# Fraction of HBM a plan may use and still be called a fit: the runtime reserves some memory,
# and the CPU-compiled temporaries are only an estimate of the accelerator's.
FIT_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class Chip:
    kind: str           # jax device_kind prefix (the key into flops.PEAK_FLOPS)
    hbm_gib: float      # memory per JAX device

    @property
    def peak_flops(self) -> float:
        """Dense bf16 FLOP/s per JAX device."""
        return peak_flops(self.kind)


CHIPS: dict[str, Chip] = {
    "tpu-v4": Chip("TPU v4", 32),      # a v4-8 host: 4 chips (megacore: 1 device each)
    "tpu-v5e": Chip("TPU v5 lite", 16),  # v5litepod-8: 8 chips
    "tpu-v5p": Chip("TPU v5p", 95),    # v5p-8: 4 chips (megacore)
    "h100": Chip("NVIDIA H100", 80),   # 80 GB SXM
}


def _verdict(used: float) -> str:
    return "fits" if used <= FIT_FRACTION else ("tight" if used <= 1.0 else "no")


def chip_fits(total_bytes: int, flops: float, devices: int, chips: list[str] | None,
              assumed_mfu: float, encode_bytes: int) -> dict:
    """Per chip: its HBM, the share of it a device's ``total_bytes`` (training) and
    ``encode_bytes`` (encoding) take, their verdicts, and the step time at ``assumed_mfu``."""
    fits = {}
    for name in chips or list(CHIPS):
        chip = CHIPS[name]
        hbm = chip.hbm_gib * GiB
        used = total_bytes / hbm
        fits[name] = {
            "hbm_bytes": int(hbm),
            "used_fraction": used,
            "verdict": _verdict(used),
            "step_time_s": flops / (chip.peak_flops * devices * assumed_mfu),
            "encode_used_fraction": encode_bytes / hbm,
            "encode_verdict": _verdict(encode_bytes / hbm),
        }
    return fits


def _gib(b: float) -> str:
    return f"{b / GiB:8.2f} GiB"


def format_report(r: dict) -> str:
    c = r["config"]
    mesh = ",".join(f"{a}={s}" for a, s in c["mesh"].items())
    lines = [
        f"{c['stage']} | {c['model']} | {c['param_dtype']} params, {c['compute_dtype']} compute"
        f" | remat={c['remat']} | mesh {mesh} ({c['devices']} devices)",
        f"global batch {c['global_batch']} x seq {c['seq']} x {c['views']} view(s)"
        + (f" | grad_cache_chunk {c['grad_cache_chunk']}" if c["grad_cache_chunk"] else "")
        + f" | params: {r['params']['frozen'] / 1e9:.2f}B frozen, "
        f"{r['params']['lora'] / 1e6:.1f}M LoRA (r={c['lora_r']})",
        f"compiled on {r['compile_backend']}: lower {r['lower_s']:.1f}s, compile {r['compile_s']:.1f}s",
        "",
        "XLA memory per device:",
    ]
    m = r["memory_per_device"]
    for k in ("argument", "output", "alias", "temp", "generated_code"):
        lines.append(f"  {k:<15}{_gib(m[k])}")
    lines.append(f"  {'total':<15}{_gib(m['total'])}   (argument + output - alias + temp + code)")
    if "peak" in m:
        lines.append(f"  {'peak':<15}{_gib(m['peak'])}")
    lines.append("arguments per device (from the shardings):")
    for k, v in r["arguments_per_device"].items():
        lines.append(f"  {k:<15}{_gib(v)}   (global {r['arguments_global'][k] / GiB:.2f} GiB)")
    e = r["encode_memory_per_device"]
    lines.append(f"encode memory per device (LLM2Vec(mesh=...), {e['rows']} rows x {e['width']} "
                 "tokens, forward + pooling):")
    for k in ("argument", "temp", "total"):
        lines.append(f"  {k:<15}{_gib(e[k])}")
    lines.append(f"  {'params':<15}{_gib(e['params'])}   (global {e['params_global'] / GiB:.2f} GiB)")
    xla = r["xla_flops_per_device"]
    lines += [
        "",
        f"FLOPs per step: {r['flops_per_step']:.3e} (model, train.flops)"
        + (f"; XLA cost_analysis {xla:.3e} per device" if xla is not None else ""),
        "",
        f"{'chip':<9}{'HBM':>10}{'used':>8}  {'verdict':<7}"
        f"{'step @ MFU ' + format(r['assumed_mfu'], '.0%'):>16}{'encode used':>14}",
    ]
    for name, f in r["chips"].items():
        lines.append(f"{name:<9}{f['hbm_bytes'] / GiB:>6.0f} GiB{f['used_fraction']:>8.0%}  "
                     f"{f['verdict']:<7}{f['step_time_s']:>14.3f} s"
                     f"{f['encode_used_fraction']:>8.0%} {f['encode_verdict']}")
    lines += ["", "note: " + r["note"],
              f"      'fits' = total <= {FIT_FRACTION:.0%} of HBM; 'tight' = up to 100%."]
    return "\n".join(lines)
