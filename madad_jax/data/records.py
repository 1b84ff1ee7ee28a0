"""The record codec and the ArrayRecord shard files that hold one record per slice.

A record is a msgpack map. Arrays are stored as raw bytes with their dtype and shape;
strings, numbers, booleans and None are stored as they are. A slice record holds
`image` (H,W) float32 in [-1,1] (-1 outside the brain), `brainmask` (H,W) uint8,
`segmentation` (H,W) uint8 when the source has one, and its provenance: `source`,
`subject`, `name`, `modality`, `slice_index`, `axis`, `affine` (4,4) float64 and
`geometry` (JSON: how the slice maps back into its volume).

Shards are written under a temporary name and renamed when complete, so a reader never
sees a partial shard. Shard files are named `{split}.array_record-{i:05d}-of-{n:05d}` and
each shard set has a JSON manifest `{split}.manifest.json`.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgpack
import numpy as np

from madad_jax.core import files
from madad_jax.core.files import write_json_atomic  # noqa: F401 (data/ writes JSON with it)

FORMAT = "madad-jax-slices/1"
_ND = "__nd__"
_SHARD_RE = re.compile(r"^(?P<split>.+)\.array_record-(?P<i>\d{5})-of-(?P<n>\d{5})$")


def _pack(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        return {_ND: True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _pack(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_pack(v) for v in value]
    return value


def _unpack(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get(_ND) is True:
            arr = np.frombuffer(value["data"], dtype=np.dtype(value["dtype"]))
            return arr.reshape(value["shape"]).copy()
        return {k: _unpack(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unpack(v) for v in value]
    return value


def encode_record(example: Mapping[str, Any]) -> bytes:
    """Serialize a dict of numpy arrays and plain values."""
    return msgpack.packb(_pack(example), use_bin_type=True)


def decode_record(data: bytes) -> dict[str, Any]:
    """Inverse of `encode_record`; arrays come back writable with their dtype and shape."""
    return _unpack(msgpack.unpackb(data, raw=False))


def normalize_example(example: Mapping[str, Any]) -> dict[str, Any]:
    """A decoded record, or a TFDS example of `tfds_builders`, as a plain slice record.

    TFDS text comes back as bytes and always has a `segmentation`; here text is str and
    `segmentation` is dropped where `has_segmentation` is False.
    """
    out = {}
    for k, v in example.items():
        if isinstance(v, np.ndarray) and v.dtype == object and v.ndim == 0:
            v = v.item()
        out[k] = v.decode() if isinstance(v, bytes) else v
    if not bool(out.pop("has_segmentation", True)):
        out.pop("segmentation", None)
    return out


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}.array_record-{index:05d}-of-{count:05d}"


def manifest_name(split: str) -> str:
    return f"{split}.manifest.json"


def is_shard_file(name: str, split: str | None = None) -> bool:
    m = _SHARD_RE.match(os.path.basename(name))
    return bool(m) and (split is None or m["split"] == split)


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO)


def _os_error(err: BaseException, path: str) -> BaseException:
    """The ArrayRecord writer's RuntimeError about a failed write as an OSError naming `path`
    (what the one-line error reporting expects); other errors as they are."""
    if not isinstance(err, RuntimeError):
        return err
    for code in _WRITE_ERRNOS:
        if os.strerror(code) in str(err):
            return OSError(code, os.strerror(code), path)
    return err


class ShardWriter:
    """Write records to `path` atomically: a temporary file, renamed on `close()`.

    Used as a context manager; if the block raises, the temporary file is removed and
    `path` is left untouched.
    """

    def __init__(self, path: str | os.PathLike):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.path = os.fspath(path)
        self._target = files.atomic_path(self.path)
        self._tmp = self._target.__enter__()
        try:
            self._writer = ArrayRecordWriter(self._tmp, "group_size:1")
        except BaseException as err:
            self._target.__exit__(type(err), err, err.__traceback__)
            raise
        self.num_records = 0

    def write(self, record: bytes | Mapping[str, Any]) -> None:
        if not isinstance(record, bytes):
            record = encode_record(record)
        try:
            self._writer.write(record)
        except RuntimeError as err:
            raise _os_error(err, self.path) from err
        self.num_records += 1

    def close(self) -> None:
        try:
            self._writer.close()
        except BaseException as err:
            self._target.__exit__(type(err), err, err.__traceback__)
            raise _os_error(err, self.path) from err
        self._target.__exit__(None, None, None)

    def abort(self) -> None:
        try:
            with contextlib.suppress(RuntimeError):  # e.g. the disk that failed the write
                self._writer.close()
        finally:
            err = RuntimeError("shard write aborted")
            self._target.__exit__(type(err), err, None)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_shard(path: str | os.PathLike, records: Iterable[bytes | Mapping[str, Any]]) -> int:
    """Write all `records` into one shard file atomically; returns the record count."""
    with ShardWriter(path) as w:
        for r in records:
            w.write(r)
    return w.num_records


def read_shard(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(os.fspath(path))
    try:
        for i in range(reader.num_records()):
            yield decode_record(reader.read([i])[0])
    finally:
        reader.close()


def count_records(path: str | os.PathLike) -> int:
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(os.fspath(path))
    try:
        return reader.num_records()
    finally:
        reader.close()


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """A finished file's size and sha256, recorded to check it before it is trusted again."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"size": os.path.getsize(path), "sha256": digest.hexdigest()}


