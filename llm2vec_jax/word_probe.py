"""The word-task linear probe (the reference's ``run_word_task``, on frozen features): word
vectors extracted once with the packed encoder (cached on disk), then a softmax linear head
trained with optax on them, early-stopped on a held-out part of the training sentences.

Unlike the reference, which trains its head through the frozen model on each batch (with
dropout 0.1, 1000s of steps), the features here are computed once, so the head trains in
seconds and a second run with other head settings costs no forward at all. Features are
standardised with the training words' mean and deviation (an invertible affine map, so the
probe is as linear as on raw states; massive-activation dimensions no longer dominate Adam's
first steps).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .text.words import WordEmbeddings
from .word_tasks import TaggedSentence, WordTaskError, accuracy, span_f1


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Head training: AdamW on minibatches of words; stop when the held-out loss has not
    improved for ``patience`` epochs, keep the best epoch's head."""

    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 1024
    max_epochs: int = 100
    patience: int = 10
    seed: int = 0

    def __post_init__(self):
        for name in ("batch_size", "max_epochs", "patience"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise WordTaskError(f"probe {name} must be a positive int, "
                                    f"got {getattr(self, name)!r}")
        if not self.learning_rate > 0 or not self.weight_decay >= 0:
            raise WordTaskError(f"probe learning_rate must be > 0 and weight_decay >= 0, got "
                                f"{self.learning_rate}, {self.weight_decay}")


@dataclasses.dataclass(frozen=True)
class Probe:
    weight: np.ndarray  # [D, K], on standardised features
    bias: np.ndarray  # [K]
    mean: np.ndarray  # [D]
    scale: np.ndarray  # [D]
    epochs: int  # epochs run (the head kept is the best held-out one)
    dev_loss: float

    def logits(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float32) - self.mean) / self.scale) @ self.weight + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).argmax(-1)


def _loss(params, x, y):
    logits = x @ params["w"] + params["b"]  # [N, K]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train_probe(x_train: np.ndarray, y_train: np.ndarray, x_dev: np.ndarray, y_dev: np.ndarray,
                num_classes: int, config: ProbeConfig = ProbeConfig()) -> Probe:
    """A linear softmax head on [N, D] features with int labels in [0, num_classes)."""
    x_train, x_dev = np.asarray(x_train, np.float32), np.asarray(x_dev, np.float32)
    if not len(x_train) or not len(x_dev):
        raise WordTaskError(f"the probe needs training and held-out words, got "
                            f"{len(x_train)} and {len(x_dev)}")
    mean = x_train.mean(0)
    scale = x_train.std(0) + 1e-6
    xs_train = jnp.asarray((x_train - mean) / scale)
    xs_dev = jnp.asarray((x_dev - mean) / scale)
    y_train, y_dev = jnp.asarray(y_train, jnp.int32), jnp.asarray(y_dev, jnp.int32)
    dim = x_train.shape[1]
    params = {"w": jnp.zeros((dim, num_classes), jnp.float32),
              "b": jnp.zeros((num_classes,), jnp.float32)}
    optimizer = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, index):
        grads = jax.grad(_loss)(params, xs_train[index], y_train[index])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    dev_loss = jax.jit(_loss)
    rng = np.random.default_rng(config.seed)
    best, best_loss, since_best, epoch = params, float("inf"), 0, 0
    n = len(x_train)
    for epoch in range(1, config.max_epochs + 1):
        order = rng.permutation(n)
        # The last partial batch joins the one before it: one compiled batch shape (two at most).
        starts = range(0, max(1, n - config.batch_size + 1), config.batch_size)
        bounds = list(starts) + [n]
        for a, b in zip(bounds[:-1], bounds[1:]):
            params, opt_state = step(params, opt_state, jnp.asarray(order[a:b]))
        loss = float(dev_loss(params, xs_dev, y_dev))
        if loss < best_loss - 1e-6:
            best, best_loss, since_best = params, loss, 0
        else:
            since_best += 1
            if since_best >= config.patience:
                break
    return Probe(np.asarray(best["w"]), np.asarray(best["b"]), mean, scale, epoch, best_loss)


