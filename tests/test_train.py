"""The training step: schedule, mesh shardings, sharded == unsharded, learning, NaN guard."""

import math

import jax
import numpy as np
import pytest
from train_helpers import ArrayBatches, make_slices, random_vae_params, tiny_config, train_denoiser

from madad_jax.core import checkpoint, mesh
from madad_jax.training import denoiser as denoiser_task
from madad_jax.training import loop, optimizer

pytestmark = pytest.mark.usefixtures("compilation_cache")


def _task(config, devices=None):
    m = mesh.make_mesh(config, devices)
    vae_abstract = jax.eval_shape(
        lambda: denoiser_task.init_vae_params(config, jax.random.PRNGKey(0)))
    return denoiser_task.DenoiserTask(config, m, vae_abstract, random_vae_params(config))


def test_lr_schedule_warmup_then_cosine():
    c = tiny_config()
    c.train.update(dict(lr=1e-3, num_steps=110, warmup_steps=10, schedule="cosine"))
    s = optimizer.lr_schedule(c.train)
    assert float(s(0)) == pytest.approx(1e-4)
    assert float(s(9)) == pytest.approx(1e-3)
    assert float(s(60)) == pytest.approx(0.5e-3, rel=1e-5)  # half-way through the decay
    assert float(s(110)) == pytest.approx(0.0, abs=1e-12)
    c.train.schedule = "constant"
    assert float(optimizer.lr_schedule(c.train)(100)) == pytest.approx(1e-3)


def test_mesh_shape_and_fsdp_rule():
    c = tiny_config()
    assert mesh.make_mesh(c).shape == {"data": 4, "fsdp": 1}
    c.mesh.update(dict(data=-1, fsdp=2))
    assert mesh.make_mesh(c).shape == {"data": 2, "fsdp": 2}
    c.mesh.fsdp = 3
    with pytest.raises(ValueError, match="does not divide"):
        mesh.make_mesh(c)
    P = jax.sharding.PartitionSpec
    assert mesh.fsdp_spec((3, 3, 64, 128), 2) == P(None, None, None, "fsdp")
    assert mesh.fsdp_spec((3, 3, 63, 129), 2) == P()  # nothing divisible
    assert mesh.fsdp_spec((128,), 2) == P()  # too small to be worth splitting
    assert mesh.fsdp_spec((64, 128), 1) == P()


def test_sharded_step_equals_single_device():
    """One step on 4 devices (data, then data x FSDP) gives the 1-device loss and params."""
    c = tiny_config("dit")
    batch = {k: v[:8] for k, v in make_slices(8, 32, seed=3).items()}
    results = {}
    for name, mesh_cfg, devices in (
        ("single", dict(data=1, fsdp=1, param_sharding="replicated"), jax.devices()[:1]),
        ("data4", dict(data=4, fsdp=1, param_sharding="replicated"), None),
        ("fsdp2", dict(data=2, fsdp=2, param_sharding="fsdp"), None),
    ):
        c.mesh.update(mesh_cfg)
        task = _task(c, devices)
        state = task.init()
        if name == "fsdp2":  # the rule really split something
            specs = jax.tree.leaves(jax.tree.map(lambda a: a.sharding.spec,
                                                 state["params"]["denoiser"]))
            assert any("fsdp" in tuple(s) for s in specs)
        state, metrics = task.step(state, task.put_batch(batch))
        results[name] = (jax.device_get(metrics), jax.device_get(state["params"]["denoiser"]))
    ref_m, ref_p = results["single"]
    for name in ("data4", "fsdp2"):
        m, p = results[name]
        assert abs(float(m["loss"]) - float(ref_m["loss"])) <= 1e-6 * max(1.0, abs(ref_m["loss"]))
        assert float(m["grad_norm"]) == pytest.approx(float(ref_m["grad_norm"]), rel=1e-5)
        diffs = jax.tree.leaves(jax.tree.map(lambda a, b: np.max(np.abs(a - b)), p, ref_p))
        assert max(diffs) < 1e-6, name


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    c = tiny_config("unet")
    c.train.update(dict(lr=2e-3, warmup_steps=1, num_steps=1000, schedule="constant"))
    task = _task(c)
    batch = task.put_batch(make_slices(8, 32, seed=5))
    state = task.init()
    losses = []
    for _ in range(24):
        state, m = task.step(state, batch)
        losses.append(float(m["loss"]))
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert all(math.isfinite(x) for x in losses)
    assert last < 0.7 * first, losses


class NaNAt(ArrayBatches):
    """ArrayBatches whose batch number `bad` holds a NaN pixel."""

    def __init__(self, *args, bad: int, **kw):
        super().__init__(*args, **kw)
        self.bad = bad

    def __next__(self):
        position = self.position
        b = super().__next__()
        if position == self.bad:
            b = dict(b, image=b["image"].copy())
            b["image"][0, 5, 5, 0] = np.nan
        return b


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    c = tiny_config("dit")
    # The same program as the sharded test's 4-device step (the compile cache serves it).
    c.train.update(dict(num_steps=6, checkpoint_every_steps=2, log_every_steps=4))
    data = make_slices(16, 32)
    vae = random_vae_params(c)
    with pytest.raises(loop.TrainingDiverged, match="step 5.*last good checkpoint is step 4"):
        train_denoiser(c, str(tmp_path), NaNAt(data, 8, bad=4), vae)
    ckpt_dir = tmp_path / "checkpoints"
    assert checkpoint.latest_step(str(ckpt_dir)) == 4
    params, _ = checkpoint.load_params(str(ckpt_dir))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
