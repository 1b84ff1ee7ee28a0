"""Atomic file writes and the one JSON cleaner.

Every output file is written under a temporary name in its own directory, flushed to disk
and renamed into place (`os.replace`), so a reader sees either the old file or the complete
new one, never a half-written file. Temporary names are `NAME.tmp-XXXX`, which the data
readers skip and the shard writer's cleanup removes. Only local paths: no writer here
ever took a URL.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np


def to_json(x: Any) -> Any:
    """`x` as plain JSON values: dict keys as str, tuples as lists, numpy scalars and arrays as
    Python numbers and lists, NaN / inf as None."""
    if isinstance(x, dict):
        return {str(k): to_json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_json(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_json(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "",
                directory: bool = False) -> Iterator[str]:
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path`.

    For writers that want a file name (`savefig`, `np.savez`, `nib.save`, ...). The file gets
    the usual permissions (0666 less the umask; 0777 for a `directory`), not mkstemp's 0600.
    `suffix` keeps the extension some writers look at. If the block raises, the temporary
    file or directory is removed and `path` is left untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    prefix = f"{os.path.basename(path)}.tmp-"  # what the data cleaners look for
    if directory:
        tmp = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=folder)
    else:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        os.close(fd)
    try:
        yield tmp
        if not directory:
            _fsync(tmp)
        os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        _remove(tmp)
        if isinstance(err, OSError) and _names_tmp(err, tmp):
            raise named(err, path) from err
        raise


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(OSError):
            os.remove(path)


def _names_tmp(err: OSError, tmp: str) -> bool:
    """Whether `err` names no file or a file inside the temporary `tmp`."""
    name = os.fspath(err.filename) if err.filename is not None else ""
    return not name or os.path.abspath(name).startswith(os.path.abspath(tmp))


def named(err: OSError, path: str | os.PathLike) -> OSError:
    """`err` (same type and errno) naming `path`: the file the user asked for rather than
    a temporary name that no longer exists."""
    return type(err)(err.errno, err.strerror or str(err), os.fspath(path))


def check_writable(folder: str | os.PathLike) -> str:
    """Raise OSError naming `folder` unless files can be created in it (or, when it does not
    exist yet, in its nearest existing parent, where it would be made). A real test write:
    permission bits say nothing for root or on a read-only mount."""
    folder = os.path.abspath(os.fspath(folder))
    probe = folder
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", probe)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test.tmp-", dir=probe)
        os.close(fd)
        os.remove(tmp)
    except OSError as err:
        raise named(err, folder) from err
    return folder


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary directory beside `path`; when the block succeeds it becomes `path`.

    A result set is seen whole or not at all: an existing `path` is renamed away, the new
    one renamed in, then the old one deleted (if the second rename fails the old one is put
    back). If the block raises, the temporary directory is removed and `path` is untouched.
    """
    path = os.path.abspath(os.fspath(path))
    folder, base = os.path.split(path)
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f"{base}.tmp-", dir=folder)
    except OSError as err:
        raise named(err, path) from err
    old = None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if os.path.lexists(path):
            old = tempfile.mkdtemp(prefix=f"{base}.old-", dir=folder)
            os.rmdir(old)
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException as err:
        _remove(tmp)
        if old is not None and not os.path.lexists(path):
            with contextlib.suppress(OSError):  # else the old set stays as NAME.old-XXXX
                os.replace(old, path)
            old = None
        if isinstance(err, OSError) and _names_tmp(err, tmp):
            raise named(err, path) from err
        raise
    finally:
        if old is not None:
            _remove(old)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> str:
    """Write `data` (str is UTF-8 encoded) to `path` atomically; returns the path."""
    if isinstance(data, str):
        data = data.encode()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return os.fspath(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 1,
                      sort_keys: bool = True, allow_nan: bool = True) -> str:
    """`obj` as JSON text plus a final newline, written atomically (clean it with `to_json`
    first if it may hold numpy values or NaN)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan) + "\n"
    return atomic_write(path, text)
