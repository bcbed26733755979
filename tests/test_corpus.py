"""The corpus encoder: streaming readers, shard files and manifest, resume after a real SIGKILL
(byte-identical to an uninterrupted run), two jax.distributed processes, one-line errors."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from hf_oracle import tiny_model_with_tokenizer
from llm2vec_jax import corpus
from llm2vec_jax.corpus import CorpusError, ShardFormat

SENTENCES = [f"Sentence number {i} is about {'cats dogs birds fish'.split()[i % 4]}"
             + " and more words" * (i % 5) for i in range(45)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer_dir):
    return tiny_model_with_tokenizer(tmp_path_factory.mktemp("tiny"), tokenizer_dir)


@pytest.fixture(scope="module")
def encoder(tiny):
    from llm2vec_jax.encoder import LLM2Vec
    return LLM2Vec.from_pretrained(tiny)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_readers(tmp_path):
    jsonl = write(tmp_path / "c.jsonl", '{"id": 7, "text": "body", "title": "Head"}\n\n'
                                        '{"id": "b", "text": "tab\\there"}\n')
    assert list(corpus.read_passages(jsonl)) == [("7", "Head body"), ("b", "tab\there")]
    tsv = write(tmp_path / "c.tsv", 'id\ttext\ttitle\nx1\tsome "quoted" text\tT\nx2\tplain\n')
    assert list(corpus.read_passages(tsv)) == [("x1", 'T some "quoted" text'), ("x2", "plain")]
    txt = write(tmp_path / "c.txt", "first\r\n\nthird\n")
    assert list(corpus.read_passages(txt)) == [("0", "first"), ("1", ""), ("2", "third")]
    assert corpus.count_passages(tsv) == 2 and corpus.count_passages(txt) == 3
    bad = write(tmp_path / "bad.jsonl", '{"id": 1, "text": "ok"}\n{"id": 2}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: expected a JSON object with 'id'"):
        list(corpus.read_passages(bad))
    with pytest.raises(CorpusError, match=r"c.tsv:1: expected id<TAB>text"):
        list(corpus.read_passages(write(tmp_path / "c.tsv", "only-one-column\n")))


def test_int8_round_trip_within_half_a_step():
    x = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    x[3] = 0.0
    arrays = corpus.quantize(x, "int8")
    step = np.abs(x).max(axis=1) / 127
    assert arrays["embeddings"].dtype == np.int8 and np.abs(arrays["embeddings"]).max() == 127
    err = np.abs(corpus.dequantize(arrays) - x)
    assert np.all(err <= step[:, None] / 2 + 1e-7) and np.all(corpus.dequantize(arrays)[3] == 0)


@pytest.mark.parametrize("dtype,file_type", [("float32", "npy"), ("float16", "safetensors"),
                                             ("int8", "npy"), ("int8", "safetensors")])
def test_shards_hold_the_encoders_embeddings(tmp_path, encoder, dtype, file_type):
    src = write(tmp_path / "c.txt", "\n".join(SENTENCES) + "\n")
    out = str(tmp_path / "out")
    manifest = corpus.encode_corpus(encoder, src, out, ShardFormat(dtype, file_type, 10),
                                    instruction="Represent it", progress=False)
    assert manifest["count"] == 45 and [r["count"] for r in manifest["shards"]] == [10] * 4 + [5]
    assert (manifest["dtype"], manifest["dim"], manifest["pooling_mode"]) == (dtype, 64, "mean")
    for record in manifest["shards"]:  # checksums of what is on disk
        for f in record["files"].values():
            data = open(os.path.join(out, f["name"]), "rb").read()
            assert hashlib.sha256(data).hexdigest() == f["sha256"]
    ids, emb = zip(*corpus.iter_shards(out))
    assert sum(ids, []) == [str(i) for i in range(45)]
    emb = np.concatenate(emb)
    want = encoder.encode([["Represent it", s] for s in SENTENCES], show_progress_bar=False)
    # float32: shards are packed apart from the rest of the corpus (rounding only)
    tol = {"float32": 1e-5, "float16": 2e-3 * np.abs(want).max(),
           "int8": np.abs(want).max() / 127}[dtype]
    np.testing.assert_allclose(emb, want, rtol=0, atol=tol)
    with pytest.raises(CorpusError, match="holds shards of another job .shard_size: 10 there, 9"):
        corpus.encode_corpus(encoder, src, out, ShardFormat(dtype, file_type, 9), progress=False,
                             instruction="Represent it")
    if dtype == "float32":  # a finished shard whose input changed is refused, not skipped
        write(tmp_path / "c.txt", "\n".join(SENTENCES[:12] + ["edited"] + SENTENCES[13:]))
        with pytest.raises(CorpusError, match="passages of shard-000001 in .* changed"):
            corpus.encode_corpus(encoder, src, out, ShardFormat(dtype, file_type, 10),
                                 instruction="Represent it", progress=False)


def test_shapes_compile_once_before_the_first_shard_left(tmp_path, encoder, monkeypatch):
    calls, encode = [], encoder.encode
    monkeypatch.setattr(encoder, "compile_fixed_shapes", lambda batch_size: calls.append(batch_size))
    monkeypatch.setattr(encoder, "encode", lambda *a, **k: calls.append("encode") or encode(*a, **k))
    src, out = write(tmp_path / "c.txt", "\n".join(SENTENCES) + "\n"), str(tmp_path / "out")
    job = dict(fmt=ShardFormat("float32", "npy", 20), batch_size=4, progress=False)
    corpus.encode_corpus(encoder, src, out, **job)
    assert calls == [4, "encode", "encode", "encode"]
    calls.clear()
    corpus.encode_corpus(encoder, src, out, **job)  # every shard finished: nothing to compile
    assert calls == []


def cli(*args):
    return [sys.executable, "-m", "llm2vec_jax.encode_corpus", *args]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLM2VEC_JAX_", "XLA_FLAGS", "JAX_PLATFORMS"))}
    return {**env, **extra}


def files_of(directory):
    return {n: open(os.path.join(directory, n), "rb").read() for n in sorted(os.listdir(directory))}


def test_resume_after_sigkill_is_byte_identical(tmp_path, tiny):
    lines = "\n".join(SENTENCES) + "\n"
    src = tmp_path / "corpus.txt"
    args = ["--model", tiny, "--input", str(src), "--shard-size", "8", "--quiet",
            "--output"]
    # First run reads from a pipe that the test fills slowly: it is killed while blocked
    # waiting for shard 2's input, after shards 0 and 1 are finished.
    os.mkfifo(src)
    proc = subprocess.Popen(cli(*args, str(tmp_path / "resumed")), env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with open(src, "w", encoding="utf-8") as fifo:
        fifo.write("\n".join(SENTENCES[:20]) + "\n")
        fifo.flush()
        deadline = time.time() + 300
        while not (tmp_path / "resumed" / "shard-000001.json").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = {n: os.stat(tmp_path / "resumed" / n) for n in os.listdir(tmp_path / "resumed")
            if n.startswith(("shard-000000", "shard-000001"))}
    assert len(done) == 6 and not (tmp_path / "resumed" / "manifest.json").exists()
    # As a write cut off by the kill would leave it:
    (tmp_path / "resumed" / "shard-000002.npy.tmp").write_bytes(b"partial")

    os.remove(src)
    src.write_text(lines, encoding="utf-8")
    resumed = subprocess.run(cli(*args, str(tmp_path / "resumed"), "--debug"), env=clean_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    written = [line.split()[-1] for line in resumed.stderr.splitlines() if " wrote " in line]
    assert written == [f"shard-{k:06d}" for k in (2, 3, 4, 5)]  # 0 and 1 skipped
    for name, st in done.items():  # never rewritten
        now = os.stat(tmp_path / "resumed" / name)
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)

    whole = subprocess.run(cli(*args, str(tmp_path / "whole")), env=clean_env(),
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]
    got, want = files_of(tmp_path / "resumed"), files_of(tmp_path / "whole")
    assert sorted(got) == sorted(want) and len(got) == 2 + 6 * 3
    for name in want:
        assert got[name] == want[name], name
    assert json.loads(whole.stdout)["count"] == 45


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_split_the_corpus(tmp_path, tiny):
    src = write(tmp_path / "corpus.jsonl", "".join(
        json.dumps({"id": f"d{i}", "text": s}) + "\n" for i, s in enumerate(SENTENCES)))

    def args(out):
        return cli("--model", tiny, "--input", src, "--shard-size", "6", "--dtype", "float16",
                   "--format", "safetensors", "--debug", "--quiet", "--output", str(out))

    one = subprocess.run(args(tmp_path / "one"), env=clean_env(), capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    port = free_port()
    procs = [subprocess.Popen(args(tmp_path / "two"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=clean_env(LLM2VEC_JAX_COORDINATOR=f"127.0.0.1:{port}",
                                            LLM2VEC_JAX_NUM_PROCESSES="2",
                                            LLM2VEC_JAX_PROCESS_ID=str(i)))
             for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    for i, (_, err) in enumerate(outputs):  # disjoint slices: shard k on process k % 2
        wrote = [int(line.split("-")[-1]) for line in err.splitlines() if " wrote " in line]
        assert wrote == list(range(i, 8, 2)), (i, wrote)
    # Only process 0 reports (and writes the manifest); gloo prints its own lines there.
    reports = [[json.loads(line) for line in out.splitlines() if line.startswith("{")]
               for out, _ in outputs]
    assert reports[1] == [] and reports[0][0]["count"] == 45 and reports[0][0]["shards"] == 8
    # Each process encodes a shard exactly as one process does: the same bytes.
    assert files_of(tmp_path / "one") == files_of(tmp_path / "two")


def test_cli_errors_are_one_line(tmp_path, tiny):
    bad = write(tmp_path / "c.jsonl", '{"text": "no id"}\n')
    result = subprocess.run(cli("--model", tiny, "--input", bad, "--output",
                                str(tmp_path / "o")), env=clean_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"data error: {bad}:1: expected a JSON object with 'id' and 'text' (and optionally "
        "'title'): KeyError: 'id'"]
    ok = write(tmp_path / "c.txt", "one\n")
    result = subprocess.run(cli("--model", tiny, "--input", ok, "--output", str(tmp_path / "o"),
                                "--mesh", "tensor=3"), env=clean_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("mesh error: ") and len(
        result.stderr.strip().splitlines()) == 1, result.stderr
