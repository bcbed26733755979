"""Data: text sources (files, directories, HF datasets, TFDS) and the MNTP pipeline."""

from .mntp import (
    IGNORE_INDEX,
    MASK_TOKEN_TYPES,
    MNTPBatchIterator,
    MNTPCollator,
    TokenizedExamples,
    group_texts,
    mntp_batches,
    predict_bound,
    set_mask_token,
    tokenize_lines,
)
from .sources import (
    SOURCE_KINDS,
    SourceError,
    hf_source,
    read_sentences,
    text_dir_source,
    text_file_source,
    text_source,
    tfds_source,
)

__all__ = [
    "IGNORE_INDEX", "MASK_TOKEN_TYPES", "MNTPBatchIterator", "MNTPCollator",
    "TokenizedExamples", "group_texts", "mntp_batches", "predict_bound", "set_mask_token",
    "tokenize_lines", "SOURCE_KINDS", "SourceError", "hf_source", "read_sentences",
    "text_dir_source", "text_file_source", "text_source", "tfds_source",
]
