"""An OpenAI-compatible embeddings server over ``LLM2Vec`` (the CLI: ``__main__.py``).

``POST /v1/embeddings`` takes ``{"input": str | [str, ...], "model": str, "dimensions": int,
"encoding_format": "float" | "base64"}`` and answers as OpenAI does: ``{"object": "list",
"data": [{"object": "embedding", "index": i, "embedding": [...]}], "model", "usage"}``.
Embeddings are L2-normalised, and ``dimensions`` keeps their first ``dimensions`` values
before normalising (Matryoshka): the same numbers as ``encode(texts,
normalize_embeddings=True, truncate_dim=dimensions)``. ``base64`` is the float32
little-endian bytes. ``GET /health`` says the model and the queue.

Dynamic batching: requests wait in one queue; a single worker takes every queued request
(up to ``max_batch_texts`` texts, after waiting ``max_wait_ms`` for more to arrive) and
embeds their texts in one ``encode`` call, where the packed encoder fills rows with texts
of all of them; the encode runs in a worker thread so the event loop keeps accepting.
Errors, in OpenAI's ``{"error": {"message", "type", "code"}}`` shape: 400 for malformed
JSON or fields, 413 for a body over ``max_body_bytes`` or more than ``max_inputs`` inputs,
429 when the queue already holds ``max_queue_texts`` texts (retry later).

Needs ``starlette`` and ``uvicorn`` (``pip install starlette uvicorn``), imported here only.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import dataclasses
import json

import numpy as np

from .. import embeddings as emb_ops


class ServeConfigError(ValueError):
    """A server setting that cannot work: one line in the CLI (llm2vec_jax/cli_errors.py)."""


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    max_batch_texts: int = 256      # texts embedded by one encode call at most
    max_wait_ms: float = 5.0        # after the first request, wait this long for more
    max_queue_texts: int = 1024     # texts waiting (not yet encoding) before 429
    max_inputs: int = 256           # inputs in one request before 413
    max_body_bytes: int = 4 << 20   # request body before 413
    batch_size: int = 32            # encoder rows per forward pass

    def __post_init__(self):
        for name in ("max_batch_texts", "max_queue_texts", "max_inputs", "max_body_bytes",
                     "batch_size"):
            if getattr(self, name) < 1:
                raise ServeConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ServeConfigError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_inputs > min(self.max_batch_texts, self.max_queue_texts):
            raise ServeConfigError(f"max_inputs={self.max_inputs} must not exceed max_batch_texts="
                             f"{self.max_batch_texts} or max_queue_texts={self.max_queue_texts}"
                             ": such a request could never be served")


class RequestError(Exception):
    """A request answered with ``status`` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status, self.code = status, code


@dataclasses.dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future


