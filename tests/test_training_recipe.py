"""The reference's training recipe: weighted partial batches, per-epoch LR, validation."""

import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import make_slices, save_vae, tiny_config, write_shards

from configs.common import reference_recipe
from madad_jax import diffusion
from madad_jax.core import checkpoint
from madad_jax.data.errors import BadInputError
from madad_jax.diffusion.loss import Draws, compute_loss
from madad_jax.models import build_denoiser
from madad_jax.models.adapters import denoiser_fn
from madad_jax.sampling import loading
from madad_jax.training.optimizer import reference_epoch_lr
from madad_jax.training.run import train as run


def _setup():
    c = tiny_config()
    c.model.unet.dropout = 0.0
    model = build_denoiser(c)
    z0 = jax.random.normal(jax.random.key(1), (4, 16, 16, 4))
    params = model.init(jax.random.key(0), z0, jnp.zeros((4,), jnp.int32), False)["params"]
    draws, _ = diffusion.loss.draw(jax.random.key(2), z0, None, c.diffusion)
    return c, denoiser_fn(model), params, z0, draws


def test_padded_batch_loss_and_gradients_are_those_of_its_real_samples():
    c, apply_fn, params, z0, draws = _setup()
    # Rows 2 and 3 are padding: copies of row 0 with weight 0.
    padded_z0 = z0.at[2:].set(z0[:1])
    weight = jnp.array([1.0, 1.0, 0.0, 0.0])

    def padded(p):
        return compute_loss(apply_fn, p, padded_z0, draws, c, train=False, weight=weight)

    def real(p):
        d = Draws(draws.t[:2], draws.clean[:2], draws.noise[:2])
        return compute_loss(apply_fn, p, z0[:2], d, c, train=False)

    (lp, ap), gp = jax.value_and_grad(padded, has_aux=True)(params)
    (lr, ar), gr = jax.value_and_grad(real, has_aux=True)(params)
    for k in ("loss", "mse", "mask_loss", "mask_acc", "noised_frac"):
        np.testing.assert_allclose(ap[k], ar[k], rtol=1e-5, atol=1e-7)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(gr))
    for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gr), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_full_weights_equal_the_unweighted_loss():
    c, apply_fn, params, z0, draws = _setup()
    plain, _ = compute_loss(apply_fn, params, z0, draws, c, train=False)
    weighted, _ = compute_loss(apply_fn, params, z0, draws, c, train=False,
                               weight=jnp.ones((4,)))
    np.testing.assert_allclose(weighted, plain, rtol=1e-6, atol=1e-7)
    # ... and a zero weight really removes a sample.
    dropped, _ = compute_loss(apply_fn, params, z0, draws, c, train=False,
                              weight=jnp.array([1.0, 1.0, 1.0, 0.0]))
    assert abs(float(dropped) - float(plain)) > 1e-6


def _scalars(tb_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in TensorBoard event files (TFRecord framing, Event protos)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((int(event.step), float(v.simple_value)))
            pos += 12 + n + 4
    return out


def test_reference_recipe_run_logs_epochs_validates_and_keeps_best_copies(tmp_path):
    """`mode=train` with the reference recipe on 20 slices, batch 8: 3 steps per epoch, the
    last batch of each epoch holding 4 real slices, the LR constant within an epoch and equal
    to the reference's, validation after epochs 2 and 3, and two best copies to evaluate."""
    c = tiny_config()
    c.model.unet.dropout = 0.0
    c.data.train_path = write_shards(make_slices(20, 32, seed=3), str(tmp_path / "train.ar"))
    c.data.val_path = write_shards(make_slices(11, 32, seed=4), str(tmp_path / "val.ar"))
    c.vae_train.checkpoint = save_vae(c, str(tmp_path / "vae"))
    c.train.update(dict(batch_size=8, num_epochs=3.0, warmup_epochs=1.0, lr=1e-3,
                        log_every_steps=1, checkpoint_every_steps=3))
    reference_recipe(c)
    c.train.val_every_epochs = 1
    c.data.augment = False
    c.lock()
    before = c.to_json_best_effort()
    run(c, str(tmp_path / "run"))
    assert c.to_json_best_effort() == before  # the run derives, it never edits the config

    tb = _scalars(tmp_path / "run" / "tb")
    lrs = dict(tb["train_epoch/lr"])
    assert sorted(lrs) == [3, 6, 9]
    for epoch, step in enumerate((3, 6, 9)):
        assert lrs[step] == pytest.approx(reference_epoch_lr(epoch, 1e-3, 1, 3), rel=1e-6,
                                          abs=1e-12)  # float32 in the event file
    assert lrs[3] == 0.0  # epoch 0 runs at LR 0, as in the reference
    assert dict(tb["train_epoch/real_samples"]) == {3: 4.0, 6: 4.0, 9: 4.0}
    val_steps = sorted(s for s, _ in tb["train_val/mse_sum"])
    assert val_steps == [6, 9]  # not after the first epoch, then every epoch
    for name in ("best_mse", "best_mask_prediction"):
        assert checkpoint.latest_step(str(tmp_path / "run" / name)) in (6, 9)
    assert not (tmp_path / "run" / "best_checkpoint").exists()

    e = c.copy_and_resolve_references()
    e.evaluate.checkpoint = "best_mse"
    path = loading.run_checkpoint(e, str(tmp_path / "run"))
    assert path.endswith("best_mse")
    restored = loading.restore(path)
    assert set(restored.params) == {"vae", "denoiser"}
    e.evaluate.checkpoint = "best_loss"
    with pytest.raises(BadInputError, match="no best_loss checkpoint"):
        loading.run_checkpoint(e, str(tmp_path / "run"))
