"""One process at a time per directory: an atomic lock file holding its owner's PID and host.

`hold(DIR, "training")` hard-links a fully written record to `DIR/.lock`; a link fails when
the name exists, so exactly one process wins;
it removes the file when the block ends, also on an exception or SIGTERM (turned into a
normal unwinding here). A lock left by a process that died (same host, PID gone) is
reclaimed; one held from another host is never reclaimed, since its PID cannot be checked.
Nested `hold`s of one directory in one process share the lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from madad_jax.core.errors import InputError

LOCK_NAME = ".lock"
# A lock file that is still empty or unreadable after this long was left by a process
# killed between creating and writing it (on a file system without hard links, where
# `_place` creates it and then writes it), or is damaged.
_HALF_WRITTEN_S = 10.0
_held: dict[str, int] = {}  # real path of a locked directory -> nesting depth here


class DirectoryLocked(InputError):
    """Another live process holds the directory. `str(err)` is one line for stderr.

    A ValueError so that every command's one-line error reporting already covers it.
    """

    def __init__(self, directory: str, owner: dict, note: str = ""):
        self.directory, self.owner = directory, owner
        pid, host = owner.get("pid", "?"), owner.get("host", "?")
        what = owner.get("what") or "process"
        lock = os.path.join(directory, LOCK_NAME)
        super().__init__(
            f"{directory}: locked by pid {pid} on {host} (another {what} is using it{note}); "
            f"wait for it or remove {lock} if it is gone"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read(path: str) -> dict | None:
    """The lock's owner record; {} when the file is gone, None when it is unreadable."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _stale(path: str, owner: dict | None) -> tuple[bool, str]:
    """Whether the lock at `path` may be reclaimed, and a note for the refusal when not."""
    if owner is None:
        try:
            age = time.time() - os.stat(path).st_mtime
        except FileNotFoundError:
            return True, ""
        return age > _HALF_WRITTEN_S, "; its lock file is being written or unreadable"
    if owner.get("host") != socket.gethostname():
        return False, "; held from another host, so it is not reclaimed automatically"
    pid = owner.get("pid")
    return not (isinstance(pid, int) and pid > 0 and _alive(pid)), ""


def _acquire(directory: str, what: str) -> str:
    path = os.path.join(directory, LOCK_NAME)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
              "token": uuid.uuid4().hex, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    # The record is written to a private file first and hard-linked into place: the lock
    # appears whole or not at all, so a reader never meets it half written.
    text = json.dumps(record) + "\n"
    tmp = f"{path}.{record['token']}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    try:
        for _ in range(5):
            try:
                _place(tmp, path, text)
            except FileExistsError:
                owner = _read(path)
                if owner == {}:
                    continue  # released meanwhile: try again
                stale, note = _stale(path, owner)
                if not stale:
                    raise DirectoryLocked(directory, owner or {}, note) from None
                # Reclaim only the file judged stale, not one a racing process just created.
                if _read(path) == owner:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
                continue
            return record["token"]
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    raise DirectoryLocked(directory, _read(path) or {}, "; the lock file keeps changing")


def _place(tmp: str, path: str, text: str) -> None:
    """Create `path` holding `text` (the content of `tmp`), or raise FileExistsError."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise
    except OSError as err:  # a file system without hard links: create, then write
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        os.write(fd, text.encode())
    except BaseException:
        os.close(fd)
        os.remove(path)
        raise
    os.close(fd)


def _release(directory: str, token: str) -> None:
    path = os.path.join(directory, LOCK_NAME)
    owner = _read(path)
    if owner and owner.get("token") == token:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


class Terminated(SystemExit):
    """SIGTERM while a lock is held: unwinds the block (exit code 143 if uncaught); the
    commands report it in one line with `errors.PREEMPTED_EXIT`."""


def _raise_on_sigterm(signum, frame) -> None:
    # The process is on its way out: a second SIGTERM must not cut the unwinding short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated(128 + signum)


@contextlib.contextmanager
def _unwind_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM unwinds it (finally blocks run) instead of killing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:  # someone else handles it
        yield
        return
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:  # ignored once stopping
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def hold(directory: str | os.PathLike, what: str, *, enabled: bool = True,
         unwind_on_sigterm: bool = True) -> Iterator[None]:
    """Hold `directory/.lock` for the block (creating the directory); `what` names the job
    ("training", "conversion", ...) in another process's refusal.

    `enabled=False` (a host other than process 0, say) holds nothing. Bucket URLs are not
    locked: only local directories can hold a lock file. `unwind_on_sigterm=False`
    leaves SIGTERM to whoever handles it (JAX's preemption notifier in a multi-process run).
    """
    directory = os.fspath(directory)
    if not enabled or "://" in directory:
        yield
        return
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", directory)
    created = not os.path.exists(directory)
    os.makedirs(directory, exist_ok=True)
    key = os.path.realpath(directory)
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    token = _acquire(directory, what)
    _held[key] = 1
    try:
        with _unwind_on_sigterm() if unwind_on_sigterm else contextlib.nullcontext():
            yield
    finally:
        del _held[key]
        _release(directory, token)
        if created:  # a run that wrote nothing leaves no empty directory behind
            with contextlib.suppress(OSError):
                os.rmdir(directory)
