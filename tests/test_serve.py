"""The OpenAI-compatible embeddings server: a real uvicorn server on 127.0.0.1 and a real
HTTP client (httpx); concurrent requests batched into shared encode calls and equal to
``encode()``; the queue bound (429), oversized requests (413), malformed ones (400)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from hf_oracle import tiny_model_with_tokenizer  # noqa: E402
from llm2vec_jax.encoder import LLM2Vec  # noqa: E402
from llm2vec_jax.serve import ServeConfig, create_app  # noqa: E402

TEXTS = [f"sentence number {i} about {topic}" for i, topic in
         enumerate(["cats", "the weather in Paris", "quantum computing", "a red bicycle",
                    "bread", "old maps", "jazz", "rivers"] * 2)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer_dir):
    return tiny_model_with_tokenizer(tmp_path_factory.mktemp("serve") / "model", tokenizer_dir)


@pytest.fixture(scope="module")
def encoder(model_dir):
    return LLM2Vec.from_pretrained(model_dir, max_length=64)


class GatedEncoder:
    """The real encoder, but each encode call first waits for ``gate``: a test can hold the
    worker busy and fill the queue deterministically."""

    def __init__(self, encoder):
        self.encoder, self.gate, self.calls = encoder, threading.Event(), []
        self.hidden_size = encoder.hidden_size

    def tokenize_rows(self, texts):
        return self.encoder.tokenize_rows(texts)

    def encode(self, texts, **kwargs):
        self.calls.append(list(texts))
        assert self.gate.wait(120), "the test never opened the gate"
        return self.encoder.encode(texts, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def wait_for(url, key, value):
    deadline = time.time() + 60
    while httpx.get(f"{url}/health").json()[key] != value:
        assert time.time() < deadline, (key, value, httpx.get(f"{url}/health").json())
        time.sleep(0.01)


async def post_all(url, bodies):
    async with httpx.AsyncClient(timeout=120) as client:
        return await asyncio.gather(*(client.post(f"{url}/v1/embeddings", json=b)
                                      for b in bodies))


def test_concurrent_requests_share_encode_calls_and_equal_encode(encoder):
    gated = GatedEncoder(encoder)
    with running(create_app(gated, "tiny", ServeConfig(max_wait_ms=0))) as url:
        bodies = [{"input": t, "model": "tiny"} for t in TEXTS[:12]]
        bodies += [{"input": TEXTS[12:16], "dimensions": 16},
                   {"input": TEXTS[:3], "encoding_format": "base64"}]
        result = {}
        first = threading.Thread(target=lambda: result.update(
            first=asyncio.run(post_all(url, bodies[:1]))))
        first.start()
        wait_for(url, "in_flight_texts", 1)  # the worker holds the first request
        rest = threading.Thread(target=lambda: result.update(
            rest=asyncio.run(post_all(url, bodies[1:]))))
        rest.start()
        # Every other request waits in the queue, and all of them go out in one encode call.
        wait_for(url, "queued_texts", 11 + 4 + 3)
        gated.gate.set()
        first.join(120)
        rest.join(120)
        responses = result["first"] + result["rest"]
        health = httpx.get(f"{url}/health").json()
    assert [r.status_code for r in responses] == [200] * len(bodies)
    assert health["encode_calls"] == 2 and len(gated.calls) == 2
    assert [len(c) for c in gated.calls] == [1, 11 + 4 + 3]
    full = encoder.encode(TEXTS, normalize_embeddings=True, show_progress_bar=False)
    for body, response in zip(bodies[:12], responses[:12]):
        got = response.json()
        assert got["object"] == "list" and got["model"] == "tiny"
        (item,) = got["data"]
        assert item["object"] == "embedding" and item["index"] == 0
        # Packed with other texts: float32 rounding differs in the last digits only.
        np.testing.assert_allclose(item["embedding"], full[TEXTS.index(body["input"])],
                                   rtol=0, atol=2e-6)
        tokens = len(encoder.tokenize_rows([body["input"]])[0])
        assert got["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    short = responses[12].json()["data"]
    expected = encoder.encode(TEXTS[12:16], normalize_embeddings=True, truncate_dim=16,
                              show_progress_bar=False)
    assert [d["index"] for d in short] == [0, 1, 2, 3]
    np.testing.assert_allclose([d["embedding"] for d in short], expected, rtol=0, atol=2e-6)
    packed = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4")
              for d in responses[13].json()["data"]]
    np.testing.assert_allclose(packed, full[:3], rtol=0, atol=2e-6)


def test_full_queue_is_429_and_recovers(encoder):
    gated = GatedEncoder(encoder)
    config = ServeConfig(max_wait_ms=0, max_queue_texts=3, max_inputs=2)
    with running(create_app(gated, "tiny", config)) as url:
        result = {}
        first = threading.Thread(target=lambda: result.update(
            first=asyncio.run(post_all(url, [{"input": TEXTS[0]}]))))
        first.start()
        wait_for(url, "in_flight_texts", 1)  # the worker holds the first request
        queued = threading.Thread(target=lambda: result.update(
            queued=asyncio.run(post_all(url, [{"input": TEXTS[1:3]}]))))
        queued.start()
        wait_for(url, "queued_texts", 2)
        refused = httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS[3:5]})
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert "queue is full (2 texts waiting, at most 3)" in refused.json()["error"]["message"]
        # One more text still fits.
        gated.gate.set()
        first.join(60)
        queued.join(60)
        assert result["first"][0].status_code == 200 and result["queued"][0].status_code == 200
        assert httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS[3:5]}).status_code == 200


@pytest.mark.parametrize("content, status, code", [
    (b"{not json", 400, "invalid_json"),
    (b'["a list"]', 400, "invalid_request"),
    (b'{"model": "tiny"}', 400, "missing_input"),
    (b'{"input": [1, 2, 3]}', 400, "invalid_input"),
    (b'{"input": []}', 400, "invalid_input"),
    (b'{"input": "a", "dimensions": 0}', 400, "invalid_dimensions"),
    (b'{"input": "a", "dimensions": 100000}', 400, "invalid_dimensions"),
    (b'{"input": "a", "encoding_format": "int8"}', 400, "invalid_encoding_format"),
    (b'{"input": ["a", "b", "c"]}', 413, "too_many_inputs"),
    (b'{"input": "' + b"x" * 5000 + b'"}', 413, "body_too_large"),
])
def test_bad_requests(encoder, content, status, code):
    config = ServeConfig(max_inputs=2, max_body_bytes=4096)
    with running(create_app(encoder, "tiny", config)) as url:
        response = httpx.post(f"{url}/v1/embeddings", content=content,
                              headers={"content-type": "application/json"})
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        assert httpx.get(f"{url}/health").json()["status"] == "ok"  # still serving


def test_serve_cli(model_dir):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llm2vec_jax.serve", "--model", model_dir,
                             "--port", str(port), "--max-length", "64", "--model-name", "tiny"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() < deadline, "the server did not come up"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            time.sleep(0.2)
        got = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings",
                         json={"input": ["hello", "world"], "model": "tiny"}, timeout=120).json()
        assert [d["index"] for d in got["data"]] == [0, 1] and got["model"] == "tiny"
        assert np.allclose(np.linalg.norm([d["embedding"] for d in got["data"]], axis=1), 1.0)
    finally:
        proc.terminate()
        proc.wait(30)
    bad = subprocess.run([sys.executable, "-m", "llm2vec_jax.serve", "--model", model_dir,
                          "--max-inputs", "5000"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "config error: max_inputs=5000 must not exceed max_batch_texts=256")
