"""The embedded demo: synthetic MNI152-based subjects, the whole brain, on CPU.

    python -m madad_jax.main --config=configs/demo.py --workdir=runs/demo
    python -m madad_jax.main --config=configs/demo.py:dit --workdir=runs/demo_dit

Nothing is downloaded. The run generates the demo data set (`madad_jax.data.synthetic`):
healthy training subjects, every axial slice with brain (MNI z -72 to 81 mm), and lesioned
val and test subjects with ground truth. It loads the small KL autoencoder shipped in
`madad_jax/assets/demo_vae` (f4: 64x64 slices -> 16x16x4 latents; `vae_train.enabled=True`
trains it from scratch instead), encodes the training slices once into a latent cache,
whitens the latents with the cache's statistics (`diffusion.latent_norm`), and trains a small
UNet denoiser with its mask head. It then chooses the sampling settings on the val split
(`evaluate.select`), scores the test split once with the reference's protocol, and scores
the intensity baseline and the four ablations (`evaluate.ablations`) on the same test
slices. About 7.5 minutes on a 2-core AMD EPYC Zen 3, 90 x `machine_speed.py` (README).
"""


import os

import ml_collections

import madad_jax
from madad_jax.config import default_config, demo_data

# The autoencoder shipped with the project, made by this config with
# --config.vae_train.enabled=True (see madad_jax/assets/demo_vae/README.md).
SHIPPED_VAE = os.path.join(os.path.dirname(madad_jax.__file__), "assets", "demo_vae")


def get_config(variant: str = "unet") -> ml_collections.ConfigDict:
    """`configs/demo.py` (the UNet) or `configs/demo.py:dit` (a small DiT, all else equal)."""
    if variant not in ("unet", "dit"):
        raise ValueError(f"configs/demo.py:{variant}: the variants are unet | dit")
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
        enabled=False,
        pretrained=SHIPPED_VAE,
        num_steps=3_000,
        batch_size=16,
        lr=8e-4,
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
    if variant == "dit":  # 8x8 tokens of 128 channels, 4 blocks of 4 heads
        c.model.name = "dit"
        c.model.dit.update(hidden_size=128, depth=4, num_heads=4, patch_size=2)
    c.train.update(
        num_steps=1_400,
        batch_size=16,
        lr=2e-3,
        warmup_steps=100,
        log_every_steps=100,
        checkpoint_every_steps=500,
    )
    # Noise up to 40 % of the brain's latent positions (as the reference), in patches of one
    # or two cells of this 16x16 latent (the reference: 1-8 cells of its 32x32 one), where
    # the autoencoder's input is mostly brain; the paper's BCE for the mask head, at weight 3
    # (chosen on the val split over 1; README).
    # The noise: for half the samples, the noised patches take latent content from another
    # slice of the batch instead of Gaussian noise (diffusion.loss.draw_noise), so the mask
    # head learns to flag tissue that is wrong for its place, not only noise.
    c.diffusion.update(
        max_noised_frac=0.4,
        patch_sizes=(1, 2),
        patch_probs=(0.5, 0.5),
        brain_threshold=0.25,
        mask_loss="bce",
        mask_loss_weight=3.0,
        noise="latent_swap",
        swap_prob=0.5,
    )
    if variant == "dit":  # its val split preferred weight 1 (val max Dice 0.395 against 0.380)
        c.diffusion.mask_loss_weight = 1.0

    # Sampling: the values the demo run chose on its lesioned val split (evaluate.select;
    # README), used by `predict`. The evaluation itself chooses them again on val.
    c.sample.update(flag_threshold=0.5, ddim_steps=10, eta=0.0, map_source="input", sigma=2.0,
                    batch_size=32)
    if variant == "dit":
        c.sample.ddim_steps = 5
    c.evaluate.batch_size = 40  # the 80 val and 80 test slices in two batches each

    c.data.kind = "demo"
    # Encode the training slices once after the autoencoder is trained (the denoiser then
    # trains without running the encoder), and whiten the latents with the cache's in-brain
    # statistics: this small VAE's latent channels have offset means, unequal variances and
    # correlations up to 0.8, which let the mask head spot the diffusion noise by channel
    # statistics alone; whitened, it has to judge each position against its anatomy.
    c.data.cache_latents = True
    c.latent_whiten_from_data = True
    c.data.modality = "T1"
    c.data.demo = demo_data()
    # The whole brain (MNI z -72 to 81 mm), and 80 lesioned subjects each for choosing the
    # sampling settings (val) and for the score (test); 40 subjects without lesions, one slice
    # each, scored beside the test split for detection and the calibrated FPR only.
    c.data.demo.update(n_val=80, n_test=80, n_test_healthy=40, z_mm=(-72.0, 81.0))
    c.train.validation = "none"
    c.evaluate.select.enabled = True
    c.evaluate.ablations = True
    return c
