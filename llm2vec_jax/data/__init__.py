"""Data: text sources (files, directories, HF datasets, TFDS, bundled samples), the MNTP and
contrastive pipelines, and the batch types the train steps take."""

from .batches import IGNORE_INDEX, ContrastiveBatch, Features, MNTPBatch
from .mntp import (
    MASK_TOKEN_TYPES,
    MNTPBatchIterator,
    MNTPCollator,
    TokenizedExamples,
    group_texts,
    predict_slots,
    set_mask_token,
    tokenize_lines,
)
from .sources import (
    SOURCE_KINDS,
    SourceError,
    hf_source,
    text_dir_source,
    text_file_source,
    text_source,
    tfds_source,
)

__all__ = [
    "IGNORE_INDEX", "ContrastiveBatch", "Features", "MNTPBatch", "MASK_TOKEN_TYPES",
    "MNTPBatchIterator", "MNTPCollator", "TokenizedExamples", "group_texts", "predict_slots",
    "set_mask_token", "tokenize_lines", "SOURCE_KINDS", "SourceError", "hf_source",
    "text_dir_source", "text_file_source", "text_source", "tfds_source",
]
