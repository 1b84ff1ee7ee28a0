"""Train / val / test assignment by subject, stored in a JSON file and reused.

The first conversion of a data set draws the split and writes it; later conversions (another
modality, other slice options) read the same file, so a subject never lands in two splits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from madad_jax.core.errors import InputError
from madad_jax.data.errors import BadInputError
from madad_jax.data.records import read_json, write_json_atomic


def parse_fractions(text: str) -> dict[str, float]:
    """"train=0.8,val=0.1,test=0.1" -> {"train": 0.8, "val": 0.1, "test": 0.1}."""
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if not name.strip() or not value:
            raise InputError(f"bad split fraction {part!r}; expected NAME=FRACTION")
        out[name.strip()] = float(value)
    return out


def make_splits(
    subjects: Sequence[str], fractions: Mapping[str, float], seed: int = 0
) -> dict[str, list[str]]:
    """Randomly assign subjects to splits in the given proportions (largest remainder)."""
    names = sorted(set(subjects))
    total = sum(fractions.values())
    if total <= 0 or any(f < 0 for f in fractions.values()):
        raise InputError(f"split fractions must be >= 0 and not all 0, got {dict(fractions)}")
    exact = np.array([f / total * len(names) for f in fractions.values()])
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: len(names) - counts.sum()]:
        counts[i] += 1
    order = np.random.default_rng(seed).permutation(len(names))
    out, start = {}, 0
    for name, n in zip(fractions, counts, strict=True):
        out[name] = sorted(names[i] for i in order[start : start + n])
        start += n
    return out


def check_disjoint(splits: Mapping[str, Sequence[str]], path: str = "") -> None:
    seen: dict[str, str] = {}
    for split, subjects in splits.items():
        for s in subjects:
            if s in seen:
                raise BadInputError(path, f"subject {s} is in both {seen[s]} and {split}")
            seen[s] = split


def load_or_make_splits(
    path: str | os.PathLike,
    subjects: Sequence[str],
    fractions: Mapping[str, float],
    seed: int = 0,
) -> dict[str, list[str]]:
    """Read the split file at `path`, or draw a split and write it there.

    An existing file must cover every subject given, so that no new subject is silently
    put in a split where it could leak.
    """
    path = os.fspath(path)
    if os.path.exists(path):
        try:
            data = read_json(path)
            splits = {k: list(v) for k, v in data["splits"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise BadInputError(path, f"unreadable split file ({err})") from err
        check_disjoint(splits, path)
        known = {s for v in splits.values() for s in v}
        missing = sorted(set(subjects) - known)
        if missing:
            raise BadInputError(
                path,
                f"{len(missing)} subject(s) are not in this split file (first: {missing[0]}); "
                "remove the file to draw a new split",
            )
        return splits
    splits = make_splits(subjects, fractions, seed)
    check_disjoint(splits, path)
    write_json_atomic(path, {"seed": seed, "fractions": dict(fractions), "splits": splits})
    return splits