class Batcher:
    """One queue, one worker: concurrent requests' texts share ``encode`` calls."""

    def __init__(self, encoder, config: ServeConfig):
        self.encoder = encoder
        self.config = config
        self.jobs: collections.deque[_Job] = collections.deque()
        self.queued_texts = 0
        self.in_flight_texts = 0
        self.encode_calls = 0
        self._wake = asyncio.Event()
        # One thread: the encoder runs one batch at a time (its compiled-function cache is
        # not meant for concurrent use), and XLA already uses every core for that batch.
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="encode")

    async def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Raw float32 [N, D] embeddings of ``texts`` and their token count."""
        if self.queued_texts + len(texts) > self.config.max_queue_texts:
            raise RequestError(429, f"the queue is full ({self.queued_texts} texts waiting, at "
                                    f"most {self.config.max_queue_texts}); retry later",
                               "queue_full")
        job = _Job(texts, asyncio.get_running_loop().create_future())
        self.jobs.append(job)
        self.queued_texts += len(texts)
        self._wake.set()
        return await job.future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.jobs:
                continue
            if self.queued_texts < self.config.max_batch_texts and self.config.max_wait_ms:
                await asyncio.sleep(self.config.max_wait_ms / 1000)
            batch: list[_Job] = []
            count = 0
            while self.jobs and count + len(self.jobs[0].texts) <= self.config.max_batch_texts:
                batch.append(self.jobs.popleft())
                count += len(batch[-1].texts)
            self.queued_texts -= count
            self.in_flight_texts = count
            texts = [t for job in batch for t in job.texts]
            try:
                emb, tokens = await loop.run_in_executor(self._pool, self._encode, texts)
            except Exception as e:  # noqa: BLE001 - every waiting request gets the failure
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)
            else:
                start = 0
                for job in batch:
                    end = start + len(job.texts)
                    if not job.future.done():  # a client that went away has nothing to get
                        job.future.set_result((emb[start:end], int(tokens[start:end].sum())))
                    start = end
            finally:
                self.in_flight_texts = 0
            if self.jobs:
                self._wake.set()

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        self.encode_calls += 1
        tokens = np.array([len(r) for r in self.encoder.tokenize_rows(texts)], np.int64)
        emb, _ = self.encoder.encode(texts, batch_size=self.config.batch_size,
                                     show_progress_bar=False, return_truncated=True)
        return emb, tokens

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def parse_request(body: bytes, config: ServeConfig, width: int) -> tuple[list[str], int | None, str]:
    """(texts, dimensions, encoding_format) of an embeddings request body."""
    try:
        request = json.loads(body)
    except ValueError as e:
        raise RequestError(400, f"the body is not valid JSON: {e}", "invalid_json") from None
    if not isinstance(request, dict):
        raise RequestError(400, "the body must be a JSON object", "invalid_request")
    if "input" not in request:
        raise RequestError(400, "'input' is required: a string or a list of strings",
                           "missing_input")
    texts = request["input"]
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise RequestError(400, "'input' must be a string or a non-empty list of strings "
                                "(token arrays are not supported)", "invalid_input")
    if len(texts) > config.max_inputs:
        raise RequestError(413, f"{len(texts)} inputs in one request; at most "
                                f"{config.max_inputs}", "too_many_inputs")
    if "model" in request and not isinstance(request["model"], str):
        raise RequestError(400, "'model' must be a string", "invalid_model")
    dims = request.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int)
                             or not 1 <= dims <= width):
        raise RequestError(400, f"'dimensions' must be an integer in [1, {width}], got "
                                f"{dims!r}", "invalid_dimensions")
    fmt = request.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise RequestError(400, f"'encoding_format' must be 'float' or 'base64', got {fmt!r}",
                           "invalid_encoding_format")
    return texts, dims, fmt


def response_body(emb: np.ndarray, dims: int | None, fmt: str, model: str,
                  tokens: int) -> dict:
    emb = emb_ops.normalize(emb_ops.truncate(emb, dims)).astype("<f4")
    data = [{"object": "embedding", "index": i,
             "embedding": (base64.b64encode(row.tobytes()).decode("ascii") if fmt == "base64"
                           else row.tolist())}
            for i, row in enumerate(emb)]
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def create_app(encoder, model_name: str, config: ServeConfig = ServeConfig()):
    """The Starlette app serving ``encoder`` (its batcher starts with the app's lifespan)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    state: dict = {}

    def error(e: RequestError) -> JSONResponse:
        kind = "rate_limit_error" if e.status == 429 else "invalid_request_error"
        return JSONResponse({"error": {"message": str(e), "type": kind, "code": e.code}},
                            status_code=e.status)

    async def read_body(request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise RequestError(413, f"the body has {declared} bytes; at most "
                                    f"{config.max_body_bytes}", "body_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_body_bytes:
                raise RequestError(413, f"the body is over {config.max_body_bytes} bytes",
                                   "body_too_large")
        return bytes(body)

    async def embeddings(request):
        try:
            texts, dims, fmt = parse_request(await read_body(request), config,
                                             encoder.hidden_size)
            emb, tokens = await state["batcher"].embed(texts)
        except RequestError as e:
            return error(e)
        return JSONResponse(response_body(emb, dims, fmt, model_name, tokens))

    async def health(request):
        batcher = state["batcher"]
        return JSONResponse({"status": "ok", "model": model_name,
                             "embedding_dim": encoder.hidden_size,
                             "queued_texts": batcher.queued_texts,
                             "in_flight_texts": batcher.in_flight_texts,
                             "encode_calls": batcher.encode_calls,
                             "compilations": getattr(encoder, "num_compilations", None)})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher = state["batcher"] = Batcher(encoder, config)
        worker = asyncio.create_task(batcher.run())
        try:
            yield
        finally:
            worker.cancel()
            batcher.close()

    return Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"]),
                             Route("/health", health, methods=["GET"])], lifespan=lifespan)
