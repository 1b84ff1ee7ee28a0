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
