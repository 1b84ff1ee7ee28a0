"""Masked latent diffusion: the noise schedule, patch clean-masks, the joint loss, the DDIM
step and the latent normalization."""

from madad_jax.diffusion.loss import loss_fn, mask_loss
from madad_jax.diffusion.masks import outside_brain, q_sample, sample_clean_mask
from madad_jax.diffusion.schedule import (
    alphas_cumprod,
    betas_for_alpha_bar,
    cosine_betas,
    ddim_schedule,
    ddim_timesteps,
    respace,
    space_timesteps,
)

__all__ = ["alphas_cumprod", "betas_for_alpha_bar", "cosine_betas", "ddim_schedule",
           "ddim_timesteps", "loss_fn", "mask_loss", "outside_brain", "q_sample", "respace",
           "sample_clean_mask", "space_timesteps"]
