"""Multi-host helpers: the one barrier every stage uses between processes."""

from __future__ import annotations

import jax


def is_main() -> bool:
    """Whether this is process 0, the one that writes shared files."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Wait until every process reaches the barrier `name` (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
