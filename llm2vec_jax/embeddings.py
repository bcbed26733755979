"""What happens to embeddings after the encoder: Matryoshka truncation, normalisation,
quantisation and similarity, with sentence-transformers' definitions so results carry over.

All functions take and return numpy arrays ([N, D] float embeddings unless said otherwise).

Quantisation (sentence-transformers' ``quantize_embeddings``):
  int8 / uint8  per dimension, the range [min, max] over the calibration embeddings (by
                default the embeddings themselves) is cut into 255 steps of width
                ``(max - min) / 255`` (1 where the range is empty); a value's bucket is
                ``floor((x - min) / step)`` clipped to [0, 255]; uint8 keeps it, int8
                subtracts 128.
  binary        the sign bits (x > 0) packed 8 a byte, big-endian within a byte
                (``numpy.packbits``), minus 128 as int8: [N, ceil(D / 8)].
  ubinary       the same bits as uint8, without the offset.
"""

from __future__ import annotations

import numpy as np

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
SIMILARITY_FNS = ("cosine", "dot", "euclidean", "manhattan")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not supported; choose one of {PRECISIONS}")
    return precision


def check_similarity_fn(name: str) -> str:
    if name not in SIMILARITY_FNS:
        raise ValueError(f"similarity_fn_name={name!r} is not supported; choose one of "
                         f"{SIMILARITY_FNS}")
    return name


def check_truncate_dim(truncate_dim: int | None, dim: int) -> int | None:
    """``truncate_dim`` validated against the embedding width ``dim`` (None: keep all)."""
    if truncate_dim is None:
        return None
    if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, (int, np.integer)) \
            or not 1 <= truncate_dim <= dim:
        raise ValueError(f"truncate_dim={truncate_dim!r} must be an int in [1, {dim}] (the "
                         "embedding width), or None to keep every dimension")
    return int(truncate_dim)


def truncate(embeddings: np.ndarray, truncate_dim: int | None) -> np.ndarray:
    """The first ``truncate_dim`` dimensions (a Matryoshka prefix); None keeps all."""
    truncate_dim = check_truncate_dim(truncate_dim, embeddings.shape[-1])
    return embeddings if truncate_dim is None else embeddings[..., :truncate_dim]


def normalize(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; a zero row stays zero (as torch's F.normalize)."""
    x = np.asarray(embeddings, np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def quantization_ranges(calibration: np.ndarray) -> np.ndarray:
    """[2, D]: per-dimension min and max of ``calibration`` [N, D] (N >= 2)."""
    calibration = np.asarray(calibration, np.float32)
    if calibration.ndim != 2 or calibration.shape[0] < 2:
        raise ValueError("int8/uint8 ranges need at least 2 calibration embeddings [N, D], got "
                         f"shape {calibration.shape}; pass ranges=... or more embeddings")
    return np.stack([calibration.min(axis=0), calibration.max(axis=0)])


def quantize(embeddings: np.ndarray, precision: str, *, ranges: np.ndarray | None = None,
             calibration: np.ndarray | None = None) -> np.ndarray:
    """``embeddings`` [N, D] at ``precision`` (module docstring); ``ranges`` [2, D] or
    ``calibration`` embeddings fix the int8/uint8 buckets (default: from ``embeddings``)."""
    check_precision(precision)
    x = np.asarray(embeddings, np.float32)
    if precision == "float32":
        return x
    if precision in ("binary", "ubinary"):
        bits = np.packbits(x > 0, axis=-1)
        return bits if precision == "ubinary" else (bits.astype(np.int16) - 128).astype(np.int8)
    if ranges is None and calibration is None and x.shape[0] == 0:
        return np.zeros(x.shape, np.uint8 if precision == "uint8" else np.int8)
    if ranges is None:
        ranges = quantization_ranges(x if calibration is None else calibration)
    ranges = np.asarray(ranges, np.float32)
    if ranges.shape != (2, x.shape[-1]):
        raise ValueError(f"ranges must have shape (2, {x.shape[-1]}), got {ranges.shape}")
    step = (ranges[1] - ranges[0]) / 255
    step = np.where(step == 0, 1, step)
    buckets = np.clip(np.floor((x - ranges[0]) / step), 0, 255)
    return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)


def similarity(a: np.ndarray, b: np.ndarray, fn: str = "cosine") -> np.ndarray:
    """[Na, Nb] scores of every row of ``a`` against every row of ``b``: cosine, dot, or the
    negated euclidean / manhattan distance (higher is more similar, as in
    sentence-transformers)."""
    a, b = _pair(a, b)
    if check_similarity_fn(fn) == "cosine":
        return normalize(a) @ normalize(b).T
    if fn == "dot":
        return a @ b.T
    diff = a[:, None, :] - b[None, :, :]
    if fn == "euclidean":
        return -np.sqrt(np.sum(diff * diff, axis=-1))
    return -np.sum(np.abs(diff), axis=-1)


def similarity_pairwise(a: np.ndarray, b: np.ndarray, fn: str = "cosine") -> np.ndarray:
    """[N] scores of row i of ``a`` against row i of ``b`` (``fn`` as :func:`similarity`)."""
    a, b = _pair(a, b)
    if a.shape != b.shape:
        raise ValueError(f"pairwise similarity needs equal shapes, got {a.shape} and {b.shape}")
    if check_similarity_fn(fn) == "cosine":
        return np.sum(normalize(a) * normalize(b), axis=-1)
    if fn == "dot":
        return np.sum(a * b, axis=-1)
    if fn == "euclidean":
        return -np.linalg.norm(a - b, axis=-1)
    return -np.sum(np.abs(a - b), axis=-1)


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.atleast_2d(np.asarray(a, np.float32))
    b = np.atleast_2d(np.asarray(b, np.float32))
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"embeddings of different widths: {a.shape[-1]} and {b.shape[-1]}")
    return a, b


__all__ = ["PRECISIONS", "SIMILARITY_FNS", "normalize", "quantization_ranges", "quantize",
           "similarity", "similarity_pairwise", "truncate"]
