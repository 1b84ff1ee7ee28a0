"""A lost peer of a multi-process run, reported in one line instead of the runtime's abort.

When one process of a `jax.distributed` run dies, the others end on their own: a collective
fails at once (gloo sees the closed socket), or the coordination service misses the dead
process's heartbeats for `distributed.heartbeat_timeout_s` and the runtime aborts every
survivor (SIGABRT) with a multi-line C++ log. No Python code runs at that abort, and the
jaxlib's missed-heartbeat callback cannot be set from Python (its status argument does not
convert). So a multi-process `madad_jax.main` is two processes:

- the *supervisor* (`supervise`) starts the same command as a child, forwards SIGTERM and
  SIGINT to it, and returns its exit code; when the child ends by the runtime's abort, it
  reads the child's runtime log and says in one line which process was lost;
- the *child* (`child_streams`) sends file descriptor 2 (where the C++ runtime, gloo and
  faulthandler write) to that log, and keeps Python's `sys.stderr` (errors, warnings,
  progress) on the terminal. A collective that fails because a peer died
  (`is_peer_failure`) waits there for the runtime's verdict (`await_verdict`) instead of
  printing a traceback.

A survivor ends within `distributed.heartbeat_timeout_s` + `VERDICT_SLACK_S` of the loss.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from madad_jax.core.errors import LOST_PEER_EXIT

CHILD_ENV = "MADAD_PEER_LOG"  # set in the child: the path of its runtime log
VERDICT_SLACK_S = 30
# Texts of a collective or coordination failure that a dead peer causes.
_PEER_FAILURE = re.compile(
    r"Gloo|Connection reset|Connection closed|Socket closed|heartbeat|coordination service"
    r"|UNAVAILABLE", re.I)
_ABORT = "JAX distributed service detected fatal errors"


def in_child() -> bool:
    return bool(os.environ.get(CHILD_ENV))


def child_streams() -> None:
    """In the child: fd 2 to the runtime log, Python's stderr on the inherited stream."""
    terminal = os.dup(2)
    log = os.open(os.environ[CHILD_ENV], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    os.close(log)
    sys.stderr = os.fdopen(terminal, "w", buffering=1)


def is_peer_failure(err: BaseException) -> bool:
    """A runtime error of a collective or of the coordination service, in a child."""
    import jax

    return (in_child() and isinstance(err, jax.errors.JaxRuntimeError)
            and bool(_PEER_FAILURE.search(str(err))))


def await_verdict(err: BaseException, heartbeat_timeout_s: int) -> None:
    """Log `err` for the supervisor and wait for the runtime to name the lost peer (it
    aborts this process); past the bound, exit with `LOST_PEER_EXIT` in one line."""
    os.write(2, f"madad: collective failed: {err}\n".encode(errors="replace"))
    time.sleep(heartbeat_timeout_s + VERDICT_SLACK_S / 2)
    first = " ".join(str(err).split())[:300]
    print(f"error: a collective failed and no lost peer was named within "
          f"{heartbeat_timeout_s + VERDICT_SLACK_S // 2} s: {first}", file=sys.stderr,
          flush=True)
    os._exit(LOST_PEER_EXIT)


def lost_peer(log: str) -> str:
    """Which process the runtime's log says was lost, in words."""
    tasks = re.findall(r"Task (\d+) heartbeat timeout", log)
    unhealthy = re.search(r"unhealthy \(stopped sending heartbeats\):\s*([\d,\s]+?)\s*\n\S",
                          log)
    if unhealthy:
        tasks += re.findall(r"\d+", unhealthy.group(1))
    if tasks:
        ids = sorted(set(tasks), key=int)
        return f"process {', '.join(ids)} stopped sending heartbeats"
    if re.search(r"Failed to send RPC to coordination service|leader task", log):
        return "process 0 (the coordinator) is unreachable"
    if "collective failed" in log:
        return "a peer closed its connection during a collective"
    return "a peer failed (the runtime named none)"


def supervise(argv: list[str], process_id: int, workdir: str) -> int:
    """Run `python -m madad_jax.main argv[1:]` as the child; its exit code, or on the
    runtime's abort one line naming the lost peer and `LOST_PEER_EXIT`."""
    who = f"process {process_id}" if process_id >= 0 else "this process"
    fd, log_path = tempfile.mkstemp(prefix=f"madad-process{max(process_id, 0)}-",
                                    suffix=".log")
    os.close(fd)
    env = dict(os.environ, **{CHILD_ENV: log_path})
    # The child has its own process group, so a signal to this one's group (Ctrl-C, the
    # scheduler's TERM) reaches it once, forwarded here; it dies with this process.
    child = subprocess.Popen([sys.executable, "-m", "madad_jax.main", *argv[1:]], env=env,
                             process_group=0, preexec_fn=_die_with_parent)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: child.poll() is None and child.send_signal(s))
    rc = child.wait()
    t_end = time.time()
    log = Path(log_path).read_text(errors="replace")
    if rc != -signal.SIGABRT or _ABORT not in log and "collective failed" not in log:
        if rc == 0 or not log.strip():
            os.unlink(log_path)
        return rc if rc >= 0 else 128 - rc
    print(f"\nerror: lost peer: {lost_peer(log)}; {who} "
          f"ended at {time.strftime('%H:%M:%S', time.localtime(t_end))}. "
          f"{_resume_hint(workdir)} The runtime's log: {log_path}",
          file=sys.stderr, flush=True)
    return LOST_PEER_EXIT


def _die_with_parent() -> None:
    """In the forked child: SIGKILL when the supervisor dies (Linux; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _resume_hint(workdir: str) -> str:
    # Imported here, not at start-up; the file names alone, as Orbax's manager would log.
    from madad_jax.core import checkpoint

    run = checkpoint.run_directory(workdir)
    steps = checkpoint.step_numbers(run) if os.path.isdir(run) else []
    where = f"from step {steps[-1]}" if steps else "from the start (no checkpoint yet)"
    return f"Restart every process with the same command: training resumes {where}."
