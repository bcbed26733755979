"""YAML settings into frozen dataclasses, for the training configs and the recipes alike.

Unknown keys are errors with a "did you mean" hint; values are type-checked against the
dataclass annotations, so a typo never silently falls back to a default. ``--set key=value``
overrides are parsed here once (values are YAML).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from typing import Any, Iterable

import yaml


class TrainConfigError(ValueError):
    """A configuration file or override that does not describe a valid run."""


def _unknown_key(key, known: Iterable[str], where: str, what: str = "config key") -> TrainConfigError:
    known = list(known)
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    path = f"{where}.{key}" if where else str(key)
    return TrainConfigError(f"unknown {what} {path!r}{hint}")


def check_keys(data: Any, known: tuple[str, ...], where: str, what: str = "config key") -> None:
    """``data`` must be a mapping whose keys are all in ``known``."""
    if not isinstance(data, dict):
        raise TrainConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    for key in data:
        if key not in known:
            raise _unknown_key(key, known, where, what)


def _check_type(value: Any, annotation, where: str):
    """Coerce/validate ``value`` against a (simple) type annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, where)
            except TrainConfigError as e:
                errors.append(str(e))
        raise TrainConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise TrainConfigError(f"{where}: expected a list, got {value!r}")
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:  # PyYAML reads "1e-3" (no dot) as a string: YAML 1.1's float needs one
            return float(value)
        except ValueError:
            pass
    if annotation in (int, str, bool, float) and not (isinstance(value, annotation) and
                                                      not (annotation is int and isinstance(value, bool))):
        raise TrainConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls, data: dict, where: str = ""):
    """An instance of dataclass ``cls`` from a (nested) dict, every value type-checked."""
    if not isinstance(data, dict):
        raise TrainConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise _unknown_key(key, fields, where)
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = from_dict(annotation, value, path)
        else:
            kwargs[key] = _check_type(value, annotation, path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, TrainConfigError):
            raise
        raise TrainConfigError(f"{where or 'config'}: {e}") from e


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """``data["a"]["b"] = value`` for ``dotted="a.b"``, creating sections on the way."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise TrainConfigError(f"--set {dotted}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``"key.sub=value"`` → ("key.sub", YAML-parsed value)."""
    if "=" not in item:
        raise TrainConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def load_yaml(path: str | os.PathLike, what: str = "config file") -> dict:
    if not os.path.isfile(path):
        raise TrainConfigError(f"{what} {os.fspath(path)!r} does not exist")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def deep_merge(base: dict, top: dict) -> dict:
    """``base`` with ``top`` laid over it, sections merged key by key (copies, not views)."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
