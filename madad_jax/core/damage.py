"""What goes wrong with checkpoints, said in one line: damaged steps, OS errors, stray output.

- the errors: `CheckpointError` (no usable checkpoint at a path), `DamagedCheckpoint`;
- `restore_items`: a restore that names the damaged item and its file;
- `newest_readable`: resume from the newest step that reads, setting damaged ones aside;
- `os_error_of`: the OS error (a full disk, a read-only file system) inside Orbax's errors;
- `quiet_stderr` / `settle`: keep Orbax's background threads from repeating a failure;
- `remove_tmp_dirs`: the temporary directories a failed save leaves behind.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orbax.checkpoint as ocp

from madad_jax.core.errors import InputError
from madad_jax.core.iterator_state import iter_file

T = TypeVar("T")


class CheckpointError(InputError):
    """A path that holds no usable checkpoint, with the reason ("PATH: PROBLEM")."""

    def __init__(self, path: str, problem: str):
        self.path, self.problem = path, " ".join(str(problem).split())
        super().__init__(f"{path}: {self.problem}")


class DamagedCheckpoint(CheckpointError):
    """A checkpoint step that exists but fails to read: "STEP_DIR: checkpoint step N is
    damaged (item 'ITEM', FILE: ERROR)"."""

    def __init__(self, directory: str | os.PathLike, step: int, item: str | None,
                 err: BaseException):
        self.step, self.item = int(step), item
        step_dir = os.path.join(os.fspath(directory), str(step))
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        reason = f"{type(err).__name__}: {lines[0] if lines else ''}"
        if len(reason) > 300:
            reason = reason[:297] + "..."
        where = f"item '{item}', {_item_file(step_dir, item)}: " if item else ""
        super().__init__(step_dir, f"checkpoint step {step} is damaged ({where}{reason})")

    @classmethod
    def from_message(cls, path: str, problem: str) -> DamagedCheckpoint:
        """The same error again, from its path and problem, without the original."""
        err = cls.__new__(cls)
        CheckpointError.__init__(err, path, problem)
        err.step, err.item = None, None
        return err


def _item_file(step_dir: str, item: str) -> str:
    """The file (or directory) that holds `item` in a step."""
    folder = os.path.join(step_dir, item)
    if item == "data_iter":
        return os.path.join(folder, iter_file())
    meta = os.path.join(folder, "metadata")
    return meta if os.path.isfile(meta) else folder


def restore_items(mngr: ocp.CheckpointManager, step: int, items: dict[str, Any]) -> Any:
    """`mngr.restore` of the Composite `items` at `step`; a step that fails to read raises
    DamagedCheckpoint naming the step directory, the item and its file."""
    # Orbax's background threads print their own tracebacks of a failed read: keep them off
    # stderr, the raised error says it all.
    with quiet_stderr():
        try:
            return mngr.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:  # orbax and tensorstore raise many types for damaged files
            first = err
        # Read the items one by one to name the one that fails.
        for name, arg in items.items():
            try:
                mngr.restore(step, args=ocp.args.Composite(**{name: arg}))
            except Exception as err:  # noqa: BLE001 - reported as the damaged item
                settle()
                raise DamagedCheckpoint(mngr.directory, step, name, err) from err
        settle()
    raise DamagedCheckpoint(mngr.directory, step, None, first) from first


def settle(seconds: float = 0.5) -> None:
    """Let a failed read's pending callbacks and coroutines finish (call it while stderr is
    quiet: they report the same failure again, from other threads)."""
    gc.collect()
    time.sleep(seconds)
    gc.collect()


@contextlib.contextmanager
def quiet_stderr():
    """File descriptor 2 (every thread's stderr) to /dev/null while inside."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


TMP_MARK = ".orbax-checkpoint-tmp"


def remove_tmp_dirs(directory: str) -> None:
    """Remove the temporary step directories a failed or interrupted save left behind."""
    if "://" in directory or not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if TMP_MARK in name:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


_OS_MESSAGES = {errno.ENOSPC: "No space left on device", errno.EROFS: "Read-only file system",
                errno.EDQUOT: "Disk quota exceeded"}


def os_error_of(err: BaseException, directory: str) -> OSError | None:
    """The OS error behind a failed checkpoint save (Orbax and TensorStore wrap it in their
    own exception types, or only in the message), as an OSError naming `directory`."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return type(e)(e.errno, e.strerror or str(e), e.filename or directory)
        text = str(e)
        for code, message in _OS_MESSAGES.items():
            if message.lower() in text.lower():
                return OSError(code, message, directory)
        e = e.__cause__ or e.__context__
    return None


def newest_readable(steps: Sequence[int], restore: Callable[[int], T],
                    fallback: bool = False) -> tuple[int, T, bool] | None:
    """`(step, restore(step), whether steps were set aside)` of the newest of `steps`
    (newest first); None when there is none.

    A damaged newest step raises DamagedCheckpoint; with `fallback` the newest step that
    restores is used instead, after one note line on stderr per damaged step. A damaged step
    is never deleted: it is renamed `N.damaged` beside the others (Orbax ignores that name)
    so that the resumed run can write step N again.
    """
    damaged: list[tuple[str, str]] = []  # (step directory, problem): not the exceptions,
    for step in steps:                   # whose frames would keep failed reads alive
        try:
            value = restore(step)
        except DamagedCheckpoint as err:
            if not fallback:
                raise
            damaged.append((err.path, err.problem))
            continue
        if damaged:
            with quiet_stderr():  # the failed reads' coroutines report once more when freed
                settle(0.1)
        for path, problem in damaged:
            moved = _set_aside(path)
            print(f"note: {path}: {problem}; resuming from step {step} (train.resume_from_damaged="
                  f"previous); the damaged step is kept as {moved}", file=sys.stderr,
                  flush=True)
        return step, value, bool(damaged)
    if damaged:
        raise DamagedCheckpoint.from_message(*damaged[0])
    return None


def _set_aside(step_dir: str) -> str:
    target = f"{step_dir}.damaged"
    n = 1
    while os.path.exists(target):
        n += 1
        target = f"{step_dir}.damaged{n}"
    os.rename(step_dir, target)
    return target
