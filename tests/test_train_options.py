"""Training options: EMA, the best-by-validation copy, bf16 compute, epochs -> steps."""

import struct

import jax
import numpy as np
import pytest
from train_helpers import (
    ArrayBatches,
    make_slices,
    random_vae_params,
    tiny_config,
    train_denoiser,
    write_shards,
)

from madad_jax.core import checkpoint, mesh
from madad_jax.training import denoiser as denoiser_task
from madad_jax.training import plan

pytestmark = pytest.mark.usefixtures("compilation_cache")


def _scalar_tags(tb_dir) -> set[str]:
    """Tags of the scalars in TensorBoard event files (TFRecord framing, Event protos)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for path in tb_dir.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            tags |= {v.tag for v in event.summary.value}
            pos += 12 + n + 4
    return tags


def _task(config):
    vae_abstract = jax.eval_shape(
        lambda: denoiser_task.init_vae_params(config, jax.random.PRNGKey(0)))
    return denoiser_task.DenoiserTask(config, mesh.make_mesh(config), vae_abstract,
                              random_vae_params(config))


def _ema_config():
    c = tiny_config("dit")
    c.train.update(dict(ema=True, ema_decay=0.9))
    return c


def test_ema_is_the_running_average():
    c = _ema_config()
    task = _task(c)
    state = task.init()
    p0 = jax.device_get(state["params"]["denoiser"])
    for e, p in zip(jax.tree.leaves(jax.device_get(state["ema"])), jax.tree.leaves(p0),
                    strict=True):
        np.testing.assert_array_equal(e, p)
    state, _ = task.step(state, task.put_batch(make_slices(8, 32)))
    p1, e1 = jax.device_get((state["params"]["denoiser"], state["ema"]))
    moved = 0
    for a, b, e in zip(jax.tree.leaves(p0), jax.tree.leaves(p1), jax.tree.leaves(e1),
                       strict=True):
        np.testing.assert_allclose(e, 0.9 * a + 0.1 * b, rtol=1e-6, atol=1e-7)
        moved += int(not np.array_equal(a, b))
    assert moved > 0


def test_ema_and_best_validation_checkpoints(tmp_path):
    c = _ema_config()
    c.train.update(dict(num_steps=4, checkpoint_every_steps=2, log_every_steps=2))
    data = make_slices(24, 32, seed=1)
    val = [{k: v[16 + 4 * i:16 + 4 * i + 8] for k, v in data.items()} for i in range(2)]
    train_denoiser(c, str(tmp_path), ArrayBatches(data, 8), random_vae_params(c), val)

    tags = _scalar_tags(tmp_path / "tb")
    assert {"train/loss", "train/mse", "train/mask_loss", "train/mask_acc", "train/lr",
            "train/grad_norm", "train/slices_per_s", "train_val/loss"} <= tags, tags
    ckpts = tmp_path / "checkpoints"
    assert "ema" in checkpoint.step_items(checkpoint.train_manager(str(ckpts), 2), 4)
    # Evaluation and analysis read the EMA weights when the checkpoint has them.
    import orbax.checkpoint as ocp

    from madad_jax import analysis

    with checkpoint.manager(str(ckpts)) as mngr:
        ema = mngr.restore(4, args=ocp.args.Composite(ema=ocp.args.StandardRestore()))["ema"]
    r_ema, r_raw = analysis.restore(tmp_path), analysis.restore(tmp_path, ema=False)
    assert r_ema.ema and not r_raw.ema
    for a, e in zip(jax.tree.leaves(r_ema.params["denoiser"]), jax.tree.leaves(ema),
                    strict=True):
        np.testing.assert_array_equal(a, e)
    assert any(not np.array_equal(e, raw) for e, raw in zip(
        jax.tree.leaves(ema), jax.tree.leaves(r_raw.params["denoiser"]), strict=True))
    best = tmp_path / "best_checkpoint"
    params, arch = checkpoint.load_params(str(best))  # loadable like any params checkpoint
    assert set(params) == {"vae", "denoiser"} and arch["image_size"] == 32
    assert checkpoint.latest_step(str(best)) in (2, 4)
    # EMA can be turned off on resume; turning it back on without EMA weights is an error.
    c.train.update(dict(ema=False, num_steps=6))
    train_denoiser(c, str(tmp_path), ArrayBatches(data, 8), None)
    assert "ema" not in checkpoint.step_items(checkpoint.train_manager(str(ckpts), 2), 6)
    c.train.update(dict(ema=True, num_steps=8))
    with pytest.raises(ValueError, match=r"lacks \['ema'\]"):
        train_denoiser(c, str(tmp_path), ArrayBatches(data, 8), None)


def test_bfloat16_compute_keeps_float32_state():
    c = tiny_config("dit")
    batch = make_slices(8, 32, seed=9)
    losses = {}
    for dtype in ("float32", "bfloat16"):
        c.model.dtype = dtype
        task = _task(c)
        state, m = task.step(task.init(), task.put_batch(batch))
        losses[dtype] = float(m["loss"])
        dtypes = {x.dtype for x in jax.tree.leaves((state["params"], state["opt_state"]))}
        assert dtypes <= {np.dtype("float32"), np.dtype("int32")}, dtypes
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.05)


def test_num_epochs_sets_the_step_counts(tmp_path):
    c = tiny_config()
    c.data.train_path = write_shards(make_slices(20, 32), str(tmp_path / "t.array_record"))
    c.train.update(dict(batch_size=8, num_epochs=3.0, warmup_epochs=0.5))
    steps = plan.epoch_steps(c, plan.slices_in(c.data.train_path))
    # ceil(20/8) = 3 steps per epoch
    assert (steps["train.num_steps"], steps["train.warmup_steps"]) == (9, 2)
