"""SIGTERM as a request to stop at the next step boundary, not as an immediate exit.

`watch()` wraps a training loop: the first SIGTERM only sets a flag, which the loop checks
after each step (`Watch.reached`), saves there and raises `errors.Preempted`. Further
SIGTERMs while it saves change nothing, so the save completes whole. Outside the loop the
workdir lock's own handler (`core.locks`) turns SIGTERM into an unwinding `Terminated`.

With several processes (`jax.distributed`), one process's signal must not make it save
alone (the save is a collective): there the decision is JAX's preemption sync point,
through Orbax's `CheckpointManager.reached_preemption`, which all processes agree on.
JAX's own notifier then owns SIGTERM, and `watch()` leaves the handler alone.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any


class Watch:
    """Whether a stop was requested; `signals` counts the SIGTERMs received."""

    def __init__(self) -> None:
        self.signals = 0

    def handle(self, signum: int, frame: Any) -> None:
        self.signals += 1

    def reached(self, step: int, manager: Any = None) -> bool:
        """True when the loop should save at `step` and stop (the same answer on every
        process where several run)."""
        import jax

        if jax.process_count() > 1:
            return manager is not None and bool(manager.reached_preemption(step))
        return self.signals > 0


def _ours_to_replace(handler: Callable | int | None) -> bool:
    """SIG_DFL, or a Python handler (the workdir lock's); not a C-level one (None: JAX's
    preemption notifier) nor SIG_IGN."""
    return handler is signal.SIG_DFL or callable(handler)


@contextlib.contextmanager
def watch() -> Iterator[Watch]:
    """For the block, SIGTERM sets `Watch.signals` instead of unwinding or killing."""
    w = Watch()
    if threading.current_thread() is not threading.main_thread():
        yield w
        return
    import jax

    previous = signal.getsignal(signal.SIGTERM)
    if jax.process_count() > 1 or not _ours_to_replace(previous):
        yield w
        return
    signal.signal(signal.SIGTERM, w.handle)
    try:
        yield w
    finally:  # once asked to stop, later SIGTERMs must not cut the exit short
        signal.signal(signal.SIGTERM, signal.SIG_IGN if w.signals else previous)
