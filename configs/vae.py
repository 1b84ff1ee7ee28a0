"""Training a KL-f8 autoencoder for a new data set (the reference's VAE cannot be downloaded).

    python -m madad_jax.main --config=configs/vae.py --workdir=runs/vae \
        --config.data.train_path=data/brats/FLAIR

This trains only the autoencoder (`mode=train_vae`) into `runs/vae/vae_checkpoints/`, with
resume. A denoiser run then uses it:

    python -m madad_jax.main --config=configs/brats.py:FLAIR --workdir=runs/brats_flair \
        --config.vae_train.checkpoint=runs/vae/vae_checkpoints

Architecture: the reference's medical KL-f8 (ch 128, ch_mult 1-2-4-4, 256x256 -> 32x32x4).
Loss: per-sample summed L1 + 1e-6 x KL, and from step 50k a PatchGAN hinge term weighted
adaptively against the reconstruction gradient at the decoder's last layer (latent
diffusion's recipe, without its LPIPS term). Adam (0.5, 0.9) at latent diffusion's
4.5e-6 x batch size. To train the autoencoder and then the denoiser in one command instead,
use any training config with `--config.vae_train.enabled=True`.
"""

import ml_collections

from madad_jax.config import default_config, medical_vae


def get_config() -> ml_collections.ConfigDict:
    c = default_config()
    c.mode = "train_vae"
    c.image_size = 256
    c.vae = medical_vae()
    batch = 16
    c.vae_train.update(
        dict(
            enabled=True,
            num_steps=150_000,
            batch_size=batch,
            lr=4.5e-6 * batch,
            kl_weight=1e-6,
            gan_weight=0.5,
            gan_start_step=50_001,
            log_every_steps=100,
            checkpoint_every_steps=2_000,
        )
    )
    c.data.update(dict(kind="arrayrecord", augment=True, num_workers=4))
    return c
