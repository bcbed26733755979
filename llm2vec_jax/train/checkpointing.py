"""Resumable training: orbax checkpoints of what trains (LoRA, optimizer state, step) and of the
data position, in ``OUTPUT_DIR/checkpoints``; and the record of the settings a run used.

The frozen base weights are not checkpointed (they come from the base model), and the step's
dropout rng is derived from (seed, step), so a resumed run reproduces the uninterrupted one
exactly. Each checkpoint also records what it is the state of (stage, base model, LoRA
layout) and what the data iterator reads, so a resume can refuse a checkpoint that belongs to
another run and warn when the data under the saved position changed.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path

import jax
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath

from ..checkpoints.io import is_remote, join
from ..data.sources import resolve_source
from ..distributed import barrier, is_main_process
from .config import TrainConfig
from .prepare import adapter_chain
from .steps import TrainState

log = logging.getLogger("llm2vec_jax.train")


def checkpoint_manager(config: TrainConfig) -> ocp.CheckpointManager:
    # create=False: the directory appears with the first save, so a run refused before it
    # trains (a bad model, say, found after the resume check) leaves nothing behind.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.run.keep_checkpoints,
        enable_async_checkpointing=config.run.async_checkpointing, create=False)
    directory = join(config.run.output_dir, "checkpoints")
    if not is_remote(directory):
        directory = os.path.abspath(directory)
    # Handlers named up front: reading a step's metadata (the resume's identity check) then
    # needs no restore args.
    return ocp.CheckpointManager(directory, options=options, item_handlers={
        "train": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()})


def trainable(state: TrainState) -> dict:
    # The frozen base weights are not checkpointed: they come from the base model.
    return {"step": state.step, "lora": state.lora, "opt_state": state.opt_state}


class ResumeError(Exception):
    """A resume that cannot go on (no readable checkpoint, or checkpoints of another run)."""


def file_fingerprint(path: Path, span: int = 1 << 20) -> dict:
    """Size and a hash of the first and last ``span`` bytes: cheap on any file size, and a
    safetensors file's header (every tensor's offset) and first and last tensors are in it."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(span))
        if size > span:
            f.seek(max(span, size - span))
            digest.update(f.read())
    return {"size": size, "sha256": digest.hexdigest()[:16]}


def _files_fingerprint(location: str, pattern: str = "*") -> dict:
    """``{file: fingerprint}`` of a local file or of a directory's files; ``{}`` elsewhere
    (hub ids, remote paths: named by the caller instead)."""
    path = Path(location)
    files = [path] if path.is_file() else sorted(p for p in path.glob(pattern) if p.is_file())
    return {os.fspath(f): file_fingerprint(f) for f in files}


def run_identity(config: TrainConfig, model_path: str) -> dict:
    """What the checkpoints are the state of; a resume with any of it changed is refused."""
    return {
        "stage": config.run.stage,
        "base model": {"path": config.model.path, "adapters": list(adapter_chain(config)),
                       # By file name: the same weights in a moved directory are the same.
                       "weights": {Path(name).name: fp for name, fp in
                                   _files_fingerprint(model_path, "*.safetensors").items()}},
        "lora layout": {"r": config.lora.r, "alpha": config.lora.alpha,
                        "targets": list(config.lora.targets)},
    }


def data_fingerprint(config: TrainConfig, model_path: str) -> dict:
    """What the data iterator reads: its files (or dataset names) and the tokenizer files."""
    data = config.data
    sources = {}
    for path in (data.path, data.eval_path, config.contrastive.instructions):
        if path is not None:
            kind, location = resolve_source("auto" if data.kind == "builtin" else data.kind, path)
            sources.update(_files_fingerprint(location) if kind in ("file", "dir")
                           else {f"{kind}:{location}": {"split": data.split,
                                                         "config": data.config}})
    tokenizer = {Path(name).name: fp for name, fp in _files_fingerprint(model_path).items()
                 if Path(name).name.startswith(("tokenizer", "special_tokens"))}
    return {"data": sources, "tokenizer": tokenizer}


