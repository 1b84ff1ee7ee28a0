"""The embedded demo's command end to end, shrunk to a few subjects and a few steps.

`python -m madad_jax.main --config=configs/demo.py --workdir=DIR` with overrides: it must
build the synthetic data, train the autoencoder then the denoiser, evaluate, and leave the
checkpoints, `metrics.json` (model and intensity-threshold baseline) and the PNG panels.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# Small enough to compile and run in well under a minute on 2 cores.
SMOKE = (
    "--config.image_size=32",
    "--config.vae.resolution=32",
    "--config.vae.ch_mult=(1,2)",
    "--config.vae_train.enabled=True",  # train a small one instead of the shipped 64 px VAE
    "--config.vae_train.num_steps=2",
    "--config.vae_train.batch_size=4",
    "--config.vae_train.checkpoint_every_steps=2",
    "--config.model.unet.channel_mult=(1,)",
    "--config.model.unet.attention_resolutions=()",
    "--config.train.num_steps=3",
    "--config.train.batch_size=4",
    "--config.train.warmup_steps=1",
    "--config.train.checkpoint_every_steps=3",
    "--config.data.demo.n_train=2",
    "--config.data.demo.n_test=3",
    "--config.data.demo.n_val=3",
    "--config.data.demo.n_test_healthy=2",
    "--config.evaluate.select.ddim_steps=(1,2)",
    "--config.evaluate.select.flag_thresholds=(0.5,0.9)",
    "--config.evaluate.select.sigmas=(1.0,)",
    "--config.sample.ddim_steps=2",
    "--config.sample.batch_size=4",
    "--config.evaluate.batch_size=4",
)


def _demo_config():
    sys.path.insert(0, str(REPO))
    from configs import demo

    return demo.get_config()


def _steps(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_demo_command_end_to_end(tmp_path):
    workdir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as users run
    proc = subprocess.run(
        [sys.executable, "-m", "madad_jax.main", "--config=configs/demo.py",
         f"--workdir={workdir}", *SMOKE],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert _steps(workdir / "vae_checkpoints") == [2]
    assert _steps(workdir / "checkpoints") == [3]
    # data.cache_latents: the denoiser trained from moments encoded once by the new VAE.
    assert any((workdir / "latent_cache").glob("train*"))
    assert "latent whitening from the cached in-brain posterior means" in proc.stderr

    out = workdir / "evaluate"
    res = json.loads((out / "metrics.json").read_text())
    assert res["n_slices"] == 3 and res["image_size"] == 32 and res["checkpoint_step"] == 3
    # The healthy test subjects join the detection ranking only, not the pixel figures.
    det = res["detection"]["slice"]
    assert det["n"] == 5 and det["n_with_lesion"] == 3 and 0.0 <= det["auroc"] <= 1.0
    assert res["calibrated"]["healthy_test"]["n_units"] == 2
    # Settings and the baseline's variant chosen on the lesioned val split, never on test.
    assert res["selected_on"] == "val" and res["baseline"]["selected_on"] == "val"
    chosen = res["selection"]["chosen"]
    assert chosen["ddim_steps"] in (1, 2) and chosen["flag_threshold"] in (0.5, 0.9)
    assert res["ddim_steps"] == chosen["ddim_steps"] and res["map_source"] == chosen["map_source"]
    select = _demo_config().evaluate.select  # etas and map sources: the demo's own grid
    assert len(res["selection"]["candidates"]) == (
        2 * 2 * 1 * len(select.etas) * len(select.map_sources))
    assert set(res["ablations"]) == {"autoencoder", "unmasked", "reference_sampling", "mask_map"}
    assert res["ablations"]["reference_sampling"]["settings"]["ddim_steps"] == 10
    assert res["ablations"]["unmasked"]["settings"]["flag_threshold"] > 1.0
    for part in (res, res["baseline"], *res["ablations"].values()):
        for k in ("max_dice", "f1_max", "auroc", "ap"):
            assert isinstance(part[k], float) and math.isfinite(part[k]), (k, part[k])
            assert 0.0 <= part[k] <= 1.0, (k, part[k])

    with np.load(out / "anomaly_maps.npz") as z:
        assert z["anomaly_maps"].shape == (3, 32, 32)
        assert np.isfinite(z["anomaly_maps"]).all()
        assert all(n.startswith("demo_test_") for n in z["names"])

    png = (out / "panels.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert not list(out.glob(".*tmp*"))
    assert "evaluate: 3 slices" in proc.stdout

    # Resuming for one more step keeps the whitening the first run derived from its cache.
    from madad_jax.core import checkpoint

    white = checkpoint.load_arch(str(workdir / "checkpoints"))["latent_whitening"]
    assert np.shape(white["matrix"]) == (4, 4) and np.isfinite(white["matrix"]).all()
    assert np.abs(np.asarray(white["matrix"]) - np.eye(4)).max() > 1e-3
    proc = subprocess.run(
        [sys.executable, "-m", "madad_jax.main", "--config=configs/demo.py",
         f"--workdir={workdir}", *SMOKE, "--config.train.num_steps=4",
         "--config.train.checkpoint_every_steps=4"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _steps(workdir / "checkpoints")[-1] == 4
    assert checkpoint.load_arch(str(workdir / "checkpoints"))["latent_whitening"] == white


def test_demo_path_with_the_shipped_autoencoder(tmp_path):
    """The README's command as it is (64 px, the shipped VAE, the whole brain), shrunk to a
    few subjects, a tiny denoiser and a small select grid: nothing trains the autoencoder."""
    workdir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, "-m", "madad_jax.main", "--config=configs/demo.py",
         f"--workdir={workdir}", "--config.model.unet.channel_mult=(1,)",
         "--config.model.unet.attention_resolutions=()", "--config.train.num_steps=2",
         "--config.train.batch_size=4", "--config.train.warmup_steps=1",
         "--config.train.checkpoint_every_steps=2", "--config.data.demo.n_train=1",
         "--config.data.demo.n_val=2", "--config.data.demo.n_test=2",
         "--config.data.demo.n_test_healthy=0",
         "--config.evaluate.select.ddim_steps=(1,)", "--config.evaluate.select.sigmas=(2.0,)",
         "--config.evaluate.select.flag_thresholds=(0.5,)", "--config.evaluate.ablations=False"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (workdir / "vae_checkpoints").exists()
    from madad_jax.core import checkpoint

    # The run's checkpoint holds the shipped autoencoder's parameters, unchanged.
    shipped, _ = checkpoint.load_params(_demo_config().vae_train.pretrained)
    params, arch = checkpoint.load_params(str(workdir / "checkpoints"))
    assert arch["image_size"] == 64
    for a, b in zip(jax_leaves(params["vae"]), jax_leaves(shipped["vae"]), strict=True):
        np.testing.assert_array_equal(a, b)
    res = json.loads((workdir / "evaluate" / "metrics.json").read_text())
    assert res["n_slices"] == 2 and res["image_size"] == 64 and res["selected_on"] == "val"
    assert "ablations" not in res


def jax_leaves(tree) -> list[np.ndarray]:
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]
