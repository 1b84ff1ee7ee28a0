"""The project's own error types: the only ones (with `OSError`) that `madad_jax.main`
reports in one `error:` line. Anything else is a bug and keeps its traceback.

- `MadadError`: the base; a run that cannot go on for a reason the user can act on.
- `InputError`: unusable input (a config value, a file, a checkpoint, a data set); a
  `ValueError` too, so callers that catch `ValueError` keep working.
"""

from __future__ import annotations


class MadadError(Exception):
    """A run that cannot go on, for a reason stated in one line."""


class InputError(MadadError, ValueError):
    """Input that cannot be used: `str(err)` says which and why, in one line."""


# The exit code of a run stopped by SIGTERM (a preemption) after it saved what it had done:
# EX_TEMPFAIL of sysexits.h, "try again". The launch scripts retry on it.
PREEMPTED_EXIT = 75
# The exit code of a multi-process run that lost a peer (`core.peers`): every process must
# be restarted; the same command resumes from the last checkpoint. The launch scripts retry.
LOST_PEER_EXIT = 76


class Preempted(MadadError):
    """SIGTERM (or the multi-host preemption notice) stopped the run at a clean boundary,
    after its work so far was saved; the same command resumes it."""

    exit_code = PREEMPTED_EXIT
