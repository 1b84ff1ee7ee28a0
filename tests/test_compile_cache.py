"""`config.compile_cache`: where the persistent cache goes, that a run sets it before any
work and puts JAX's settings back, and that a changed program is compiled anew while a
cached one gives exactly the result of a fresh compile."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache as cc

from configs import demo
from madad_jax import main
from madad_jax.config import ConfigError, validate
from madad_jax.core import compile_cache


@pytest.fixture
def no_jax_cache():
    """JAX without a cache directory, and every program cached however fast it compiles."""
    old = {k: getattr(jax.config, k) for k in (
        "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes")}
    cc.reset_cache()  # forget a cache an earlier test opened
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    yield
    for k, v in old.items():
        jax.config.update(k, v)
    cc.reset_cache()


def test_resolve(tmp_path, no_jax_cache):
    wd = str(tmp_path / "wd")
    assert compile_cache.resolve("auto", wd) == os.path.join(wd, "compile_cache")
    assert compile_cache.resolve("", wd) is None
    assert compile_cache.resolve("~/c", wd) == os.path.expanduser("~/c")
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "env"))
    assert compile_cache.resolve("auto", wd) == str(tmp_path / "env")  # JAX's own choice
    assert compile_cache.resolve(str(tmp_path / "x"), wd) == str(tmp_path / "x")


def test_run_sets_the_cache_and_restores_it(tmp_path, monkeypatch, no_jax_cache):
    seen = []
    monkeypatch.setattr(main, "_run_mode", lambda config, workdir, mode: seen.append(
        jax.config.jax_compilation_cache_dir))
    config = demo.get_config()
    config.mode = "train"
    main.run(config, str(tmp_path / "wd"))
    config.compile_cache = ""
    main.run(config, str(tmp_path / "wd2"))
    assert seen == [str(tmp_path / "wd" / "compile_cache"), None]
    assert jax.config.jax_compilation_cache_dir is None  # put back


def test_unwritable_directory_warns_and_runs_without(tmp_path, capsys, no_jax_cache):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with compile_cache.enabled(str(afile / "c")) as path:
        assert path is None and jax.config.jax_compilation_cache_dir is None
    assert capsys.readouterr().err.startswith("warning: ")


def test_validation_rule(tmp_path):
    (tmp_path / "afile").write_text("x")
    config = demo.get_config()
    config.compile_cache = str(tmp_path / "afile")
    with pytest.raises(ConfigError, match="compile_cache"):
        validate(config, devices=1, workdir=str(tmp_path / "wd"))
    for fine in ("", "auto", str(tmp_path / "new" / "cache")):
        config.compile_cache = fine
        validate(config, devices=1, workdir=str(tmp_path / "wd"))


def _program(scale: float):
    """A conv whose config (`scale`) is baked into the program as a constant."""
    def f(x, w):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(y * scale)
    return jax.jit(f)


def _entries(path) -> set[str]:
    return {n for n in os.listdir(path) if n.endswith("-cache")}


def test_changed_program_compiles_anew_with_the_uncached_result(tmp_path, no_jax_cache):
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    w = jax.random.normal(jax.random.key(1), (3, 3, 4, 8))
    fresh = {s: np.asarray(_program(s)(x, w)) for s in (2.0, 3.0)}  # no cache
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "before"))
    _program(5.0)(x, w)  # JAX opens its cache here, once
    cache = tmp_path / "cache"
    with compile_cache.enabled(str(cache)):
        jax.clear_caches()
        a = np.asarray(_program(2.0)(x, w))
        first = _entries(cache)
        assert len(first) == 1
        jax.clear_caches()  # the next compile must come from disk
        again = np.asarray(_program(2.0)(x, w))
        assert _entries(cache) == first  # a hit: nothing new written
        b = np.asarray(_program(3.0)(x, w))  # another config: another program
        assert len(_entries(cache)) == 2
    np.testing.assert_array_equal(a, fresh[2.0])
    np.testing.assert_array_equal(again, fresh[2.0])
    np.testing.assert_array_equal(b, fresh[3.0])
    assert not np.array_equal(fresh[2.0], fresh[3.0])
    assert len(_entries(tmp_path / "before")) == 1  # the earlier directory, untouched