def shard_problem(path: str | os.PathLike, expected: Mapping[str, Any]) -> str | None:
    """Why the shard at `path` no longer matches `expected` (its `num_records` and, where
    recorded, its `size` and `sha256`), or None when it still does."""
    try:
        if "size" in expected and os.path.getsize(path) != expected["size"]:
            return f"size {os.path.getsize(path)} != {expected['size']} bytes"
        if "sha256" in expected and file_identity(path)["sha256"] != expected["sha256"]:
            return "checksum differs"
        n = count_records(path)
    except FileNotFoundError:
        return "missing"
    except Exception as err:  # noqa: BLE001 (the reader raises plain RuntimeError)
        return f"unreadable ({' '.join(str(err).split())[:200]})"
    if "num_records" in expected and n != expected["num_records"]:
        return f"{n} records != {expected['num_records']}"
    return None


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Load a manifest and check that every shard it lists is present."""
    from madad_jax.data.errors import BadInputError

    try:
        manifest = read_json(path)
    except FileNotFoundError as err:
        raise BadInputError(path, "manifest not found") from err
    except (OSError, ValueError) as err:
        raise BadInputError(path, f"unreadable manifest ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadInputError(path, f"not a {FORMAT} manifest")
    folder = os.path.dirname(os.path.abspath(path))
    manifest["shard_paths"] = [os.path.join(folder, s["file"]) for s in manifest["shards"]]
    for p in manifest["shard_paths"]:
        if not os.path.isfile(p):
            raise BadInputError(p, "shard listed in the manifest is missing")
    return manifest


def resolve_shards(path: str | os.PathLike, split: str = "train") -> tuple[list[str], dict | None]:
    """Shard files and manifest (None for a bare glob) named by `path`.

    `path` may be a manifest file, a conversion output directory (its `{split}` manifest, or
    its only manifest), or a glob pattern of shard files.
    """
    from madad_jax.data.errors import BadInputError

    path = os.fspath(path)
    if path.endswith(".json"):
        m = read_manifest(path)
        return m["shard_paths"], m
    if os.path.isdir(path):
        own = os.path.join(path, manifest_name(split))
        if os.path.isfile(own):
            m = read_manifest(own)
            return m["shard_paths"], m
        found = sorted(glob.glob(os.path.join(glob.escape(path), "*.manifest.json")))
        if len(found) == 1:
            m = read_manifest(found[0])
            return m["shard_paths"], m
        what = f"manifests here: {[os.path.basename(f) for f in found]}" if found else "none"
        raise BadInputError(path, f"no {manifest_name(split)} ({what})")
    files = sorted(f for f in glob.glob(path) if ".tmp-" not in os.path.basename(f))
    if not files:
        raise BadInputError(path, "no shard files match")
    return files, None
