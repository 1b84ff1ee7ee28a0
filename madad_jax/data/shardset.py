"""Write a set of ArrayRecord shards from input units, idempotently and resumably.

A unit is one input item (a subject's files, or one PNG slice) that yields zero or more
records. Units are chunked, in order, into shards. After each shard a progress file records
it with a fingerprint of its inputs (paths, sizes, modification times) and the settings, so
an interrupted conversion resumes at the first shard not done, and a finished one whose
inputs and settings have not changed is left as it is, once its size, checksum and record
count (also in the progress file) show that the file itself is intact.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm

from madad_jax.data import records
from madad_jax.data.errors import BadInputError, check_policy

log = logging.getLogger("madad_jax.data")


@dataclasses.dataclass(frozen=True)
class Unit:
    key: str  # unique within the set, e.g. a subject id or a slice stem
    subject: str
    inputs: tuple[tuple[str, str], ...]  # (role, path) of the files it reads

    def fingerprint(self) -> list:
        files = []
        for role, path in self.inputs:
            try:
                st = os.stat(path)
                files.append([role, os.path.abspath(path), st.st_size, st.st_mtime_ns])
            except OSError:
                files.append([role, os.path.abspath(path), None, None])
        return [self.key, files]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:32]


def progress_name(split: str) -> str:
    return f"{split}.progress.json"


def _clean(out_dir: str, split: str, keep: set[str]) -> None:
    """Remove leftovers of earlier runs: temporary files and shards not in this plan."""
    for path in glob.glob(os.path.join(glob.escape(out_dir), f"{glob.escape(split)}.*")):
        name = os.path.basename(path)
        stale_shard = records.is_shard_file(name, split) and name not in keep
        if ".tmp-" in name or stale_shard:
            os.remove(path)


def _finished_problem(path: str, entry: dict[str, Any]) -> str | None:
    """Why a shard the progress file lists as finished cannot be trusted, or None."""
    if "sha256" not in entry or "size" not in entry:
        return "no size and checksum recorded"
    return records.shard_problem(path, entry)


def _damaged_shards(manifest: dict[str, Any]) -> str:
    """The first shard of a finished set whose record count no longer reads back, or ''."""
    for shard, path in zip(manifest["shards"], manifest["shard_paths"], strict=True):
        problem = records.shard_problem(path, {"num_records": shard["num_records"]})
        if problem is not None:
            return f"{shard['file']}: {problem}"
    return ""


def _finished_shards(progress_path: str) -> dict[str, Any]:
    """The progress entries of the shards an interrupted run finished ({} when none).

    A shard's own fingerprint covers its inputs, the settings and (by its name) the shard
    count, so finished shards are reused even if other inputs changed."""
    if not os.path.exists(progress_path):
        return {}
    try:
        return dict(records.read_json(progress_path).get("shards", {}))
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _current_manifest(manifest_path: str, set_fp: str) -> dict[str, Any] | None:
    """The finished set's manifest when it is up to date and undamaged; otherwise None, with
    any old manifest removed (the old shard set is about to change)."""
    if not os.path.exists(manifest_path):
        return None
    try:
        old = records.read_manifest(manifest_path)
    except BadInputError:
        old = None
    if old is not None and old.get("fingerprint") == set_fp:
        damaged = _damaged_shards(old)
        if not damaged:
            log.info("%s: up to date", manifest_path)
            return old
        log.warning("%s: %s; converting again", manifest_path, damaged)
    os.remove(manifest_path)
    return None


def _write_shard(path: str, chunk: Sequence[Unit], fp: str,
                 make_records: Callable[[Unit], list[dict[str, Any]]], bad_input: str,
                 bar: tqdm) -> dict[str, Any]:
    """Write one shard of `chunk`'s records; returns its progress entry."""
    skipped, subjects = [], set()
    with records.ShardWriter(path) as writer:
        for unit in chunk:
            try:
                rows = make_records(unit)
            except BadInputError as err:
                if bad_input == "stop":
                    raise
                log.warning("skipped %s", err)
                skipped.append({"path": err.path, "problem": err.problem, "unit": unit.key})
                rows = []
            for row in rows:
                writer.write(row)
                subjects.add(row.get("subject", unit.subject))
            bar.update(1)
    return {
        "fingerprint": fp,
        **records.file_identity(path),
        "num_records": writer.num_records,
        "units": [u.key for u in chunk],
        "subjects": sorted(subjects),
        "skipped": skipped,
    }


def write_shard_set(
    units: Sequence[Unit],
    make_records: Callable[[Unit], list[dict[str, Any]]],
    out_dir: str | os.PathLike,
    split: str,
    *,
    units_per_shard: int,
    settings: dict[str, Any],
    bad_input: str = "skip",
    progress: bool = True,
) -> dict[str, Any]:
    """Convert `units` into `{out_dir}/{split}.array_record-*` plus `{split}.manifest.json`.

    Returns the manifest. With bad_input="stop" the first BadInputError propagates; shards
    finished before it stay (and are reused by the next run), the one being written is
    removed, and no manifest is written.
    """
    check_policy(bad_input)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    units = list(units)
    if len({u.key for u in units}) != len(units):
        raise ValueError("unit keys must be unique")
    count = max(1, math.ceil(len(units) / units_per_shard))
    chunks = [units[i * units_per_shard : (i + 1) * units_per_shard] for i in range(count)]
    names = [records.shard_name(split, i, count) for i in range(count)]
    shard_fps = [_digest([settings, [u.fingerprint() for u in c]]) for c in chunks]
    set_fp = _digest([split, settings, shard_fps])

    manifest_path = os.path.join(out_dir, records.manifest_name(split))
    progress_path = os.path.join(out_dir, progress_name(split))
    current = _current_manifest(manifest_path, set_fp)
    if current is not None:
        return current

    done = _finished_shards(progress_path)
    _clean(out_dir, split, keep=set(names))

    bar = tqdm(total=len(units), desc=f"{split}", unit="item", disable=not progress)
    for name, chunk, fp in zip(names, chunks, shard_fps, strict=True):
        path = os.path.join(out_dir, name)
        entry = done.get(name)
        if entry and entry.get("fingerprint") == fp and os.path.isfile(path):
            problem = _finished_problem(path, entry)
            if problem is None:
                bar.update(len(chunk))
                continue
            log.warning("%s: finished shard no longer matches its progress entry (%s); "
                        "rewriting it", path, problem)
        done[name] = _write_shard(path, chunk, fp, make_records, bad_input, bar)
        records.write_json_atomic(progress_path, {"fingerprint": set_fp, "shards": done})
    bar.close()

    all_skipped = [s for n in names for s in done[n]["skipped"]]
    if units and len(all_skipped) == len(units):
        first = all_skipped[0]
        raise BadInputError(
            out_dir,
            f"all {len(units)} inputs of split {split} were unusable "
            f"(first: {first['path']}: {first['problem']})",
        )
    shards = [{"file": n, **{k: done[n][k] for k in ("num_records", "units")}} for n in names]
    manifest = {
        "format": records.FORMAT,
        "split": split,
        "fingerprint": set_fp,
        "settings": settings,
        "num_records": sum(s["num_records"] for s in shards),
        "shards": shards,
        "subjects": sorted({s for n in names for s in done[n]["subjects"]}),
        "skipped": all_skipped,
    }
    records.write_json_atomic(manifest_path, manifest)
    if os.path.exists(progress_path):
        os.remove(progress_path)
    return records.read_manifest(manifest_path)
