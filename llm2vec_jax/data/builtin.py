"""The offline default corpus: documentation text every Python install carries.

The project ships no copied text, and a fresh machine may have no network, so the default
training run reads the docstrings of a fixed list of standard-library modules (and of their
public classes and functions), one paragraph per text. Deterministic for a given Python
version. Real runs use the paper's data (Wikipedia / WikiText) instead: see the README.
"""

from __future__ import annotations

import importlib
import inspect

MODULES = ("abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "calendar", "cmd",
           "codecs", "collections", "configparser", "contextlib", "copy", "csv", "dataclasses",
           "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools", "glob",
           "gzip", "hashlib", "heapq", "html", "http.client", "imaplib", "inspect", "io",
           "ipaddress", "itertools", "json", "logging", "mailbox", "math", "mimetypes",
           "operator", "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "sched",
           "secrets", "shlex", "shutil", "smtplib", "socket", "sqlite3", "statistics", "string",
           "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
           "tokenize", "trace", "traceback", "turtle", "typing", "unittest", "urllib.parse",
           "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "zipfile")

DESCRIPTION = "Python standard-library docstrings (built at run time; no network, no shipped text)"


def _docstrings(module) -> list[str]:
    docs = [inspect.getdoc(module) or ""]
    for name in sorted(vars(module)):
        if name.startswith("_"):
            continue
        obj = getattr(module, name)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", None) == module.__name__:
            docs.append(inspect.getdoc(obj) or "")
    return docs


def builtin_texts(min_words: int = 8) -> list[str]:
    """Paragraphs (≥ ``min_words`` words, whitespace-normalised, de-duplicated, in order)."""
    seen: set[str] = set()
    texts = []
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # e.g. turtle without tkinter: just fewer paragraphs
            continue
        for doc in _docstrings(module):
            for paragraph in doc.split("\n\n"):
                text = " ".join(paragraph.split())
                if len(text.split()) >= min_words and text not in seen:
                    seen.add(text)
                    texts.append(text)
    return texts
