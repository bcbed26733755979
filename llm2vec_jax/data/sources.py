"""Text sources: every kind becomes a plain iterator of strings, already sharded per process.

Kinds (``text_source(kind, ...)`` dispatches on the name):

- ``"file"``: a UTF-8 text file, one record per line (newline stripped, other whitespace
  kept: WikiText headings start with a space and the reference's ``datasets`` "text" loader
  keeps it too).
- ``"dir"``: every ``*.txt`` file of a directory, in sorted file-name order, read as one
  stream of lines (so the record numbering, and hence sharding, does not depend on how the
  text happens to be split into files).
- ``"hf"``: a Hugging Face ``datasets`` dataset (``load_dataset(name, config, split=...)``,
  e.g. ``Salesforce/wikitext`` / ``wikitext-103-raw-v1``), ``text_field`` column, downloaded
  and cached by ``datasets`` on first use. ``datasets`` is imported only here, so the package
  does not depend on it. Offline with no cached copy this is one ``DatasetUnavailableError``
  naming what to download and where the cache lives.
- ``"tfds"``: a TensorFlow Datasets dataset prepared in ``array_record`` format, opened with
  ``tfds.data_source`` (random access, no TensorFlow needed), ``text_field`` feature.

A config names a source by its path alone where that is unambiguous (``resolve_source``):
``hf:<dataset id>`` is a hub dataset, ``sample:<name>`` a sample bundled with the package
(``data/samples``: STS-B dev, wiki1m, WikiText, NLI), anything else a local file or directory.

Sharding rule (the same for every kind): records are numbered 0, 1, 2, ... in source order,
counting every record, blank ones included, and process ``p`` of ``P`` gets exactly the
records with ``index % P == p``. Strided rather than contiguous shards keep processes
balanced to within one record without knowing the length up front (files, streaming
datasets); random-access sources (tfds, map-style ``datasets``) fetch only their own
records, line-based ones read past the others' lines.

Blank (whitespace-only) records are skipped by default: WikiText has an empty row between
paragraphs, and neither MNTP line-by-line mode (the reference drops them too) nor SimCSE
wants them. In grouped MNTP mode the reference tokenizes them, which only adds tokens when
the tokenizer adds BOS/EOS; pass ``skip_blank=False`` to keep them.

A source that yields no text for this process raises ``ValueError("no text found in ...")``
when its iterator is exhausted, instead of silently training on nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .samples import is_sample, sample_path

SOURCE_KINDS = ("file", "dir", "hf", "tfds")
HF_PREFIX = "hf:"


class SourceError(ValueError):
    """A text source that cannot be read as asked (unknown kind, no text, bad shard)."""


class DatasetUnavailableError(SourceError):
    """A hub dataset that is neither in the local ``datasets`` cache nor downloadable now."""


def is_hub_ref(ref: object) -> bool:
    return isinstance(ref, str) and ref.startswith(HF_PREFIX)


def resolve_source(kind: str, path: str | os.PathLike) -> tuple[str, str]:
    """``(kind, location)`` of a config's ``kind`` and ``path``.

    ``hf:<id>`` is the hub dataset ``<id>`` and ``sample:<name>`` a bundled file, whatever
    ``kind`` says short of a contradiction (``kind: file`` with an ``hf:`` path is an error);
    ``auto`` picks ``file`` or ``dir`` for an existing local path.
    """
    location = os.fspath(path)
    if is_hub_ref(location):
        if kind not in ("auto", "hf"):
            raise SourceError(f"path {location!r} names a hub dataset but kind is {kind!r}: "
                              "use kind: hf (or auto)")
        return "hf", location[len(HF_PREFIX):]
    if is_sample(location):
        if kind not in ("auto", "file"):
            raise SourceError(f"path {location!r} names a bundled sample file but kind is "
                              f"{kind!r}: use kind: file (or auto)")
        return "file", sample_path(location)
    if kind == "auto":
        p = Path(location)
        if p.is_dir():
            return "dir", location
        if p.is_file():
            return "file", location
        raise FileNotFoundError(f"no such file or directory: {p} (for hub datasets write "
                                "hf:<dataset id>, for the bundled samples sample:<name>)")
    return kind, location


def load_hf_dataset(name: str, config: str | None = None, *, split: str,
                    data_files: str | list[str] | None = None, streaming: bool = False,
                    **load_kwargs):
    """``datasets.load_dataset`` with a one-line error when it can be neither read from the
    cache nor downloaded (no network, or ``HF_HUB_OFFLINE=1`` with nothing cached)."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError("hub datasets (hf:...) need `pip install datasets`") from e
    try:
        return datasets.load_dataset(name, config, split=split, data_files=data_files,
                                     streaming=streaming, **load_kwargs)
    except ConnectionError as e:
        raise DatasetUnavailableError(_unavailable(name, config, split, data_files, e)) from None


