"""analysis.load restores config, models and params from a checkpoint or a workdir."""

import json

import jax
import numpy as np
import pytest

from madad_jax import analysis
from madad_jax.config import default_config
from madad_jax.core import checkpoint as ckpt
from madad_jax.data.errors import BadInputError
from madad_jax.models import AutoencoderKL, UNet


def test_load_imported_checkpoint_and_run_it(fixture_ckpt, case_dir):
    config, models, params = analysis.load(fixture_ckpt)
    case = json.loads((case_dir / "case.json").read_text())
    assert config.image_size == 64
    assert config.model.unet.model_channels == case["unet"]["model_channels"]
    assert tuple(config.vae.ch_mult) == tuple(case["vae"]["ch_mult"])
    assert isinstance(models.vae, AutoencoderKL) and isinstance(models.denoiser, UNet)
    assert set(params) == {"vae", "denoiser"}

    pipe = np.load(case_dir / "pipeline.npz")
    images = pipe["image"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    config.sample.update(eta=0.0, ddim_steps=2)
    out = analysis.anomaly_maps(config, models, params, images, jax.random.PRNGKey(0))
    assert out["anomaly_map"].shape == (6, 64, 64)
    assert out["sample"].shape == (6, 64, 64, 1)
    err = np.abs(out["anomaly_map"] - pipe["anomaly_map_ddim2"])
    assert err.mean() <= 5e-4, err.mean()

    # the mask head at the first DDIM step flags what the reference's first step changed
    p_anom = analysis.mask_head(config, models, params, images)
    flagged = pipe["steps_ddim2_flagged"][0][:, 0]  # (6, 8, 8), NCHW with C = 1
    assert p_anom.shape == flagged.shape
    assert ((p_anom > 0.5) == flagged).mean() >= 0.999


def test_load_workdir_with_stored_config(fixture_ckpt, tmp_path):
    params, arch = ckpt.load_params(fixture_ckpt)
    stored = default_config()
    stored.sample.ddim_steps = 5
    stored.data.modality = "FLAIR"
    stored.model.unet.model_channels = 999  # the arch item wins over the stored config
    workdir = tmp_path / "run"
    mngr = ckpt.train_manager(str(workdir / "checkpoints"), keep=2, async_save=False)
    for step in (10, 20):
        ckpt.save_train_state(mngr, step, {"params": params, "step": step}, arch,
                              json.loads(stored.to_json_best_effort()))
    mngr.wait_until_finished()
    mngr.close()

    config, models, loaded = analysis.load(str(workdir))
    assert config.sample.ddim_steps == 5 and config.data.modality == "FLAIR"
    assert config.model.unet.model_channels == arch["model"]["unet"]["model_channels"]
    assert config.checkpoint == str(workdir / "checkpoints")
    assert analysis.restore(str(workdir)).step == 20
    assert analysis.restore(str(workdir), step=10).step == 10
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        analysis.load(str(tmp_path / "absent"))
    with pytest.raises(BadInputError, match="no checkpoint found"):
        analysis.load(str(tmp_path))
    (tmp_path / "f").write_text("x")
    with pytest.raises(BadInputError, match="expected a checkpoint directory"):
        analysis.load(str(tmp_path / "f"))


def test_example_script_writes_a_figure(fixture_ckpt, case_dir, tmp_path):
    import importlib.util

    path = analysis.__file__.replace("madad_jax/analysis.py", "examples/analyze_checkpoint.py")
    spec = importlib.util.spec_from_file_location("analyze_checkpoint", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "fig.png"
    rc = script.main([fixture_ckpt, "--png-root", str(case_dir / "slices"), "--modality", "T2",
                      "--num-slices", "2", "--ddim-steps", "2", "--out", str(out)])
    assert rc == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
