"""Encoding a corpus into a directory of fixed-size embedding shards, resumably, on many hosts.

Layout of the output directory::

    job.json                the settings the shards were made with (a resume must match them)
    shard-000000.npy        embeddings [n, D] (float32 / float16 / int8), or .safetensors
    shard-000000.scales.npy int8 only: float32 [n] per-passage scales (x ≈ q * scale)
    shard-000000.ids.jsonl  the passage ids, in order, one JSON string a line
    shard-000000.json       written last: the shard is finished (count, sha256 of each file
                            and of its input passages, checked on resume)
    manifest.json           written at the end by process 0: job + count + every shard

Shard ``k`` holds passages ``[k * shard_size, (k + 1) * shard_size)`` of the input, and
process ``p`` of ``P`` (``jax.distributed``) encodes the shards with ``k % P == p``: disjoint
slices, each process on its own devices, no collective until the closing barrier. Every
process streams the whole input (host memory is one shard, not the corpus) and encodes only
its own shards. A file is written under a temporary name and renamed, and a shard counts as
finished only once its ``.json`` exists; a finished shard is never written again, so after a
kill the same command skips what is done and redoes only the shard that was cut off. A shard
is one ``LLM2Vec.encode`` call of its own passages, so its bytes do not depend on which run or
process made it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import sys
from typing import Iterator

import numpy as np

from .checkpoints.safetensors_io import SafetensorsFile, write_safetensors
from .host_memory import map_large_allocations_apart

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "tsv", "text")
DTYPES = ("float32", "float16", "int8")
FILE_TYPES = ("npy", "safetensors")
JOB, MANIFEST = "job.json", "manifest.json"


class CorpusError(ValueError):
    """A corpus file, output directory or setting that cannot be used; the message says why."""


# -- input ---------------------------------------------------------------------------------

def input_format(path: str, fmt: str = "auto") -> str:
    if fmt != "auto":
        if fmt not in FORMATS:
            raise CorpusError(f"input format {fmt!r}: expected one of {FORMATS} or auto")
        return fmt
    name = path.lower()
    return "jsonl" if name.endswith((".jsonl", ".json")) else "tsv" if name.endswith(".tsv") else "text"


def read_passages(path: str, fmt: str = "auto") -> Iterator[tuple[str, str]]:
    """(id, text) pairs, streamed. jsonl: objects with ``id`` and ``text`` and an optional
    ``title`` (put before the text, as MTEB's retrieval corpora are joined); tsv:
    ``id<TAB>text[<TAB>title]``, a first row ``id<TAB>text...`` is a header; text: one
    passage a line, its id the line number from 0."""
    fmt = input_format(path, fmt)
    if not os.path.exists(path):
        raise FileNotFoundError(f"corpus file {path!r} does not exist")
    with open(path, encoding="utf-8", newline="") as f:
        if fmt == "text":
            for i, line in enumerate(f):
                yield str(i), line.rstrip("\r\n")
            return
        if fmt == "tsv":
            rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            for i, row in enumerate(rows):
                if i == 0 and row[:2] == ["id", "text"]:
                    continue
                if len(row) not in (2, 3):
                    raise CorpusError(f"{path}:{rows.line_num}: expected id<TAB>text[<TAB>title], "
                                      f"got {len(row)} column(s)")
                yield row[0], _join(row[2] if len(row) == 3 else "", row[1])
            return
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                pid, text = record["id"], record["text"]
            except (ValueError, KeyError, TypeError) as e:
                raise CorpusError(f"{path}:{i}: expected a JSON object with 'id' and 'text' "
                                  f"(and optionally 'title'): {type(e).__name__}: {e}") from None
            yield str(pid), _join(record.get("title") or "", str(text))


def _join(title: str, text: str) -> str:
    return f"{title} {text}".strip() if title else text


def count_passages(path: str, fmt: str = "auto") -> int | None:
    """How many passages a regular file holds (a fast pass over its lines), for the progress
    bar's ETA; None for a pipe or anything that cannot be read twice."""
    if not os.path.isfile(path):
        return None
    return sum(1 for _ in read_passages(path, fmt))


# -- output --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ShardFormat:
    dtype: str = "float32"       # float32 | float16 | int8 (per-passage symmetric scale)
    file_type: str = "npy"       # npy | safetensors
    shard_size: int = 10000      # passages per shard

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise CorpusError(f"dtype {self.dtype!r}: expected one of {DTYPES}")
        if self.file_type not in FILE_TYPES:
            raise CorpusError(f"shard format {self.file_type!r}: expected one of {FILE_TYPES}")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise CorpusError(f"shard size must be a positive int, got {self.shard_size!r}")


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def quantize(x: np.ndarray, dtype: str) -> dict[str, np.ndarray]:
    """The arrays a shard stores for float32 embeddings ``x`` [n, D]."""
    if dtype != "int8":
        return {"embeddings": x.astype(dtype, copy=False)}
    scale = np.abs(x).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    return {"embeddings": q, "scales": scale}


def dequantize(arrays: dict[str, np.ndarray]) -> np.ndarray:
    emb = arrays["embeddings"]
    if emb.dtype == np.int8:
        return emb.astype(np.float32) * arrays["scales"][:, None]
    return emb.astype(np.float32)


def _write_atomic(path: str, data: bytes | np.ndarray) -> None:
    """Write ``data`` (an array as .npy, straight to the file: no in-memory copy of a shard)
    under a temporary name, then rename it into place."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        if isinstance(data, np.ndarray):
            np.save(f, data, allow_pickle=False)
        else:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def passages_digest(ids: list[str], texts: list[str]) -> str:
    """sha256 of a shard's input passages: a resume checks that the input is unchanged."""
    return hashlib.sha256(json.dumps([ids, texts], ensure_ascii=False).encode()).hexdigest()


def write_shard(out_dir: str, index: int, ids: list[str], embeddings: np.ndarray,
                fmt: ShardFormat, input_digest: str) -> dict:
    """Write shard ``index`` (files first, its ``.json`` record last) and return the record."""
    name = shard_name(index)
    arrays = quantize(embeddings, fmt.dtype)
    files = {}
    if fmt.file_type == "npy":
        for key, a in arrays.items():
            fname = f"{name}.npy" if key == "embeddings" else f"{name}.{key}.npy"
            _write_atomic(os.path.join(out_dir, fname), a)
            files[key] = fname
    else:
        fname = f"{name}.safetensors"
        path = os.path.join(out_dir, fname)
        write_safetensors(f"{path}.tmp", [(k, a.dtype, a.shape) for k, a in arrays.items()],
                          arrays.__getitem__, metadata={"format": "np"})
        os.replace(f"{path}.tmp", path)
        files["embeddings"] = fname
    ids_name = f"{name}.ids.jsonl"
    _write_atomic(os.path.join(out_dir, ids_name),
                  "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in ids).encode())
    files["ids"] = ids_name
    record = {"index": index, "count": len(ids), "input_sha256": input_digest,
              "files": {k: {"name": v, "sha256": _sha256(os.path.join(out_dir, v))}
                        for k, v in files.items()}}
    _write_atomic(os.path.join(out_dir, f"{name}.json"), _json_bytes(record))
    return record


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def shard_record(out_dir: str, index: int) -> dict | None:
    """The finished shard's record, or None if the shard is not finished."""
    try:
        with open(os.path.join(out_dir, f"{shard_name(index)}.json"), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def read_shard(out_dir: str, record: dict) -> tuple[list[str], np.ndarray]:
    """(ids, float32 embeddings [n, D]) of a finished shard."""
    files = record["files"]
    path = os.path.join(out_dir, files["embeddings"]["name"])
    if path.endswith(".safetensors"):
        f = SafetensorsFile(path)
        try:
            arrays = {k: np.array(f.read(k)) for k in f.keys()}
        finally:
            f.close()
    else:
        arrays = {k: np.load(os.path.join(out_dir, files[k]["name"]))
                  for k in ("embeddings", "scales") if k in files}
    with open(os.path.join(out_dir, files["ids"]["name"]), encoding="utf-8") as f:
        ids = [json.loads(line) for line in f]
    return ids, dequantize(arrays)


def read_manifest(out_dir: str) -> dict:
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(path):
        raise CorpusError(f"{out_dir!r} has no {MANIFEST}: not a finished output of "
                          f"python -m llm2vec_jax.encode_corpus (rerun it to finish)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def iter_shards(out_dir: str) -> Iterator[tuple[list[str], np.ndarray]]:
    """Every shard of a finished corpus directory in order, one at a time."""
    for record in read_manifest(out_dir)["shards"]:
        yield read_shard(out_dir, record)


# -- the job --------------------------------------------------------------------------------

def _check_job(out_dir: str, job: dict) -> None:
    """Write ``job.json``, or check that the one there matches (a resume)."""
    path = os.path.join(out_dir, JOB)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        changed = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
        if changed:
            k = changed[0]
            raise CorpusError(
                f"{out_dir!r} holds shards of another job ({k}: {old.get(k)!r} there, "
                f"{job.get(k)!r} now); resume with the same arguments or use a new --output")
        return
    _write_atomic(path, _json_bytes(job))


def encode_corpus(encoder, input_path: str, out_dir: str, fmt: ShardFormat, *,
                  input_fmt: str = "auto", instruction: str = "", batch_size: int = 32,
                  job: dict | None = None, process_index: int = 0, process_count: int = 1,
                  progress: bool = True, barrier=None) -> dict | None:
    """Encode this process's shards of ``input_path`` into ``out_dir`` (skipping finished
    ones); process 0 then writes and returns the manifest (others return None). ``job``:
    extra settings recorded in job.json and the manifest (model, adapter, ...); ``barrier``:
    called with a name when every process must have finished its shards. Sets glibc's mmap
    threshold for the whole process (``host_memory.map_large_allocations_apart``)."""
    os.makedirs(out_dir, exist_ok=True)
    map_large_allocations_apart()  # else the peak RSS grows with the corpus, shard by shard
    job = {**(job or {}), "input": os.path.abspath(input_path),
           "input_format": input_format(input_path, input_fmt), "instruction": instruction,
           "pooling_mode": encoder.pooling_mode, "max_length": encoder.max_length,
           "bidirectional": encoder.bidirectional, "dim": encoder.hidden_size,
           **dataclasses.asdict(fmt)}
    if process_index == 0:
        _check_job(out_dir, job)
    if barrier is not None:
        barrier("encode_corpus:job")
    _check_job(out_dir, job)  # every process: the job on disk is this one

    total = count_passages(input_path, input_fmt) if progress and process_index == 0 else None
    mine = None if total is None else sum(
        min(fmt.shard_size, total - k * fmt.shard_size)
        for k in range(process_index, -(-total // fmt.shard_size), process_count))
    from tqdm.auto import tqdm
    bar = tqdm(total=mine, unit="passage", file=sys.stderr, dynamic_ncols=True,
               disable=not progress or process_index != 0,
               desc=f"Encoding (process 0 of {process_count})" if process_count > 1 else "Encoding")
    shards, compiled = 0, False
    try:
        for index, ids, texts in _chunks(read_passages(input_path, input_fmt), fmt.shard_size):
            shards = index + 1
            if index % process_count != process_index:
                continue
            digest = passages_digest(ids, texts)
            record = shard_record(out_dir, index)
            if record is not None:  # finished: never written again
                if record["input_sha256"] != digest:
                    raise CorpusError(
                        f"the passages of {shard_name(index)} in {input_path!r} changed since "
                        f"it was written to {out_dir!r}; encode the new input into a new "
                        f"--output")
                bar.update(len(ids))
                continue
            if not compiled:
                encoder.compile_fixed_shapes(batch_size)
                compiled = True
            inputs = [[instruction, t] for t in texts] if instruction else texts
            # fixed_shapes: the shards' final batches would otherwise add compiled shapes, and
            # host memory with them, as the corpus grows. No name holds the embeddings: the
            # next shard's encode does not run beside the last shard's array.
            write_shard(out_dir, index, ids,
                        encoder.encode(inputs, batch_size=batch_size, show_progress_bar=False,
                                       fixed_shapes=True), fmt, digest)
            log.info("process %d wrote %s", process_index, shard_name(index))
            bar.update(len(ids))
    finally:
        bar.close()
    if barrier is not None:
        barrier("encode_corpus:shards")
    if process_index != 0:
        return None
    return _write_manifest(out_dir, job, shards)


def _chunks(passages, size: int) -> Iterator[tuple[int, list[str], list[str]]]:
    ids: list[str] = []
    texts: list[str] = []
    index = 0
    for pid, text in passages:
        ids.append(pid)
        texts.append(text)
        if len(ids) == size:
            yield index, ids, texts
            ids, texts, index = [], [], index + 1
    if ids:
        yield index, ids, texts


def _write_manifest(out_dir: str, job: dict, shards: int) -> dict:
    records = [shard_record(out_dir, k) for k in range(shards)]
    missing = [shard_name(k) for k, r in enumerate(records) if r is None]
    if missing:
        raise CorpusError(f"{len(missing)} shard(s) are not finished ({', '.join(missing[:4])}"
                          f"{', ...' if len(missing) > 4 else ''}): did every process run? "
                          f"Rerun the same command to finish them")
    manifest = {**job, "count": sum(r["count"] for r in records), "shards": records}
    _write_atomic(os.path.join(out_dir, MANIFEST), _json_bytes(manifest))
    return manifest
