"""Shared plumbing for the side-by-side benchmarks (runs in OUR environment, never imports torch).

Both sides of every measurement run in their own subprocess so that ``ru_maxrss`` is the peak
of one side and one configuration only; the driver itself stays small.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
CACHE_DIR = Path(os.environ.get("LLM2VEC_JAX_CACHE", Path.home() / ".cache" / "llm2vec-jax"))
DEFAULT_REF_VENV = Path(os.environ.get("LLM2VEC_REF_VENV", CACHE_DIR / "refvenv"))
SENTENCES_512 = REPO_ROOT / "tests" / "fixtures" / "smollm2" / "encode_sentences_512.txt"


# ---------------------------------------------------------------------------- machine state


def _top_cpu_processes(n: int = 8, interval: float = 1.0) -> list[dict]:
    """CPU share of every process over ``interval`` seconds, from /proc (no psutil needed)."""
    def snapshot():
        out = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    stat = fh.read()
                # comm may contain spaces/parentheses: split after the last ')'
                rest = stat[stat.rindex(")") + 2:].split()
                ticks = int(rest[11]) + int(rest[12])  # utime + stime
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
                out[int(pid)] = (ticks, cmd or stat[stat.index("(") + 1:stat.rindex(")")])
            except (OSError, ValueError, IndexError):
                continue
        return out

    hz = os.sysconf("SC_CLK_TCK")
    a = snapshot()
    time.sleep(interval)
    b = snapshot()
    rows = []
    for pid, (t1, cmd) in b.items():
        t0 = a.get(pid, (t1, cmd))[0]
        pct = 100.0 * (t1 - t0) / hz / interval
        if pct > 0.5 and pid != os.getpid():
            rows.append({"pid": pid, "cpu_percent": round(pct, 1), "cmd": cmd[:160]})
    rows.sort(key=lambda r: -r["cpu_percent"])
    return rows[:n]


def machine_state(max_other_cpu_per_core: float = 10.0) -> dict:
    """Other processes' CPU use (the idle verdict) and the load average, with every result.

    A busy machine makes both sides slower by different amounts (they parallelise
    differently), so ratios taken on a loaded box are not trustworthy; we record rather than
    refuse so that smoke runs still work, and flag the result.
    """
    load1, load5, load15 = os.getloadavg()
    ncpu = os.cpu_count() or 1
    stolen = _cpu_ticks()
    top = _top_cpu_processes(interval=3.0)
    stolen = _steal_percent(stolen, _cpu_ticks())
    busy_pct = sum(r["cpu_percent"] for r in top)
    # The verdict is the /proc sample of *other* processes. The load average is recorded
    # but not judged: it decays over minutes and counts this harness's own measurement
    # subprocesses, so it stays high through any multi-process benchmark.
    idle = busy_pct <= max_other_cpu_per_core * ncpu
    return {
        "loadavg": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "cpu_count": ncpu,
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "top_cpu_processes": top,
        "other_processes_cpu_percent": round(busy_pct, 1),
        "idle": bool(idle),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),  # this process's, not its workers'
        # A VM's hypervisor takes CPU time from it ("steal"): timings drift with it.
        "cpu_steal_percent": stolen,
        "cpu": _cpu_description(),
    }


def _cpu_ticks() -> list[int] | None:
    """The aggregate ``cpu`` line of /proc/stat (user nice system idle iowait irq softirq
    steal ...), None without /proc."""
    try:
        with open("/proc/stat") as fh:
            return [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def _steal_percent(before, after) -> float | None:
    if not before or not after or len(before) < 8:
        return None
    total = sum(after) - sum(before)
    return round(100.0 * (after[7] - before[7]) / total, 1) if total > 0 else None


def _cpu_description() -> dict:
    """The processor's model name and whether it has bf16 dot instructions (which decides the
    CPU's ``kernels.matmul_operands``, ``llm2vec_jax.models.kernels``)."""
    from llm2vec_jax.cpuinfo import cpu_fields
    from llm2vec_jax.models.kernels import cpu_multiplies_bf16
    return {"model": (cpu_fields() or {}).get("model name"), "machine": platform.machine(),
            "bf16_dot": cpu_multiplies_bf16()}


