"""JAX's persistent compilation cache for a run: `config.compile_cache`.

A compiled program is stored on disk under a key that is a hash of everything that decides
what the program computes: the lowered StableHLO module (shapes, dtypes, constants, the
sharding), the jaxlib version, the backend and its version, the devices, the compile
options and the `XLA_FLAGS` in effect. A program that differs in any of these gets another
key and is compiled anew; an entry is only ever reused for the very program it was made
from, so an old cache can cost disk space but never change a result.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

AUTO = "auto"
SUBDIR = "compile_cache"  # `auto`'s folder inside the workdir


def resolve(setting: str, workdir: str) -> str | None:
    """The cache directory for `setting` (None: no persistent cache).

    `auto` keeps a directory already chosen for JAX (`JAX_COMPILATION_CACHE_DIR` or
    `jax.config`), else takes `WORKDIR/compile_cache`; "" disables the cache; any other
    value is the directory (`~` expanded).
    """
    import jax

    setting = str(setting).strip()
    if not setting:
        return None
    if setting == AUTO:
        chosen = jax.config.jax_compilation_cache_dir
        return chosen or os.path.join(workdir, SUBDIR)
    return os.path.expanduser(setting)


def _usable(path: str) -> bool:
    """Whether `path` is (or can be made) a writable directory; local paths only."""
    if "://" in path:
        return True  # a bucket: JAX's cache opens it with etils.epath
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


@contextlib.contextmanager
def enabled(path: str | None) -> Iterator[str | None]:
    """Compile with the persistent cache at `path` inside the block (None: without one).

    JAX's earlier cache settings come back afterwards. An unwritable `path` is reported as
    one `warning:` line and the run goes on without a cache (it only costs compile time).
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    key = "jax_compilation_cache_dir"
    old = jax.config.jax_compilation_cache_dir
    if path is not None and not _usable(path):
        print(f"warning: {path}: not a writable directory; compiling without a "
              f"persistent cache", file=sys.stderr, flush=True)
        path = None
    if path == old:
        yield path
        return
    cc.reset_cache()  # JAX opens its cache once: make it open the new directory
    jax.config.update(key, path)
    try:
        yield path
    finally:
        jax.config.update(key, old)
        cc.reset_cache()
