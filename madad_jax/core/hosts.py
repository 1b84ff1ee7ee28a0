"""Multi-host helpers: the barrier every stage uses between processes, and first calls of
jitted functions that meet only once every process has compiled them.

Both exist because of how a CPU run (gloo) sets up a collective: at the first call of a
computation over a set of devices, every process must arrive within 30 s (gloo's rendezvous
deadline, not configurable from JAX), or all fail with `Gloo context initialization failed:
DEADLINE_EXCEEDED`. One process may be tens of seconds behind another: compiling on a
slower or busier core, or writing shards only process 0 writes. So processes meet at the
coordination service's barriers, which wait as long as `BARRIER_TIMEOUT_S` (a dead peer
still ends the wait, through the missed heartbeats), and never in a collective first.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import jax

BARRIER_TIMEOUT_S = 3600  # a compile of a large model on a slow host, with room to spare
_barriers = itertools.count()  # every process passes the same barriers in the same order


def is_main() -> bool:
    """Whether this is process 0, the one that writes shared files."""
    return jax.process_index() == 0


def sync(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
    """Wait until every process reaches the barrier `name` (no-op with one process)."""
    if jax.process_count() > 1:
        from orbax.checkpoint import multihost

        # With `processes` given, Orbax waits at the coordination service's barrier rather
        # than in a collective (see the module docstring). Names must be unique: numbered.
        multihost.sync_global_processes(f"madad:{name}:{next(_barriers)}", timeout=timeout_s,
                                        processes=set(range(jax.process_count())))


def together(jitted: Any, name: str) -> Callable[..., Any]:
    """`jitted` (a `jax.jit` function), whose first call with each argument signature
    compiles ahead of time and waits at a barrier before it runs; with one process,
    `jitted` itself."""
    if jax.process_count() == 1:
        return jitted
    compiled: dict[Any, Any] = {}

    def call(*args: Any) -> Any:
        leaves, tree = jax.tree.flatten(args)
        key = (tree, tuple((getattr(x, "shape", None), str(getattr(x, "dtype", type(x))),
                            getattr(x, "sharding", None)) for x in leaves))
        fn = compiled.get(key)
        if fn is None:
            fn = compiled[key] = jitted.lower(*args).compile()
            sync(f"compiled {name}")
        return fn(*args)

    return call