# ------------------------------------------------------------------ features


def extract_word_features(encoder, sentences: Sequence[TaggedSentence], *, aggregation: str,
                          alignment: str, batch_size: int = 32,
                          show_progress_bar: bool = True) -> dict[str, np.ndarray]:
    """All words' vectors (``stack_words``), and ``seconds``: the extraction's time."""
    start = time.perf_counter()
    words = encoder.encode_words([list(s.words) for s in sentences], aggregation=aggregation,
                                 alignment=alignment, batch_size=batch_size,
                                 show_progress_bar=show_progress_bar)
    return {**stack_words(words, encoder.hidden_size),
            "seconds": np.float64(time.perf_counter() - start)}


def stack_words(words: Sequence[WordEmbeddings], dim: int) -> dict[str, np.ndarray]:
    """Sentences' word vectors concatenated in order: ``features`` float32 [N, D], ``valid``
    bool [N], ``lengths`` int64 [sentences]."""
    return {"features": np.concatenate([w.embeddings for w in words]
                                       + [np.zeros((0, dim), np.float32)]),
            "valid": np.concatenate([w.valid for w in words] + [np.zeros(0, bool)]),
            "lengths": np.asarray([len(w) for w in words], np.int64)}


def features_key(settings: dict, sentences: Sequence[TaggedSentence]) -> str:
    """A name for the features of these sentences under these encoder/word settings."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for s in sentences:
        h.update(json.dumps(s.words).encode())
    return h.hexdigest()[:24]


def cached(cache_dir: str | None, key: str,
           compute: Callable[[], dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], bool]:
    """``compute()``'s arrays, read from ``cache_dir/key.npz`` when there (True), else
    computed and written there (written whole or not at all)."""
    if cache_dir is None:
        return compute(), False
    path = os.path.join(cache_dir, f"{key}.npz")
    if os.path.isfile(path):
        with np.load(path) as f:
            return {k: f[k] for k in f.files}, True
    out = compute()
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out, False


# ------------------------------------------------------------------ the task


def split_by_lengths(array: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    return np.split(array, np.cumsum(lengths)[:-1]) if len(lengths) else []


def probe_word_task(train: dict, dev: dict, test: dict, train_tags: Sequence[TaggedSentence],
                    dev_tags: Sequence[TaggedSentence], test_tags: Sequence[TaggedSentence], *,
                    spans: bool, config: ProbeConfig = ProbeConfig()) -> dict:
    """Train the head on ``train`` features (early-stopped on ``dev``), tag ``test``.

    Words without a vector (not ``valid``) are left out of training and get the most frequent
    training tag at test time (so every word is scored). Returns the metrics (accuracy, and
    span precision/recall/F1 when ``spans``), the probe's epochs, and ``predicted``: the
    test sentences' tags."""
    labels = sorted({t for s in train_tags for t in s.tags})
    index = {t: i for i, t in enumerate(labels)}

    def xy(feats, tagged):
        y = np.asarray([index.get(t, -1) for s in tagged for t in s.tags], np.int64)
        keep = feats["valid"] & (y >= 0)  # a tag unseen in training cannot be learnt
        return feats["features"][keep], y[keep]

    probe = train_probe(*xy(train, train_tags), *xy(dev, dev_tags), len(labels), config)
    predicted_ids = probe.predict(test["features"])
    majority = int(np.bincount(xy(train, train_tags)[1], minlength=len(labels)).argmax())
    predicted_ids = np.where(test["valid"], predicted_ids, majority)
    predicted = [[labels[i] for i in p] for p in split_by_lengths(predicted_ids, test["lengths"])]
    gold = [list(s.tags) for s in test_tags]
    result = {"accuracy": accuracy(gold, predicted)}
    if spans:
        result.update(span_f1(gold, predicted))
    result.update(labels=len(labels), epochs=probe.epochs, dev_loss=probe.dev_loss,
                  missing=int((~test["valid"]).sum()), predicted=predicted)
    return result
