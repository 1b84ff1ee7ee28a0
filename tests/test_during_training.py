"""`train.eval_every_steps`: val slices scored while the denoiser trains, into DIR/tb."""

import math
from pathlib import Path

import numpy as np
import pytest
from train_helpers import ArrayBatches, make_slices, random_vae_params, tiny_config, train_denoiser

from madad_jax.evaluation import during_training

pytestmark = pytest.mark.usefixtures("compilation_cache")


def _config(every: int):
    c = tiny_config()
    c.data.kind = "demo"
    c.data.demo.update(dict(n_train=1, n_val=2, n_test=1))
    c.sample.ddim_steps = 2
    c.train.update(dict(num_steps=4, checkpoint_every_steps=4, log_every_steps=4,
                        eval_every_steps=every))
    return c


def test_zero_keeps_training_as_it_was(tmp_path):
    assert during_training.probe(_config(0), str(tmp_path)) is None


def test_scores_and_panel_every_n_steps_into_tensorboard(tmp_path):
    c = _config(2)
    hook = during_training.probe(c, str(tmp_path))
    assert hook is not None
    seen: list[tuple[int, dict]] = []
    images: list[tuple[int, str, np.ndarray]] = []

    def on_step(done, state, log):
        scalars, image = log.scalars, log.image

        def record_scalars(step, values, prefix=None):
            seen.append((step, dict(values), prefix))
            scalars(step, values, prefix=prefix)

        def record_image(step, tag, array):
            images.append((step, tag, array))
            image(step, tag, array)

        log.scalars, log.image = record_scalars, record_image
        try:
            hook(done, state, log)
        finally:
            log.scalars, log.image = scalars, image

    train_denoiser(c, str(tmp_path), ArrayBatches(make_slices(16, 32), 8),
                   random_vae_params(c), on_step=on_step)
    probes = [(step, v) for step, v, prefix in seen if prefix == "train_eval"]
    assert [step for step, _ in probes] == [2, 4]
    for _, v in probes:
        assert set(v) == {"max_dice", "auroc", "ap", "mask_head_auroc"}
        for k in ("max_dice", "auroc", "ap"):
            assert 0.0 <= v[k] <= 1.0, v
        assert math.isnan(v["mask_head_auroc"]) or 0.0 <= v["mask_head_auroc"] <= 1.0
    assert [(step, tag) for step, tag, _ in images] == [(2, "train_eval/panels"),
                                                        (4, "train_eval/panels")]
    panel = images[0][2]
    n = min(during_training.PROBE_SLICES, len(panel) // 32)
    assert panel.shape == (n * 32, 4 * 32) and 0.0 <= panel.min() and panel.max() <= 1.0
    events = b"".join(p.read_bytes() for p in Path(tmp_path, "tb").glob("events.*"))
    assert b"train_eval/max_dice" in events and b"train_eval/panels" in events


def test_panel_rows_are_input_sample_map_truth():
    img = np.zeros((2, 4, 4, 1), np.float32)
    img[1] = 2.0
    seg = np.zeros((2, 4, 4), np.float32)
    seg[0, 1, 1] = 1
    maps = np.full((2, 4, 4), 3.0, np.float32)  # clipped to 1
    p = during_training.panel(img, img, maps, seg)
    assert p.shape == (8, 16)
    assert p[4:, :4].min() == 1.0 and p[:4, :4].max() == 0.0  # scaled over the batch
    assert (p[:, 8:12] == 1.0).all() and p[1, 13] == 1.0 and p[0, 12] == 0.0
