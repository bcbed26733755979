"""Small samples of the paper's public datasets, shipped inside the package.

They keep the default job (``python -m llm2vec_jax.train``) and the test suite offline: a
config names one as ``sample:<name>`` wherever it takes a dataset path. Real runs name the
full datasets on the Hugging Face hub instead (``hf:<id>``, see ``data/sources.py``).
Provenance and licences: ``SOURCES.md`` beside this file.
"""

from __future__ import annotations

from importlib import resources

PREFIX = "sample:"

# name -> (file, what it holds, the full dataset it is cut from)
SAMPLES = {
    "stsb-dev": ("stsb-dev.tsv", "300 STS-B dev pairs (every 5th of 1,500)",
                 "hf:mteb/stsbenchmark-sts, split validation"),
    "wiki1m": ("wiki1m.txt", "the first 3,000 sentences of SimCSE's wiki1m_for_simcse.txt",
               "hf:princeton-nlp/datasets-for-simcse, data_files wiki1m_for_simcse.txt"),
    "wikitext": ("wikitext.txt", "the first 300 lines of the WikiText-103 (raw) test split",
                 "hf:Salesforce/wikitext, config wikitext-103-raw-v1"),
    "nli": ("nli.jsonl", "1,000 SNLI/MultiNLI (premise, entailment, contradiction) triplets "
                         "as query/positive/negative records of dataset 'allnli'",
            "hf:sentence-transformers/all-nli, config triplet"),
}


def is_sample(ref: object) -> bool:
    return isinstance(ref, str) and ref.startswith(PREFIX)


def sample_path(ref: str) -> str:
    """The file behind ``sample:<name>`` (or a bare ``<name>``)."""
    name = ref[len(PREFIX):] if is_sample(ref) else ref
    if name not in SAMPLES:
        raise ValueError(f"unknown sample {ref!r}; bundled samples: "
                         + ", ".join(PREFIX + n for n in SAMPLES))
    return str(resources.files(__name__).joinpath(SAMPLES[name][0]))
