"""Embeddings server under load: requests/s and p50/p99 latency with 1, 8 and 32 concurrent
clients, each sending one sentence per request, back to back.

The server (``python -m llm2vec_jax.serve``, SmolLM2-135M, max_length 128) runs in its own
process on 127.0.0.1; the clients are one asyncio process (httpx). Before each concurrency
level, untimed rounds of ``--requests`` requests run until one adds no compiled shape to the
server (its /health ``compilations``; at most ``--warmup`` rounds), so the timed round
measures serving, not XLA compiling. Sentences: the 512 of tests/fixtures/smollm2, in order.

    python bench/serve.py                          # writes bench/results/serve-<date>.json
    python bench/serve.py --requests 64 --concurrency 1,8   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compilations(port: int) -> int:
    import httpx
    return httpx.get(f"http://127.0.0.1:{port}/health").json()["compilations"]


def start_server(model: str, port: int, max_length: int, max_wait_ms: float):
    proc = subprocess.Popen([sys.executable, "-m", "llm2vec_jax.serve", "--model", model,
                             "--port", str(port), "--max-length", str(max_length),
                             "--max-wait-ms", str(max_wait_ms)],
                            cwd=common.REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not start within 600 s")


async def load(url: str, sentences: list[str], concurrency: int, requests: int) -> dict:
    """``requests`` requests from ``concurrency`` clients; latency of each, wall time."""
    import httpx

    latencies: list[float] = []
    next_index = iter(range(requests))

    async def client(http):
        for i in next_index:
            start = time.perf_counter()
            r = await http.post(url, json={"input": sentences[i % len(sentences)],
                                           "model": "smollm2"})
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    latencies.sort()
    return {"concurrency": concurrency, "requests": requests,
            "requests_per_s": requests / wall,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M (cached HF dir)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=256, help="timed requests per level")
    parser.add_argument("--warmup", type=int, default=8, help="most untimed rounds per level")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args()
    state = common.machine_state()
    common.warn_if_busy(state)
    model = args.model or str(common.smollm2_hf_dir())
    sentences = common.SENTENCES_512.read_text(encoding="utf-8").splitlines()
    port = free_port()
    server = start_server(model, port, args.max_length, args.max_wait_ms)
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    rows = []
    try:
        for c in common.split_list(args.concurrency):
            c = int(c)
            for _ in range(args.warmup):
                before = compilations(port)
                asyncio.run(load(url, sentences, c, args.requests))
                if compilations(port) == before:
                    break
            row = asyncio.run(load(url, sentences, c, args.requests))
            row["compilations"] = compilations(port)
            print(f"concurrency {c:3d}: {row['requests_per_s']:7.1f} req/s, "
                  f"p50 {row['p50_ms']:7.1f} ms, p99 {row['p99_ms']:7.1f} ms", flush=True)
            rows.append(row)
    finally:
        server.terminate()
        server.wait(60)
    path = common.write_results("serve", {"machine": state, "args": vars(args), "rows": rows})
    print("| clients | requests/s | p50 ms | p99 ms |\n|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} |")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
