"""train.profile_steps: a jax.profiler trace of the chosen steps that TensorBoard opens."""

import jax.numpy as jnp
from train_helpers import tiny_config

from madad_jax.config import ConfigError, validate
from madad_jax.training import loop


def test_profile_trace_of_two_steps(tmp_path):
    state = {"x": jnp.ones(3)}
    tracing = False
    for step in range(5):
        tracing = loop._profile((1, 2), step, str(tmp_path), tracing, state)
        assert tracing == (step in (1, 2))
        state = {"x": state["x"] * 2}
    traces = list((tmp_path / "tb" / "profile").rglob("*.xplane.pb"))
    assert traces, "no TensorBoard profile written"


def test_profile_steps_setting():
    c = tiny_config()
    s = loop.LoopSettings.of("train", "/x", c.train)
    assert s.profile == ()
    c.train.profile_steps = (3, 1)
    try:
        validate(c, paths=False)
    except ConfigError as err:
        assert "train.profile_steps" in str(err)
    else:
        raise AssertionError("a decreasing profile_steps was accepted")
