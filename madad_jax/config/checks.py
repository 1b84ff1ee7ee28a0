"""The helpers of `validation`: `ConfigError` and a `Checker` whose rules name the key.

`Checker(config).integer("train.batch_size", 1)` reads the key and raises
`ConfigError("train.batch_size", value, "must be >= 1")` when the value breaks the rule.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterable
from typing import Any

from madad_jax.core.errors import InputError


class ConfigError(InputError):
    """A config value that breaks a rule: `config.KEY=VALUE: RULE`."""

    def __init__(self, key: str, value: Any, rule: str, prefix: str = "config.") -> None:
        self.key, self.value, self.rule = key, value, rule
        super().__init__(f"{prefix}{key}={show(value)}: {rule}")


def show(value: Any) -> str:
    """A value as it would be written on the command line."""
    if isinstance(value, str):
        return value if value else "''"
    if isinstance(value, (list, tuple)):
        return str(tuple(value))
    return str(value)


def _get(config, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = node[part]
    return node


class Checker:
    """Rule helpers over one config; each raises `ConfigError` naming the key."""

    def __init__(self, config) -> None:
        self.config = config

    def __call__(self, key: str) -> Any:
        return _get(self.config, key)

    def fail(self, key: str, rule: str, value: Any = None) -> None:
        raise ConfigError(key, self(key) if value is None else value, rule)

    def choice(self, key: str, allowed: Iterable[str]) -> str:
        allowed = tuple(allowed)
        v = self(key)
        if not isinstance(v, str) or v not in allowed:
            self.fail(key, f"must be one of {' | '.join(allowed)}")
        return v

    def integer(self, key: str, lo: int | None = None, hi: int | None = None) -> int:
        v = self(key)
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(key, "must be an integer")
        if lo is not None and v < lo:
            self.fail(key, f"must be >= {lo}" if hi is None else f"must be in [{lo}, {hi}]")
        if hi is not None and v > hi:
            self.fail(key, f"must be <= {hi}" if lo is None else f"must be in [{lo}, {hi}]")
        return v

    def number(self, key: str, lo: float | None = None, hi: float | None = None, *,
               lo_open: bool = False, hi_open: bool = False) -> float:
        v = self(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.fail(key, "must be a finite number")
        below = lo is not None and (v <= lo if lo_open else v < lo)
        above = hi is not None and (v >= hi if hi_open else v > hi)
        if below or above:
            if lo is not None and hi is not None:
                rule = f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
            elif lo is not None:
                rule = f"must be {'>' if lo_open else '>='} {lo}"
            else:
                rule = f"must be {'<' if hi_open else '<='} {hi}"
            self.fail(key, rule)
        return float(v)

    def ints(self, key: str, lo: int = 1, empty: bool = False) -> tuple[int, ...]:
        v = self(key)
        ok = isinstance(v, (list, tuple)) and (empty or len(v) > 0) and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= lo for x in v)
        if not ok:
            what = "a tuple of integers" if empty else "a non-empty tuple of integers"
            self.fail(key, f"must be {what} >= {lo}")
        return tuple(v)

    def probs(self, key: str, n: int, against: str) -> None:
        v = self(key)
        if not isinstance(v, (list, tuple)) or len(v) != n:
            self.fail(key, f"must have one probability per {against} entry ({n})")
        if not all(isinstance(p, (int, float)) and math.isfinite(p) and p >= 0 for p in v):
            self.fail(key, "must be non-negative")
        if abs(sum(v) - 1.0) > 1e-6:
            self.fail(key, "must sum to 1")


def is_local(path: str) -> bool:
    return "://" not in path


def path_exists(path: str) -> bool:
    if any(ch in path for ch in "*?["):
        return bool(glob.glob(path))
    return os.path.exists(path)


def writable_dir(path: str) -> str | None:
    """Why `path` cannot be (or become) a writable directory; None when it can."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            return "exists and is not a directory"
        return None if os.access(path, os.W_OK | os.X_OK) else "is not writable"
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is not writable"
    return None


def scans_in(spec: str) -> bool:
    """Whether a folder (at any depth) or a glob holds a .nii / .nii.gz file."""
    pattern = os.path.join(spec, "**", "*.nii*") if os.path.isdir(spec) else spec
    return any(p.lower().endswith((".nii", ".nii.gz"))
               for p in glob.iglob(pattern, recursive=True))
