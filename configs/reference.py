"""The reference's exact settings, for evaluating checkpoints imported from its PyTorch code.

    python -m madad_jax.import_reference --unet-preset=UNet_L --unet=UNET.pt \
        --vae=VAE-Medical-klf8.pt --out=CKPT_DIR
    python -m madad_jax.main --config=configs/reference.py --workdir=DIR --config.mode=evaluate \
        --config.checkpoint=CKPT_DIR --config.data.png_root=ROOT --config.data.split=test \
        --config.data.modality=T2 --config.sample.ddim_steps=10 --config.sample.eta=0.0

UNet_L denoiser with the medical KL-f8 autoencoder at 256x256, T = 10 cosine steps,
mask-guided DDIM with 10 steps and eta 0.5 (the reference's evaluation script), the image
difference map (clip 0.25, x4, Gaussian sigma 5) and the reference's slice metrics, on
slices in its PNG layout (`ROOT/{split}/{id}-slice_{k}-{MODALITY}.png`). The checkpoint's
stored architecture replaces the one given here, so imported checkpoints of other sizes
(like the parity fixtures) evaluate with this file too.
"""

import ml_collections

from configs.common import reference_recipe
from madad_jax.config import default_config, medical_vae, unet


def get_config() -> ml_collections.ConfigDict:
    c = default_config()
    c.mode = "evaluate"
    c.image_size = 256
    c.latent_scale = 0.18215
    c.vae = medical_vae()
    c.model.name = "unet"
    c.model.unet = unet("UNet_L")
    c.model.dtype = "float32"
    c.diffusion.num_steps = 10
    c.sample.update(ddim_steps=10, eta=0.5, map_source="image", clip=0.25, scale=4.0, sigma=5.0,
                    batch_size=16, seed=0)
    c.data.kind = "png"
    c.data.split = "test"
    c.data.modality = "T2"
    c.data.bad_input = "stop"
    c.data.augment = False
    c.evaluate.protocols = ("slice",)
    c.evaluate.batch_size = 16
    # Training with this file follows the authors' recipe (lr 4e-5, 200 epochs, 10 warm-up).
    c.train.update(dict(batch_size=96, lr=4e-5, weight_decay=1e-4, num_epochs=200.0,
                        warmup_epochs=10.0))
    return reference_recipe(c)
