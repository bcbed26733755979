"""STS reader and metrics."""

import json

import numpy as np
import pytest

from llm2vec_jax.data.samples import sample_path
from llm2vec_jax.data.sources import DatasetUnavailableError
from llm2vec_jax.evaluation import (
    STSFormatError,
    cosine_similarity,
    load_sts,
    pearson,
    rankdata_average,
    read_sts_tsv,
    spearman,
    sts_scores,
)

HEADER = "source\tscore\tsentence1\tsentence2\n"


def test_read_bundled_stsb_dev_sample():
    d = load_sts("sample:stsb-dev")
    assert len(d) == 300
    assert d.scores.dtype == np.float64
    assert d.sources[0] == "main-captions/MSRvid/2012test/0000"
    assert d.scores[0] == 5.0 and d.scores[1] == 2.615
    assert d.sentences1[0] == "A man with a hard hat is dancing."
    assert d.sentences2[0] == "A man wearing a hard hat is dancing."
    assert d.scores.min() >= 0 and d.scores.max() <= 5
    assert any('"' in s for s in d.sentences1 + d.sentences2)  # no quoting: kept verbatim
    # Every 5th pair of the 1,500: all three genres, in the dev split's proportions.
    genres = [s.split("/")[0] for s in d.sources]
    assert {g: genres.count(g) for g in set(genres)} == {
        "main-captions": 125, "main-news": 100, "main-forums": 75}
    same = read_sts_tsv(sample_path("sample:stsb-dev"))
    assert same.sentences1 == d.sentences1 and (same.scores == d.scores).all()


def test_load_sts_from_a_datasets_dataset(tmp_path):
    """hf: goes through `datasets.load_dataset`; a local dataset folder stands in for the hub
    (same loader, no network): columns picked by name, any score scale."""
    folder = tmp_path / "my-sts"
    folder.mkdir()
    rows = [{"s1": "a cat", "s2": "a dog", "gold": 0.25, "extra": 1},
            {"s1": "red", "s2": "crimson", "gold": 0.9, "extra": 2}]
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = load_sts(f"hf:{folder}", split="validation", columns=("s1", "s2", "gold"))
    assert d.sentences1 == ("a cat", "red") and d.sentences2 == ("a dog", "crimson")
    np.testing.assert_array_equal(d.scores, [0.25, 0.9])
    assert d.sources[1] == f"{folder}/validation/1"
    with pytest.raises(STSFormatError, match=r"no column\(s\) \['score'\]"):
        load_sts(f"hf:{folder}", split="validation", columns=("s1", "s2", "score"))


def test_hub_dataset_offline_is_one_clear_line():
    # conftest sets HF_HUB_OFFLINE: nothing is cached, nothing can be downloaded.
    with pytest.raises(DatasetUnavailableError) as info:
        load_sts("hf:mteb/stsbenchmark-sts", split="validation")
    message = str(info.value)
    assert "\n" not in message
    assert "hf:mteb/stsbenchmark-sts is not in the datasets cache" in message
    assert "datasets.load_dataset('mteb/stsbenchmark-sts', split='validation')" in message
    assert "HF_DATASETS_CACHE" in message and "sample:stsb-dev" in message


def _write(tmp_path, text, name="x.tsv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_read_small_file_with_quotes_and_crlf(tmp_path):
    p = _write(tmp_path, HEADER + 'a\t0\t"Hi," he said\tb\r\nc\t5.0\td\te\n')
    d = read_sts_tsv(p)
    assert d.sentences1 == ('"Hi," he said', "d")
    assert d.sentences2 == ("b", "e")
    np.testing.assert_array_equal(d.scores, [0.0, 5.0])


@pytest.mark.parametrize("body, line, what", [
    ("src\tscore\ts1\ts2\n", 1, "header"),
    (HEADER + "a\t1.0\tx\n", 2, "fields"),
    (HEADER + "a\t1.0\tx\ty\na\t1.0\tx\ty\tz\n", 3, "fields"),
    (HEADER + "a\t1.0\tx\ty\n\na\t1.0\tx\ty\n", 3, "fields"),
    (HEADER + "a\tgood\tx\ty\n", 2, "not a number"),
    (HEADER + "a\t5.5\tx\ty\n", 2, "outside"),
    (HEADER + "a\t-0.1\tx\ty\n", 2, "outside"),
    (HEADER + "a\tnan\tx\ty\n", 2, "outside"),
])
def test_read_errors_name_file_and_line(tmp_path, body, line, what):
    p = _write(tmp_path, body)
    with pytest.raises(STSFormatError, match=what) as e:
        read_sts_tsv(p)
    assert f"{p}:{line}:" in str(e.value)


def test_read_empty_and_header_only(tmp_path):
    p = _write(tmp_path, "", "empty.tsv")
    with pytest.raises(STSFormatError, match="empty") as e:
        read_sts_tsv(p)
    assert str(p) in str(e.value)
    p = _write(tmp_path, HEADER, "hdr.tsv")
    with pytest.raises(STSFormatError, match="no sentence pairs") as e:
        read_sts_tsv(p)
    assert str(p) in str(e.value)


def test_rank_average_ties_hand_case():
    np.testing.assert_array_equal(rankdata_average([10, 20, 20, 30]), [1, 2.5, 2.5, 4])
    np.testing.assert_array_equal(rankdata_average([3, 1, 3, 3, 0]), [4, 2, 4, 4, 1])


def test_spearman_hand_case():
    # ranks x: 1, 2.5, 2.5, 4 ; y: 1, 2, 3, 4 -> pearson of the ranks
    rx = np.array([1, 2.5, 2.5, 4]) - 2.5
    ry = np.array([1, 2, 3, 4]) - 2.5
    want = (rx @ ry) / np.sqrt((rx @ rx) * (ry @ ry))
    assert spearman([10, 20, 20, 30], [1, 2, 3, 4]) == pytest.approx(want, abs=1e-12)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert np.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, size=300).astype(float)  # many ties
    y = x + rng.normal(size=300)
    np.testing.assert_allclose(rankdata_average(x), stats.rankdata(x))
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)


def test_sts_scores():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 8))
    b = rng.normal(size=(50, 8))
    cos = cosine_similarity(a, b)
    manual = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(cos, manual)
    gold = 2.5 + 2.5 * cos  # monotone in cosine
    r = sts_scores(a, b, gold)
    assert r["n"] == 50
    assert r["spearman"] == pytest.approx(1.0) and r["pearson"] == pytest.approx(1.0)
    r = sts_scores(a, b, 5 - gold)
    assert r["spearman"] == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        sts_scores(a, b, gold[:-1])
    with pytest.raises(ValueError):
        sts_scores(a, b[:, :4], gold)
