"""Atomic file writes and the one JSON cleaner.

Every output file is written under a temporary name in its own directory, flushed to disk
and renamed into place (`os.replace`), so a reader sees either the old file or the complete
new one, never a half-written file. Temporary names are `NAME.tmp-XXXX`, which the data
readers skip and the shard writer's cleanup removes. Only local paths: no writer here
ever took a URL.
"""

from __future__ import annotations

import contextlib
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
    except BaseException:
        if os.path.isdir(tmp) and directory:
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.remove(tmp)
        raise


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
