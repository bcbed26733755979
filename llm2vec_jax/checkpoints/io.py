"""Writing directories so that a reader sees the old one or the new one, never a mix; joining
output paths that may be remote (gs://).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from typing import Iterator

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the C
    library or the filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(code, f"cannot exchange {a} and {b}: {os.strerror(code)}")


def replace_directory(src: str, dst: str) -> None:
    """Put the complete directory ``src`` at ``dst``.

    An existing ``dst`` is swapped with ``src`` in one step where the system allows it, so
    there is no moment when neither exists; elsewhere it is moved aside first, and put back
    if the rename fails.
    """
    if not os.path.lexists(dst):
        os.rename(src, dst)
        return
    if _exchange(src, dst):
        shutil.rmtree(src)  # now the old directory
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.old-", dir=os.path.dirname(dst))
    os.rmdir(old)
    os.rename(dst, old)
    try:
        os.rename(src, dst)
    except BaseException:
        os.rename(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(out_dir: str | os.PathLike, *, overwrite: bool = True,
                     keep_existing: bool = False) -> Iterator[str]:
    """Yield a temporary sibling of ``out_dir`` to write into; on success it replaces
    ``out_dir`` whole (``replace_directory``), on failure it is removed and ``out_dir`` is
    untouched. ``overwrite=False`` refuses an existing non-empty ``out_dir``;
    ``keep_existing`` starts the staging directory as a copy of it (files the writer does not
    rewrite survive)."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir!r} exists and is not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir!r} exists and is not empty; pass overwrite=True "
                              "(or --overwrite) to replace it")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the result should look like mkdir's
        if keep_existing and os.path.isdir(out_dir):
            shutil.copytree(out_dir, tmp, dirs_exist_ok=True)
        yield tmp
        replace_directory(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_remote(path: str) -> bool:
    """gs://, s3:// …: written through etils.epath (GCS needs ``pip install gcsfs``)."""
    return "://" in path


def join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}" if is_remote(directory) else os.path.join(directory, name)