def _unavailable(name, config, split, data_files, error) -> str:
    import datasets.config
    args = ", ".join([repr(name)] + ([repr(config)] if config else []) + [f"split={split!r}"]
                     + ([f"data_files={data_files!r}"] if data_files else []))
    return (f"hub dataset hf:{name} is not in the datasets cache and cannot be downloaded "
            f"here ({error}): on a machine with network run `python -c \"import datasets; "
            f"datasets.load_dataset({args})\"`, copy its cache to "
            f"{datasets.config.HF_DATASETS_CACHE} (or set HF_DATASETS_CACHE), or point the "
            f"config at a local copy; for an offline try, use a bundled sample "
            f"(sample:stsb-dev, sample:wiki1m, sample:wikitext, sample:nli)")


def _check_shard(process_index: int, process_count: int) -> None:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise SourceError(f"bad shard: process_index={process_index}, "
                          f"process_count={process_count}")


def _filtered(records: Iterable[tuple[int, Any]], *, describe: str, skip_blank: bool,
              decode: Callable[[Any], str] = lambda x: x) -> Iterator[str]:
    """Yield decoded records (already restricted to this shard), then fail if none had text."""
    found = False
    for _, record in records:
        text = decode(record)
        if skip_blank and not text.strip():
            continue
        found = True
        yield text
    if not found:
        raise SourceError(f"no text found in {describe}")


def _shard_of(items: Iterable[Any], process_index: int, process_count: int):
    for i, item in enumerate(items):
        if i % process_count == process_index:
            yield i, item


def _shard_desc(process_index: int, process_count: int) -> str:
    return "" if process_count == 1 else f" (shard {process_index} of {process_count})"


