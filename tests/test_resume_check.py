"""`training.resume_check`: which differences between a saved model and the config refuse a
resume, and which are one warning (the command-level cases: tests/test_fault_stops.py)."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_train_config import get_config

from madad_jax.core import checkpoint
from madad_jax.core.errors import InputError
from madad_jax.models.arch import arch_from_config
from madad_jax.training import resume_check


def _saved(tmp_path, model: str = "unet") -> str:
    """A checkpoint directory whose only step holds the tiny config's `arch` item."""
    directory = str(tmp_path / "checkpoints")
    checkpoint.save_params(directory, {"x": np.zeros(1)}, arch_from_config(get_config(model)))
    return directory


def test_only_the_keys_that_change_the_shapes_are_named_in_the_refusal(tmp_path):
    directory = _saved(tmp_path)
    c = get_config()
    c.model.unet.update(dict(model_channels=64, dropout=0.0))
    with pytest.raises(InputError) as err:
        resume_check.check(c, directory, "denoiser")
    msg = str(err.value)
    assert msg.startswith(f"{directory} holds a model with model.unet.model_channels=32 "
                          "(config: 64): its saved denoiser parameters cannot be restored")
    assert "dropout" not in msg and msg.endswith("(--config.model.unet.model_channels=32)")


def test_shape_keeping_keys_are_one_warning_naming_which_is_used(tmp_path, capsys):
    directory = _saved(tmp_path)
    c = get_config()
    c.model.unet.dropout = 0.0
    c.vae.dropout = 0.5
    resume_check.check(c, directory, "denoiser")
    assert capsys.readouterr().err == (
        f"warning: {directory} holds a model with model.unet.dropout=0.1 (config: 0.0), "
        "vae.dropout=0.0 (config: 0.5); resuming with the checkpoint's vae.dropout and the "
        "config's other values\n")


def test_a_normalization_derived_from_data_and_an_empty_directory_say_nothing(tmp_path,
                                                                            capsys):
    c = get_config()
    c.latent_scale, c.latent_scale_from_data = 0.5, True
    resume_check.check(c, _saved(tmp_path), "denoiser")  # the plan adopts the saved one
    resume_check.check(get_config(), str(tmp_path / "none"), "denoiser")
    resume_check.check(get_config(), str(tmp_path / "none"), "vae")
    assert capsys.readouterr().err == ""


def test_the_autoencoder_check_names_only_its_keys(tmp_path, capsys):
    directory = _saved(tmp_path)
    c = get_config()
    c.model.unet.model_channels = 64  # not the autoencoder's: not named
    c.vae.ch_mult = (1, 1)
    with pytest.raises(InputError) as err:
        resume_check.check(c, directory, "vae")
    assert str(err.value) == (
        f"{directory} holds a model with vae.ch_mult=[1, 2] (config: [1, 1]): its saved "
        "autoencoder parameters cannot be restored into the config's model; train in a new "
        "--workdir, or resume with the checkpoint's keys (--config.vae.ch_mult=(1,2))")
