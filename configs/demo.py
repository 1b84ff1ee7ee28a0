"""The embedded demo: synthetic MNI152-based subjects, a tiny autoencoder and denoiser, on CPU.

    python -m madad_jax.main --config=configs/demo.py --workdir=runs/demo

Nothing is downloaded. The run generates the demo data set (`madad_jax.data.synthetic`):
healthy training subjects and lesioned test subjects with ground truth. It trains a small
KL autoencoder (f4: 64x64 slices -> 16x16x4 latents) and a small UNet denoiser, then
evaluates on the test slices with the reference's protocol. `DIR/evaluate/metrics.json` also
holds `baseline`: the same protocol applied to a plain intensity-threshold detector
(`madad_jax.baseline`) on the same test slices. Sized for a 2-core CPU.
"""

import dataclasses

import ml_collections

from madad_jax.config import default_config
from madad_jax.data import synthetic


def get_config() -> ml_collections.ConfigDict:
    c = default_config()
    c.mode = "train_and_evaluate"
    c.image_size = 64

    # Autoencoder: f4, 32-32-64 channels (GroupNorm needs multiples of 32), trained first.
    c.vae.update(
        ch=32,
        ch_mult=(1, 1, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        resolution=64,
    )
    c.vae_train.update(
        enabled=True,
        num_steps=600,
        batch_size=16,
        lr=5e-4,
        kl_weight=1e-6,
        gan_weight=0.0,
        log_every_steps=100,
        checkpoint_every_steps=200,
    )

    # Denoiser on the 16x16x4 latent: 32-64 channels, attention only at 8x8.
    c.model.name = "unet"
    c.model.unet.update(
        model_channels=32,
        num_res_blocks=1,
        channel_mult=(1, 2),
        attention_resolutions=(2,),
        num_heads=2,
        dropout=0.1,
    )
    c.train.update(
        num_steps=1_200,
        batch_size=32,
        lr=5e-4,
        warmup_steps=100,
        log_every_steps=100,
        checkpoint_every_steps=300,
    )

    # The reference smooths 256x256 maps with sigma 5; the same width at 64x64.
    c.sample.update(sigma=1.25, batch_size=32)
    c.evaluate.batch_size = 32

    c.data.kind = "demo"
    c.data.modality = "T1"
    c.data.demo = ml_collections.ConfigDict(
        dict(
            seed=0,
            n_train=40,  # healthy subjects; every slab slice is a training slice
            n_test=40,  # lesioned subjects
            n_val=0,
            test_slices="largest",  # all | lesion | largest (one slice per subject, S2)
            modality="T1",
            fov_mm=208.0,
            z_mm=(-8.0, 40.0),  # MNI z of the first and last slice
            slice_mm=3.0,
            anatomy=dataclasses.asdict(synthetic.AnatomySpec()),
            lesion=dataclasses.asdict(synthetic.LesionSpec()),
        )
    )
    return c