def _lines(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    yield line.rstrip("\n")
        except UnicodeDecodeError:
            raise SourceError(_not_utf8(path)) from None


def _not_utf8(path: Path) -> str:
    """Where a file stops being UTF-8 (the decoder's error counts bytes of a chunk, not lines)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                where = f"line {number} (byte {raw[e.start]:#04x} at column {e.start + 1})"
                break
        else:
            where = "its end (a character cut short)"
    return (f"{path} is not UTF-8 at {where}; convert it, e.g. iconv -f latin1 -t utf-8 "
            f"{path} > {path.with_name(path.stem + '.utf8' + path.suffix)}")


def text_file_source(path: str | os.PathLike, *, process_index: int = 0,
                     process_count: int = 1, skip_blank: bool = True) -> Iterator[str]:
    """Lines of one UTF-8 text file (this process's shard)."""
    _check_shard(process_index, process_count)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    return _filtered(_shard_of(_lines([path]), process_index, process_count),
                     describe=f"{path}{_shard_desc(process_index, process_count)}",
                     skip_blank=skip_blank)


def text_dir_source(path: str | os.PathLike, *, process_index: int = 0,
                    process_count: int = 1, skip_blank: bool = True,
                    pattern: str = "*.txt") -> Iterator[str]:
    """Lines of every ``pattern`` file in a directory (sorted by name), as one stream."""
    _check_shard(process_index, process_count)
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"text directory not found: {path}")
    files = sorted(p for p in path.glob(pattern) if p.is_file())
    if not files:
        raise SourceError(f"no text found in {path}: no {pattern} files")
    return _filtered(_shard_of(_lines(files), process_index, process_count),
                     describe=f"{path} ({len(files)} files)"
                              f"{_shard_desc(process_index, process_count)}",
                     skip_blank=skip_blank)


def _decode(value: Any) -> str:
    # tfds Text features come back as UTF-8 bytes (numpy bytes scalars included).
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    if hasattr(value, "item"):
        return _decode(value.item())
    if not isinstance(value, str):
        raise SourceError(f"text field holds {type(value).__name__}, not text")
    return value


def _field(text_field: str, describe: str):
    def get(record: Any) -> str:
        try:
            value = record[text_field]
        except (KeyError, TypeError, IndexError):
            keys = list(record.keys()) if hasattr(record, "keys") else type(record).__name__
            raise SourceError(f"{describe}: no text field {text_field!r} (has {keys})") from None
        return _decode(value)
    return get


def hf_source(name: str, config: str | None = None, split: str = "train", *,
              text_field: str = "text", data_files: str | list[str] | None = None,
              streaming: bool = False, process_index: int = 0, process_count: int = 1,
              skip_blank: bool = True, **load_kwargs) -> Iterator[str]:
    """A Hugging Face ``datasets`` split, e.g. ``hf_source("Salesforce/wikitext",
    "wikitext-103-raw-v1")``; ``data_files`` picks files of a repository of plain files
    (``princeton-nlp/datasets-for-simcse``: ``wiki1m_for_simcse.txt``).

    ``load_kwargs`` go to ``datasets.load_dataset`` (``cache_dir``, ...). Map-style datasets
    are sharded with ``Dataset.shard(contiguous=False)``, which is the strided rule above;
    streaming ones are filtered while iterating.
    """
    _check_shard(process_index, process_count)
    ds = load_hf_dataset(name, config, split=split, data_files=data_files,
                         streaming=streaming, **load_kwargs)
    describe = (f"hf dataset {name}" + (f"/{config}" if config else "") + f" split {split}"
                + _shard_desc(process_index, process_count))
    get = _field(text_field, describe)
    if streaming:
        records = _shard_of(ds, process_index, process_count)
    else:
        if process_count > 1:
            ds = ds.shard(num_shards=process_count, index=process_index, contiguous=False)
        # Reading the one column in slices is far faster than row dicts.
        records = enumerate(_column(ds, text_field, describe))
        get = _decode
    return _filtered(records, describe=describe, skip_blank=skip_blank, decode=get)


def _column(ds, text_field: str, describe: str, chunk: int = 1000) -> Iterator[Any]:
    names = getattr(ds, "column_names", None)
    if names is not None and text_field not in names:
        raise SourceError(f"{describe}: no text field {text_field!r} (has {names})")
    for start in range(0, len(ds), chunk):
        yield from ds[start:start + chunk][text_field]


def tfds_source(name: str, split: str = "train", *, data_dir: str | os.PathLike | None = None,
                text_field: str = "text", process_index: int = 0, process_count: int = 1,
                skip_blank: bool = True, download: bool = False, **kwargs) -> Iterator[str]:
    """A TFDS dataset in ``array_record`` format via ``tfds.data_source`` (no TensorFlow).

    ``name`` may carry a config/version (``"wikipedia/20230601.en"``). ``download=False`` by
    default so a missing dataset is an error rather than a silent multi-GB preparation;
    ``kwargs`` go to ``tfds.data_source`` (``builder_kwargs``, ``decoders``, ...).
    Only this process's indices are read (random access).
    """
    _check_shard(process_index, process_count)
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError("the 'tfds' text source needs "
                          "`pip install tensorflow-datasets array_record`") from e
    source = tfds.data_source(name, split=split, data_dir=None if data_dir is None
                              else os.fspath(data_dir), download=download, **kwargs)
    describe = f"tfds dataset {name} split {split}{_shard_desc(process_index, process_count)}"
    records = ((i, source[i]) for i in range(process_index, len(source), process_count))
    return _filtered(records, describe=describe, skip_blank=skip_blank,
                     decode=_field(text_field, describe))


def text_source(kind: str, name_or_path: str | os.PathLike, **kwargs) -> Iterator[str]:
    """Dispatch on ``kind`` (one of ``SOURCE_KINDS`` or ``auto``) after ``resolve_source``;
    keyword arguments go to that reader."""
    readers = {"file": text_file_source, "dir": text_dir_source,
               "hf": hf_source, "tfds": tfds_source}
    if kind not in readers and kind != "auto":
        raise SourceError(f"unknown text source kind {kind!r}; expected one of "
                          f"{', '.join(SOURCE_KINDS)} or 'auto'")
    kind, location = resolve_source(kind, name_or_path)
    return readers[kind](location, **kwargs)