def warn_if_busy(state: dict) -> None:
    if not state["idle"]:
        print(
            f"WARNING: machine is not idle (loadavg {state['loadavg']}, other processes use "
            f"{state['other_processes_cpu_percent']}% CPU); timings are NOT comparable/final.",
            file=sys.stderr,
        )
        for r in state["top_cpu_processes"][:5]:
            print(f"   {r['cpu_percent']:6.1f}%  pid {r['pid']}  {r['cmd'][:100]}", file=sys.stderr)


# ---------------------------------------------------------------------------- model dirs


def smollm2_hf_dir(cache_dir: Path = CACHE_DIR) -> Path:
    """SmolLM2-135M HF checkpoint converted from the GGUF once, then reused (the package's
    own default-model cache)."""
    from llm2vec_jax.checkpoints.default_model import resolve_model
    return Path(resolve_model("smollm2", cache=cache_dir))


# ---------------------------------------------------------------------------- subprocesses


def ref_python(venv: Path | str | None = None) -> str:
    venv = Path(venv) if venv else DEFAULT_REF_VENV
    py = venv / "bin" / "python"
    if not py.is_file():
        raise FileNotFoundError(
            f"reference venv not found at {venv}; create it with bench/setup_reference_env.sh {venv}"
        )
    return str(py)