def _reason(error: BaseException) -> str:
    """The root cause's first line: orbax wraps the I/O error in several layers."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _move_aside(manager: ocp.CheckpointManager, step: int, prefix: str) -> str:
    """Rename checkpoint ``step`` to ``prefix-step`` beside it (never deleted); orbax no
    longer counts it as a step."""
    source = epath.Path(manager.directory) / str(step)
    target = source.parent / f"{prefix}-{step}"
    if is_main_process():
        n = 1
        while target.exists():  # an earlier resume moved one aside under this name
            n += 1
            target = source.parent / f"{prefix}-{step}.{n}"
        source.rename(target)
    return os.fspath(target)


def resume_candidates(manager: ocp.CheckpointManager, resume: str | int,
                      record: dict) -> list[int]:
    """The checkpoints ``restore`` tries, newest first, as ``resume`` (``run.resume``) picks
    them; called before the model is loaded, so a refused resume does not wait for it.
    ``record``: this run's, as ``save`` takes it. Checkpoints after a chosen step are moved
    aside to ``superseded-<step>``.

    Raises ResumeError for a chosen step that is not there, and when the newest candidate
    whose metadata can be read was written for another stage, base model or LoRA layout
    (before anything is moved aside)."""
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        if isinstance(resume, int):
            raise ResumeError(f"run.resume={resume}, but {manager.directory} holds "
                              "no checkpoint; use run.resume: auto or none")
        return []
    if isinstance(resume, int) and resume not in steps:
        raise ResumeError(f"run.resume={resume}: no checkpoint of that step in "
                          f"{manager.directory} (it holds steps "
                          f"{sorted(steps)}); pick one of those, or auto")
    candidates = [resume] if isinstance(resume, int) else steps
    for step in candidates:
        try:
            recorded = manager.metadata(step).custom_metadata or {}
        except Exception:  # noqa: BLE001 - unreadable: restore sets it aside
            continue
        if "identity" in recorded:
            _check_identity(recorded["identity"], record["identity"], manager.directory)
        break
    if isinstance(resume, int):
        # Later checkpoints would be overwritten or count as newer than the resumed run's.
        for later in [s for s in steps if s > resume]:
            log.warning("run.resume=%d: the later checkpoint %d moved aside to %s", resume,
                        later, _move_aside(manager, later, "superseded"))
    return candidates


def restore(manager: ocp.CheckpointManager, candidates: list[int], resume: str | int,
            record: dict, state: TrainState, iterator) -> TrainState:
    """``state`` and ``iterator`` set from the first readable checkpoint of ``candidates``
    (``resume_candidates``); with run.resume auto (``resume``), unreadable newer ones are
    moved aside to ``unreadable-<step>``.

    Raises ResumeError when no checkpoint can be read, or when one was written for another
    stage, base model or LoRA layout."""
    if not candidates:
        return state
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            trainable(state))
    for step in candidates:
        try:
            recorded = dict(manager.metadata(step).custom_metadata or {})
            if "identity" in recorded:  # absent in checkpoints written before it was recorded
                _check_identity(recorded["identity"], record["identity"], manager.directory)
            _verify_arrays(manager, step)
            restored = manager.restore(step, args=ocp.args.Composite(
                train=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        except ResumeError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure to read makes it unreadable
            reason = _reason(e)
        else:
            barrier("llm2vec-resume")  # every process sees the renames before orbax lists steps
            manager.reload()
            _warn_if_data_changed(recorded.get("data fingerprint"), record["data fingerprint"])
            iterator.set_state(restored["data"])
            train = restored["train"]
            log.info("resumed from step %d", step)
            return state.replace(step=train["step"], lora=train["lora"],
                                 opt_state=train["opt_state"])
        if isinstance(resume, int):
            raise ResumeError(f"checkpoint {step} in {manager.directory} cannot be read "
                              f"({reason}); use run.resume: auto to take the newest readable "
                              "one")
        log.warning("checkpoint %d cannot be read (%s); moved aside to %s, trying the next "
                    "older one", step, reason, _move_aside(manager, step, "unreadable"))
    raise ResumeError(f"no readable checkpoint in {manager.directory} (each was moved aside "
                      "as unreadable-<step>); start over with run.resume: none or a new "
                      "run.output_dir")


def _verify_arrays(manager: ocp.CheckpointManager, step: int) -> None:
    """Read every stored chunk of the step's arrays, one at a time. orbax's restore reads
    them all at once and, on the first bad one, leaves the others' reads behind to print
    pages of tracebacks at exit; this finds a truncated or missing file cleanly first."""
    item = os.fspath(epath.Path(manager.directory) / str(step) / "train")
    if not epath.Path(item, "manifest.ocdbt").exists():
        return  # not orbax's default OCDBT layout: the restore itself is the check
    base = item if is_remote(item) else "file://" + item
    store = ts.KvStore.open({"driver": "ocdbt", "base": base + "/"}).result()
    for key in store.list().result():
        try:
            store.read(key).result()
        except ValueError as e:
            raise ValueError(f"{item}: {key.decode()}: {e}") from None


def _check_identity(before: dict, now: dict, directory) -> None:
    for key in ("stage", "base model", "lora layout"):
        if before.get(key) != now[key]:
            what = "; ".join(changed_settings({key: before.get(key)}, {key: now[key]}))
            raise ResumeError(
                f"the checkpoints in {directory} were written with another {key} ({what}); "
                "resuming them would continue another run. Use a new run.output_dir, or "
                "run.resume: none to start over here (the old checkpoints are kept aside)")


def _warn_if_data_changed(before: dict | None, now: dict) -> None:
    if before is None:
        return
    for part in ("data", "tokenizer"):
        for change in changed_settings(before.get(part, {}), now[part]):
            log.warning("%s changed since the checkpoint was written (%s): the saved data "
                        "position no longer points at the same examples", part, change)


def start_over(config: TrainConfig) -> None:
    """run.resume: none: move earlier checkpoints aside (never deleted) before a fresh run."""
    directory = epath.Path(join(config.run.output_dir, "checkpoints"))
    if is_main_process() and directory.exists() and any(directory.iterdir()):
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        target = directory.parent / f"checkpoints-before-{stamp}"
        directory.rename(target)
        log.warning("run.resume=none: the earlier checkpoints moved aside to %s", target)
    barrier("llm2vec-start-over")


class CheckpointWriteError(Exception):
    """A checkpoint could not be written (a full disk, a quota); the earlier ones are intact:
    orbax writes into a temporary directory and renames it only when complete."""


_ORBAX = f"{os.sep}orbax{os.sep}checkpoint{os.sep}"


class _WriteFailureEchoes(logging.Filter):
    """Quiets the echoes of a failed checkpoint write, which is reported once, in the main
    thread (the next save, or ``finish``): as the one ``checkpoint error:`` line, or with its
    full chained traceback under ``--debug``. The echoes: orbax logs the failure where it
    happens (its writer threads, then ``wait_until_finished``), kept as one line each with
    the traceback stripped; once the failure is reported, asyncio logs each abandoned writer
    task or future again when it is garbage-collected (``... exception was never
    retrieved``, at exit, after the report line), dropped. Records about anything else are
    left alone."""

    def __init__(self):
        super().__init__()
        self.reported = False

    def filter(self, record: logging.LogRecord) -> bool:
        if (self.reported and record.name == "asyncio"
                and "exception was never retrieved" in record.getMessage()):
            return False
        if record.exc_info and (_ORBAX in record.pathname or _raised_in_orbax(record.exc_info)):
            record.exc_info = record.exc_text = None
        return True


_echoes = _WriteFailureEchoes()


def _raised_in_orbax(exc_info) -> bool:
    tb = exc_info[2]
    while tb is not None:
        if _ORBAX in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _late_write_callback(unraisable) -> bool:
    """Whether an unraisable exception is tensorstore delivering a write's result to an asyncio
    loop that orbax already closed after the first failed write: ``RuntimeError('Event loop is
    closed')`` whose traceback *starts* in ``call_soon_threadsafe``, i.e. no Python code called
    it (tensorstore's C++ side did, on whichever thread completed the write). tensorstore
    reports each through ``sys.unraisablehook``, which prints a traceback; nothing is lost:
    the failure itself reaches the main thread."""
    tb = unraisable.exc_traceback
    return (unraisable.exc_type is RuntimeError and tb is not None
            and str(unraisable.exc_value) == "Event loop is closed"
            and tb.tb_frame.f_code.co_name == "call_soon_threadsafe")


def hide_write_failure_tracebacks() -> None:
    """Leave a failed checkpoint write to its one ``checkpoint error:`` line (only without
    ``--debug``): ``_WriteFailureEchoes`` on the loggers that echo it (absl's, which orbax
    logs through, and asyncio's), no report of tensorstore's late write callbacks, and,
    once the failure is reported, no warning about the writer coroutines it abandoned."""
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_echoes)
    default_unraisablehook = sys.unraisablehook
    default_showwarning = warnings.showwarning

    def unraisablehook(unraisable):
        if not _late_write_callback(unraisable):
            default_unraisablehook(unraisable)

    def showwarning(message, category, *args, **kwargs):
        if not (_echoes.reported and category is RuntimeWarning
                and "was never awaited" in str(message)):
            default_showwarning(message, category, *args, **kwargs)

    sys.unraisablehook = unraisablehook
    warnings.showwarning = showwarning


def _write_failed(manager: ocp.CheckpointManager, error: Exception) -> CheckpointWriteError:
    _echoes.reported = True
    return CheckpointWriteError(
        f"writing a checkpoint in {manager.directory} failed ({_reason(error)}); the earlier "
        f"checkpoints {sorted(manager.all_steps())} are intact: free space (or fix the "
        "directory) and run the same command again to resume")


def save(manager: ocp.CheckpointManager, step: int, state: TrainState, iterator,
         record: dict) -> None:
    """``record``: {"identity": run_identity(...), "data fingerprint": data_fingerprint(...)},
    kept in the checkpoint's metadata for the resume to compare. An asynchronous write's
    failure surfaces here, at the next save, or in ``finish``."""
    try:
        manager.save(step, args=ocp.args.Composite(
            train=ocp.args.StandardSave(trainable(state)),
            data=ocp.args.JsonSave(iterator.get_state())), force=True, custom_metadata=record)
    except Exception as e:  # noqa: BLE001 - orbax reports I/O failures as ValueError and more
        raise _write_failed(manager, e) from e


def finish(manager: ocp.CheckpointManager) -> None:
    """Wait for the last checkpoint write, then close the manager."""
    try:
        manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - as in save
        raise _write_failed(manager, e) from e
    finally:
        manager.close()


def record_settings(config: TrainConfig, start: int) -> None:
    """Write ``OUTPUT_DIR/train_config.json``; when resuming, warn about every setting that
    differs from the run that wrote the checkpoints (main process only)."""
    if not is_main_process():
        return
    config_file = epath.Path(join(config.run.output_dir, "train_config.json"))
    settings = json.dumps(config.to_dict(), indent=2)
    if start and config_file.exists():
        # Compared as JSON, the form the earlier run wrote (tuples read back as lists).
        changed = changed_settings(json.loads(config_file.read_text()), json.loads(settings))
        if changed:
            log.warning("resuming %s at step %d with settings that differ from the run "
                        "that wrote its checkpoints: %s", config.run.output_dir, start,
                        "; ".join(changed))
    config_file.write_text(settings)


def changed_settings(before: dict, after: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two config dicts."""
    out = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_settings(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
