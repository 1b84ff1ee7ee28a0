"""The error raised for unusable input files, and the skip-or-stop policy around it."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TypeVar

from madad_jax.core.errors import InputError

log = logging.getLogger("madad_jax.data")

T = TypeVar("T")

POLICIES = ("skip", "stop")


class BadInputError(InputError):
    """An input file (or directory) that cannot be used, with the reason.

    `str(err)` is a single line, "PATH: PROBLEM", suitable for stderr.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = " ".join(str(problem).split())  # keep it on one line
        super().__init__(f"{self.path}: {self.problem}")


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"bad_input policy must be one of {POLICIES}, got {policy!r}")
    return policy


def apply_policy(fn: Callable[[], T], policy: str) -> T | None:
    """Run `fn`; on BadInputError re-raise ("stop") or log one line and return None ("skip")."""
    check_policy(policy)
    try:
        return fn()
    except BadInputError as err:
        if policy == "stop":
            raise
        log.warning("skipped %s", err)
        return None