def run_json(cmd: list[str], env_extra: dict | None = None, timeout: float | None = None) -> dict:
    """Run one measurement subprocess; its last stdout line is the JSON result."""
    env = dict(os.environ)
    env.update(env_extra or {})
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO_ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    lines = [l for l in proc.stdout.strip().splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"no JSON line from {' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    out = json.loads(lines[-1])
    out["process_wall_s"] = round(wall, 2)
    return out


def run_train(config: str, sets: list[str], out_dir: Path, env: dict | None = None) -> dict:
    """``python -m llm2vec_jax.train --config CONFIG --set ... --set run.output_dir=OUT_DIR`` in
    its own process, reaped with
    ``wait4`` so its peak RSS is the child's own: ``returncode``, ``output`` (stdout and stderr),
    ``wall_s``, ``usage`` (the ``rusage``) and ``train`` (the train rows of its metrics.jsonl,
    empty when it failed). ``env``: the whole environment (default: this process's)."""
    cmd = [sys.executable, "-m", "llm2vec_jax.train", "--config", config]
    for item in [*sets, f"run.output_dir={out_dir}"]:
        cmd += ["--set", item]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    returncode = os.waitstatus_to_exitcode(status)
    train = []
    if returncode == 0:
        logged = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
        train = [m for m in logged if m.get("split") == "train"]
    return {"cmd": cmd, "returncode": returncode, "output": output, "wall_s": wall,
            "usage": usage, "train": train}


# ---------------------------------------------------------------------------- reporting


def results_path(name: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return RESULTS_DIR / f"{name}-{stamp}.json"


def portable(text: str) -> str:
    """Machine paths in a results file, as a reader elsewhere would write them."""
    text = text.replace(str(REPO_ROOT.parent / "shared"), "../shared")
    text = text.replace(str(REPO_ROOT), ".")
    return text.replace(str(Path.home()), "~")


def write_results(name: str, payload: dict) -> Path:
    path = results_path(name)
    path.write_text(portable(json.dumps(payload, indent=2)))
    return path


def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def fmt(x, nd=1):
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of per-seed scores: std None for a single value,
    both None for none."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def mean_std_text(mean: float | None, std: float | None) -> str:
    """"49.31 ± 9.00"; "24.89" without a std; "-" without a mean."""
    if mean is None:
        return "-"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def markdown_table(rows: list[dict]) -> str:
    """rows: {config, ours, ref} with ours/ref the side dicts (or an {"error": ...})."""
    head = (
        "| config | ours tok/s | ref tok/s | tok/s ours/ref | ours peak RSS MB | ref peak RSS MB "
        "| RSS ours/ref | ours median s | ref median s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        o, f = r.get("ours") or {}, r.get("ref") or {}
        ot, ft = o.get("tokens_per_s"), f.get("tokens_per_s")
        om, fm = o.get("peak_rss_mb"), f.get("peak_rss_mb")
        lines.append(
            f"| {r['config']} | {fmt(ot)} | {fmt(ft)} | {fmt(ratio(ot, ft), 2)} | {fmt(om, 0)} | "
            f"{fmt(fm, 0)} | {fmt(ratio(om, fm), 2)} | {fmt(o.get('median_s'), 3)} | {fmt(f.get('median_s'), 3)} |"
        )
        for side, d in (("ours", o), ("ref", f)):
            if d.get("error"):
                lines.append(f"|  ↳ {side} error: {d['error'][:150].replace('|', '/')} | | | | | | | | |")
    return "\n".join(lines)


def hugepage_env(enabled: bool = True) -> dict:
    """Environment additions for a measured subprocess: the transparent-huge-page tunable that
    ``python -m llm2vec_jax.<command>`` restarts itself with (llm2vec_jax/host_memory.py), so
    a worker launched as a script runs as the commands do; ``enabled=False``: glibc's
    defaults, which also stop the worker's own restart."""
    from llm2vec_jax.host_memory import HUGEPAGE_OPT_OUT, transparent_hugepage_environment
    if not enabled:
        tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")
        kept = ":".join(t for t in tunables if t and not t.startswith("glibc.malloc.hugetlb"))
        return {HUGEPAGE_OPT_OUT: "0", "GLIBC_TUNABLES": kept}
    environ = transparent_hugepage_environment()
    return {} if environ is None else {"GLIBC_TUNABLES": environ["GLIBC_TUNABLES"]}


def run_as_the_commands_do() -> None:
    """For a bench that trains in its own process: restart it once and keep compiled programs
    on disk, as ``python -m llm2vec_jax.<command>`` does, so its wall times are the commands'.
    Call it in the script's ``__main__`` block only (it reruns the process)."""
    from llm2vec_jax.compile_cache import enable_for_commands
    from llm2vec_jax.host_memory import restart_with_transparent_hugepages
    restart_with_transparent_hugepages()
    enable_for_commands()


def run_side(cmd: list[str], timeout: float | None, env_extra: dict | None = None) -> dict:
    """``run_json``, but a failing side becomes an error record instead of losing the run."""
    try:
        return run_json(cmd, env_extra=env_extra, timeout=timeout)
    except Exception as e:  # one failing side must not lose the other side's numbers
        return {"error": f"{type(e).__name__}: {e}"[-1500:]}


def combine_runs(runs: list[dict], tokens, items) -> dict:
    """Several rounds of one side/config -> median of medians, max of peaks.

    ``tokens(record)`` / ``items(record)``: real tokens and sentences per timed unit.
    """
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1] if runs else {"error": "not run"}
    out = dict(ok[-1])
    out["median_s"] = statistics.median(r["median_s"] for r in ok)
    out["tokens_per_s"] = tokens(out) / out["median_s"]
    out["sentences_per_s"] = items(out) / out["median_s"]
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
    out["rounds"] = [{k: r.get(k) for k in ("median_s", "times_s", "peak_rss_mb", "process_wall_s", "error")}
                     for r in runs]
    return out


def split_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def prepare_run(args):
    """(machine state, our HF model dir, sides, the reference's model dir or None: the same
    directory, which the reference loads as we wrote it)."""
    state = machine_state()
    warn_if_busy(state)
    hf_dir = smollm2_hf_dir(Path(args.cache_dir))
    sides = split_list(args.sides)
    ref_dir = hf_dir if "ref" in sides else None
    return state, hf_dir, sides, ref_dir
