"""A CPU-sized training config for the tests: 32x32 slices, 16x16x4 latents, tiny UNet.

Data and VAE paths are set by the test on the command line.
"""

from madad_jax.config import default_config


def get_config(model: str = "unet"):
    c = default_config()
    c.mode = "train"
    c.image_size = 32
    c.vae.update(dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=32))
    c.model.name = model
    c.model.unet.update(dict(model_channels=32, channel_mult=(1, 2), num_heads=2,
                             num_res_blocks=1, attention_resolutions=(2,), dropout=0.1))
    c.model.dit.update(dict(hidden_size=32, depth=2, num_heads=2, patch_size=2))
    c.train.update(dict(num_steps=6, batch_size=8, lr=1e-3, warmup_steps=2,
                        log_every_steps=2, checkpoint_every_steps=3, keep_checkpoints=2))
    c.vae_train.update(dict(num_steps=4, batch_size=8, lr=1e-3, log_every_steps=2,
                            checkpoint_every_steps=2))
    c.data.kind = "arrayrecord"
    c.data.augment = False
    c.data.num_workers = 0
    return c
