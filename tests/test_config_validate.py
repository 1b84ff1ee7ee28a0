"""`madad_jax.config.validate`: one row per rule, the shipped configs, and the CLI's one line.

Each row overrides keys of the demo config and expects `ConfigError` naming the key, the value
and the rule. The CLI rows run `python -m madad_jax.main` and check that a bad value ends in one
`error: config.KEY=VALUE: RULE` line, exit 1, with no traceback and no workdir created.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from madad_jax import config as config_lib
from madad_jax.config import ConfigError, show, validate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (overrides applied in order, the key named, a substring of the rule)
ROWS = [
    ({"mode": "sing"}, "mode", "must be one of"),
    ({"image_size": 0}, "image_size", ">= 1"),
    ({"image_size": 63}, "image_size", "downsampling factor 4"),
    ({"latent_scale": 0.0}, "latent_scale", "> 0"),
    ({"vae.ch": 48}, "vae.ch", "multiple of 32"),
    ({"vae.ch_mult": (1, 1.5)}, "vae.ch_mult", "tuple of integers"),
    ({"vae.ch_mult": ()}, "vae.ch_mult", "non-empty"),
    ({"vae.num_res_blocks": 0}, "vae.num_res_blocks", ">= 1"),
    ({"vae.embed_dim": 0}, "vae.embed_dim", ">= 1"),
    ({"vae.attn_resolutions": (0,)}, "vae.attn_resolutions", ">= 1"),
    ({"vae.dropout": 1.0}, "vae.dropout", "[0, 1)"),
    ({"model.name": "vit"}, "model.name", "unet | dit"),
    ({"model.dtype": "int8"}, "model.dtype", "float32 | "),
    ({"model.attention": "flash"}, "model.attention", "must be one of"),
    ({"model.precision": "max"}, "model.precision", "auto | default | high | highest"),
    ({"model.unet.model_channels": 48}, "model.unet.model_channels", "multiple of 32"),
    ({"model.unet.num_heads": 3}, "model.unet.num_heads", "every attention layer"),
    ({"model.unet.num_res_blocks": 0}, "model.unet.num_res_blocks", ">= 1"),
    ({"model.unet.channel_mult": (1, 2, 2, 2, 2, 2)}, "model.unet.channel_mult",
     "divisible by 32"),
    ({"model.unet.dropout": -0.1}, "model.unet.dropout", "[0, 1)"),
    ({"model.unet.in_channels": 3}, "model.unet.in_channels", "vae.embed_dim (4)"),
    ({"model.name": "dit", "model.dit.patch_size": 3}, "model.dit.patch_size",
     "divide the 16x16 latent"),
    ({"model.name": "dit", "model.dit.hidden_size": 30}, "model.dit.hidden_size",
     "multiple of 4"),
    ({"model.name": "dit", "model.dit.hidden_size": 100}, "model.dit.num_heads",
     "divide model.dit.hidden_size"),
    ({"model.name": "dit", "model.dit.depth": 0}, "model.dit.depth", ">= 1"),
    ({"model.name": "dit", "model.dit.out_channels": 8}, "model.dit.out_channels",
     "vae.embed_dim"),
    ({"diffusion.num_steps": 0}, "diffusion.num_steps", ">= 1"),
    ({"diffusion.patch_sizes": (3,)}, "diffusion.patch_sizes", "divide the 16x16 latent"),
    ({"diffusion.patch_sizes": (0,)}, "diffusion.patch_sizes", ">= 1"),
    ({"diffusion.patch_probs": (0.5, 0.4)}, "diffusion.patch_probs", "sum to 1"),
    ({"diffusion.patch_probs": (0.5,)}, "diffusion.patch_probs",
     "one probability per diffusion.patch_sizes entry (2)"),
    ({"diffusion.patch_sizes": (1, 2), "diffusion.patch_probs": (-0.5, 1.5)},
     "diffusion.patch_probs", "non-negative"),
    ({"diffusion.max_noised_frac": 1.5}, "diffusion.max_noised_frac", "[0, 1]"),
    ({"diffusion.brain_threshold": -0.1}, "diffusion.brain_threshold", "[0, 1]"),
    ({"diffusion.mask_loss": "l1"}, "diffusion.mask_loss", "mse | bce"),
    ({"diffusion.mask_loss_weight": -1.0}, "diffusion.mask_loss_weight", ">= 0"),
    ({"diffusion.val_max_noised_frac": 2.0}, "diffusion.val_max_noised_frac", "[0, 1]"),
    ({"train.validation": "reference", "diffusion.val_patch_probs": (1.0,)},
     "diffusion.val_patch_probs", "one probability per diffusion.patch_sizes entry (2)"),
    ({"train.validation": "reference", "diffusion.val_patch_probs": (0.9, 0.05)},
     "diffusion.val_patch_probs", "sum to 1"),
    ({"sample.ddim_steps": 0}, "sample.ddim_steps", "[1, 10]"),
    ({"sample.ddim_steps": 11}, "sample.ddim_steps", "[1, 10]"),
    ({"sample.eta": -1.0}, "sample.eta", ">= 0"),
    ({"sample.flag_threshold": 1.5}, "sample.flag_threshold", "[0, 1]"),
    ({"sample.map_source": "pixels"}, "sample.map_source",
     "image | input | latent | mask"),
    ({"sample.clip": 0.0}, "sample.clip", "> 0"),
    ({"sample.scale": 0.0}, "sample.scale", "> 0"),
    ({"sample.sigma": -1.0}, "sample.sigma", ">= 0"),
    ({"sample.latent_clip": 0.0}, "sample.latent_clip", "> 0"),
    ({"sample.batch_size": 0}, "sample.batch_size", ">= 1"),
    ({"data.kind": "hdf5"}, "data.kind", "arrayrecord | demo | png"),
    ({"data.bad_input": "ignore"}, "data.bad_input", "skip | stop"),
    ({"data.augment_mode": "wild"}, "data.augment_mode", "symmetric | reference"),
    ({"data.augment_p": 2.0}, "data.augment_p", "[0, 1]"),
    ({"data.rotate_degrees": -1.0}, "data.rotate_degrees", ">= 0"),
    ({"data.translate_px": -2}, "data.translate_px", ">= -1"),
    ({"data.brightness": -0.1}, "data.brightness", ">= 0"),
    ({"data.contrast": -0.1}, "data.contrast", ">= 0"),
    ({"data.num_workers": -1}, "data.num_workers", ">= 0"),
    ({"train.num_steps": 0}, "train.num_steps", "or train.num_epochs > 0"),
    ({"train.num_epochs": -1.0}, "train.num_epochs", ">= 0"),
    ({"train.batch_size": 0}, "train.batch_size", ">= 1"),
    ({"train.lr": 0.0}, "train.lr", "> 0"),
    ({"train.weight_decay": -1.0}, "train.weight_decay", ">= 0"),
    ({"train.warmup_steps": -1}, "train.warmup_steps", ">= 0"),
    ({"train.warmup_epochs": -1.0}, "train.warmup_epochs", ">= 0"),
    ({"train.schedule": "linear"}, "train.schedule", "cosine | constant"),
    ({"train.lr_schedule": "epoch"}, "train.lr_schedule", "per_step | reference"),
    ({"train.lr_schedule": "reference", "train.num_epochs": 2.5}, "train.num_epochs",
     "whole number of epochs"),
    ({"train.lr_schedule": "reference", "train.num_epochs": 3.0,
      "train.warmup_epochs": 0.5}, "train.warmup_epochs", "whole number of epochs"),
    ({"train.validation": "all"}, "train.validation", "batches | reference"),
    ({"train.resume_from_damaged": "newest"}, "train.resume_from_damaged", "stop | previous"),
    ({"train.val_every_epochs": 0}, "train.val_every_epochs", ">= 1"),
    ({"train.ema_decay": 1.0}, "train.ema_decay", "[0, 1)"),
    ({"train.grad_clip": -1.0}, "train.grad_clip", ">= 0"),
    ({"train.log_every_steps": 0}, "train.log_every_steps", ">= 1"),
    ({"train.checkpoint_every_steps": 0}, "train.checkpoint_every_steps", ">= 1"),
    ({"train.keep_checkpoints": 0}, "train.keep_checkpoints", ">= 1"),
    ({"train.eval_every_steps": -1}, "train.eval_every_steps", ">= 0"),
    ({"train.val_every_steps": -1}, "train.val_every_steps", ">= 0"),
    ({"train.val_batches": -1}, "train.val_batches", ">= 0"),
    ({"vae_train.num_steps": 0}, "vae_train.num_steps", ">= 1"),
    ({"vae_train.batch_size": 0}, "vae_train.batch_size", ">= 1"),
    ({"vae_train.lr": 0.0}, "vae_train.lr", "> 0"),
    ({"vae_train.kl_weight": -1.0}, "vae_train.kl_weight", ">= 0"),
    ({"vae_train.gan_weight": -1.0}, "vae_train.gan_weight", ">= 0"),
    ({"vae_train.gan_start_step": -1}, "vae_train.gan_start_step", ">= 0"),
    ({"vae_train.log_every_steps": 0}, "vae_train.log_every_steps", ">= 1"),
    ({"vae_train.checkpoint_every_steps": 0}, "vae_train.checkpoint_every_steps", ">= 1"),
    ({"vae_train.keep_checkpoints": 0}, "vae_train.keep_checkpoints", ">= 1"),
    ({"mesh.data": 0}, "mesh.data", "-1 (every device left) or >= 1"),
    ({"mesh.fsdp": -2}, "mesh.fsdp", "-1 (every device left) or >= 1"),
    ({"mesh.param_sharding": "zero"}, "mesh.param_sharding", "replicated | fsdp"),
    ({"mesh.fsdp": 2}, "mesh.fsdp", "must equal the 1 devices"),
    ({"mesh.data": 2}, "mesh.data", "must equal the 1 devices"),
    ({"evaluate.protocols": ("pixel",)}, "evaluate.protocols", "slice | volume"),
    ({"evaluate.protocols": ()}, "evaluate.protocols", "non-empty"),
    ({"evaluate.protocols": ("volume", "report")}, "evaluate.protocols", "must include slice"),
    ({"evaluate.batch_size": -1}, "evaluate.batch_size", ">= 0"),
    ({"evaluate.max_examples": -1}, "evaluate.max_examples", ">= 0"),
    ({"evaluate.num_panels": -1}, "evaluate.num_panels", ">= 0"),
    ({"evaluate.size_edges_slice": (5.0,)}, "evaluate.size_edges_slice", "two increasing"),
    ({"evaluate.size_edges_volume": (9.0, 3.0)}, "evaluate.size_edges_volume",
     "two increasing"),
    ({"evaluate.volume_threshold": float("nan")}, "evaluate.volume_threshold", "finite"),
    ({"evaluate.checkpoint": "best"}, "evaluate.checkpoint", "latest | best_loss"),
    ({"predict.axis": 3}, "predict.axis", "[0, 2]"),
    ({"predict.num_panels": -1}, "predict.num_panels", ">= 0"),
    ({"distributed.initialize": "maybe"}, "distributed.initialize", "auto | on | off"),
    ({"distributed.num_processes": -1}, "distributed.num_processes", ">= 0"),
    ({"distributed.process_id": -2}, "distributed.process_id", ">= -1"),
    ({"data.cache_latents": False}, "latent_whiten_from_data", "set data.cache_latents=True"),
    ({"diffusion.noise": "uniform"}, "diffusion.noise", "gaussian | latent_swap"),
    ({"diffusion.swap_prob": 1.5}, "diffusion.swap_prob", "[0, 1]"),
    ({"evaluate.select.flag_thresholds": ()}, "evaluate.select.flag_thresholds", "non-empty"),
    ({"evaluate.select.flag_thresholds": (0.5, 1.2)}, "evaluate.select.flag_thresholds",
     "valid values"),
    ({"evaluate.select.ddim_steps": (2, 11)}, "evaluate.select.ddim_steps", "valid values"),
    ({"evaluate.select.etas": (-0.5,)}, "evaluate.select.etas", "valid values"),
    ({"evaluate.select.sigmas": (-1.0,)}, "evaluate.select.sigmas", "valid values"),
    ({"evaluate.select.map_sources": ("pixels",)}, "evaluate.select.map_sources",
     "valid values"),
]


def demo_config():
    return importlib.import_module("configs.demo").get_config()


def _set(config, overrides: dict) -> None:
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = config
        for part in path:
            node = node[part]
        with node.ignore_type():
            node[leaf] = value


def _check(err: ConfigError, key: str, rule: str, value) -> None:
    msg = str(err)
    assert err.key == key and rule in err.rule, msg
    assert msg == f"config.{key}={show(value)}: {err.rule}"
    assert "\n" not in msg


@pytest.mark.parametrize("overrides,key,rule", ROWS, ids=[f"{r[1]}-{i}"
                                                          for i, r in enumerate(ROWS)])
def test_each_rule(overrides, key, rule):
    c = demo_config()
    _set(c, overrides)
    with pytest.raises(ConfigError) as err:
        validate(c, devices=1, paths=False)
    value = c
    for part in key.split("."):
        value = value[part]
    _check(err.value, key, rule, value)


def test_batch_sizes_against_the_mesh():
    c = demo_config()  # train.batch_size 16, vae_train.batch_size 16
    _set(c, {"vae_train.enabled": True})  # the shipped autoencoder is not trained
    validate(c, devices=8, paths=False)
    _set(c, {"train.batch_size": 12})
    with pytest.raises(ConfigError, match=r"config.train.batch_size=12: must be divisible by "
                                          r"the 8 devices"):
        validate(c, devices=8, paths=False)
    _set(c, {"train.batch_size": 16, "vae_train.batch_size": 6})
    with pytest.raises(ConfigError, match=r"config.vae_train.batch_size=6: .* 8 devices"):
        validate(c, devices=8, paths=False)
    # Modes that do not train need no mesh: the batch is not checked against it.
    _set(c, {"mode": "evaluate", "train.batch_size": 12})
    validate(c, devices=8, paths=False)
    # A loaded autoencoder is not trained: its batch size does not matter either.
    _set(c, {"mode": "train", "train.batch_size": 16, "vae_train.checkpoint": "x"})
    validate(c, devices=8, paths=False)
    _set(c, {"vae_train.checkpoint": "", "vae_train.enabled": False})
    validate(c, devices=8, paths=False)


def test_ddim_steps_any_count_up_to_the_steps():
    from madad_jax.diffusion.schedule import ddim_timesteps

    c = demo_config()
    for s in range(1, 11):  # 3 of 10 has no integer stride: the rounded spacing is used
        _set(c, {"sample.ddim_steps": s})
        validate(c, paths=False)
        assert len(ddim_timesteps(10, s)) == s


def _paths_rows(tmp: Path) -> list[tuple[dict, str, str]]:
    afile = tmp / "afile"
    afile.write_text("x")
    adir = tmp / "adir"
    adir.mkdir()
    missing = str(tmp / "missing")
    train = {"mode": "train", "data.kind": "arrayrecord"}
    evaluate = {"mode": "evaluate", "data.kind": "arrayrecord"}
    predict = {"mode": "predict", "predict.input": str(afile)}
    return [
        ({**train, "data.train_path": ""}, "data.train_path", "is required"),
        ({**train, "data.train_path": missing}, "data.train_path", "no such shard set"),
        ({**train, "data.train_path": str(tmp / "x-*.array_record")}, "data.train_path",
         "no such shard set"),
        ({**train, "data.train_path": str(adir), "data.val_path": missing}, "data.val_path",
         "no such shard set"),
        ({**train, "vae_train.checkpoint": missing}, "vae_train.checkpoint",
         "no such checkpoint"),
        ({"mode": "train", "vae_train.pretrained": missing}, "vae_train.pretrained",
         "no such checkpoint"),
        ({"mode": "train", "data.latent_cache": missing}, "data.latent_cache",
         "no such latent cache"),
        ({"mode": "train_vae", "data.kind": "arrayrecord"}, "data.train_path", "is required"),
        ({**evaluate, "data.test_path": ""}, "data.test_path", "is required"),
        ({**evaluate, "data.test_path": missing}, "data.test_path", "no such shard set"),
        ({"mode": "evaluate", "checkpoint": missing}, "checkpoint", "no such checkpoint"),
        ({"mode": "evaluate", "data.kind": "png"}, "data.png_root", "is required"),
        ({"mode": "evaluate", "data.kind": "png", "data.png_root": missing}, "data.png_root",
         "directory not found"),
        ({"mode": "evaluate", "data.kind": "png", "data.png_root": str(afile)},
         "data.png_root", "is not a directory"),
        ({"mode": "predict"}, "predict.input", "needs a scan"),
        ({"mode": "predict", "predict.input": missing}, "predict.input", "file not found"),
        ({"mode": "predict", "predict.input": str(adir)}, "predict.input",
         "names no NIfTI scan"),
        ({**predict, "predict.brainmask": missing}, "predict.brainmask", "file not found"),
        ({**predict, "predict.segmentation": missing}, "predict.segmentation",
         "file not found"),
        ({**predict, "checkpoint": missing}, "checkpoint", "no such checkpoint"),
        ({**predict, "predict.output": str(afile)}, "predict.output",
         "exists and is not a directory"),
        ({**predict, "predict.output": str(afile / "out")}, "predict.output",
         "cannot be created"),
    ]


def test_paths(tmp_path):
    for overrides, key, rule in _paths_rows(tmp_path):
        c = demo_config()
        _set(c, overrides)
        with pytest.raises(ConfigError) as err:
            validate(c, devices=1, workdir=str(tmp_path / "wd"))
        value = c
        for part in key.split("."):
            value = value[part]
        _check(err.value, key, rule, value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]  # nothing written


def test_paths_that_are_fine(tmp_path):
    scan = tmp_path / "scan.nii.gz"
    scan.write_text("x")
    c = demo_config()
    _set(c, {"mode": "predict", "predict.input": str(scan),
             "predict.output": str(tmp_path / "a" / "b")})
    validate(c, workdir=str(tmp_path / "new" / "wd"))
    _set(c, {"predict.output": str(tmp_path)})
    validate(c, workdir=str(tmp_path))
    # Bucket paths are not checked here.
    _set(c, {"mode": "train", "data.kind": "arrayrecord", "data.train_path": "gs://b/shards"})
    validate(c, devices=1, workdir="gs://b/run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz"]


def test_workdir(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for workdir, rule in ((afile, "exists and is not a directory"),
                          (afile / "sub", "cannot be created")):
        with pytest.raises(ConfigError) as err:
            validate(demo_config(), devices=1, workdir=str(workdir))
        assert err.value.key == "workdir" and rule in err.value.rule
        assert str(err.value) == f"--workdir={workdir}: {err.value.rule}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_directories(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="is not writable"):
            validate(demo_config(), devices=1, workdir=str(ro / "wd"))
    finally:
        ro.chmod(0o700)


SHIPPED = [("configs.demo", (), 1), ("configs.brats", ("FLAIR",), 1),
           ("configs.brats", ("T1CE",), 1), ("configs.ixi_atlas", (), 1),
           ("configs.reference", (), 1), ("configs.vae", (), 1), ("configs.gpu8", (), 8),
           ("configs.gpu8", (), 1), ("configs.tpu_pod", (), 16),
           ("tests.tiny_train_config", ("unet",), 1), ("tests.tiny_train_config", ("dit",), 1)]


@pytest.mark.parametrize("module,args,devices", SHIPPED)
def test_shipped_configs_validate(module, args, devices):
    c = importlib.import_module(module).get_config(*args)
    validate(c, devices=devices, paths=False)  # their data paths are the user's
    for mode in config_lib.MODES:
        if mode != "predict":
            c.mode = mode
            validate(c, devices=devices, paths=False)


def test_demo_validates_with_its_paths(tmp_path):
    validate(demo_config(), workdir=str(tmp_path / "run"))


def test_names_match_the_stages_that_use_them():
    from madad_jax import main
    from madad_jax.evaluation import protocols
    from madad_jax.sampling.anomaly import MAP_SOURCES
    from madad_jax.sampling.loading import RUN_CHECKPOINTS
    from madad_jax.training.optimizer import LR_SCHEDULES

    assert main.MODES == config_lib.MODES
    assert config_lib.MAP_SOURCES == MAP_SOURCES
    assert set(config_lib.EVAL_CHECKPOINTS) == set(RUN_CHECKPOINTS)
    assert config_lib.LR_SCHEDULES == LR_SCHEDULES
    assert config_lib.PROTOCOLS == protocols.ORDER


# The rows, through the public command.
CLI_ROWS = [
    ("--config.train.batch_size=0", "error: config.train.batch_size=0: must be >= 1"),
    ("--config.diffusion.patch_sizes=(3,)", "error: config.diffusion.patch_sizes=(3,): "),
    ("--config.sample.eta=-1", "error: config.sample.eta=-1.0: must be >= 0"),
    ("--config.image_size=63", "error: config.image_size=63: must be divisible by the "
                               "autoencoder's downsampling factor 4"),
    ("--config.sample.ddim_steps=11", "error: config.sample.ddim_steps=11: must be in [1, 10]"),
]


def _main(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "madad_jax.main", *args], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("override,line", CLI_ROWS)
def test_cli_one_line_before_any_work(tmp_path, override, line):
    workdir = tmp_path / "run"
    r = _main("--config=configs/demo.py", f"--workdir={workdir}", override)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), r.stderr
    assert "Traceback" not in r.stderr
    assert not workdir.exists()


def test_cli_workdir_is_a_file(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for mode in ("train_and_evaluate", "predict"):
        r = _main("--config=configs/demo.py", f"--workdir={afile}", f"--config.mode={mode}",
                  f"--config.predict.input={afile}")
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip() == f"error: --workdir={afile}: exists and is not a directory"
    assert afile.read_text() == "x"
