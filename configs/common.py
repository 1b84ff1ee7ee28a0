"""Recipes shared by the config files: the paper's setup and its BraTS'21 form.

The config files import this module as `configs.common` (run from the repository root), as
big_vision's configs share `configs/common.py`. The defaults themselves stay in
`madad_jax/config/defaults.py`, where every key is declared once.
"""

import ml_collections

from madad_jax.config import default_config, medical_vae, unet


def reference_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Train as the authors' code trains (README, "Training recipe"): the LR stepped once per
    epoch (warm-up, then a cosine with a 1.2 x epochs horizon), exact epochs with a partial
    last batch, the reference's augmentations (+5 degrees, +image_size/32 px, brightness /
    contrast on the uint8 slice), validation on the whole val split every 10 epochs with best
    copies by val MSE and by val mask loss, and slices with an empty brain mask kept."""
    c.train.update(dict(lr_schedule="reference", exact_epochs=True, validation="reference",
                        val_every_epochs=10, val_seed=0))
    c.data.update(dict(augment_mode="reference", keep_empty_brainmask=True))
    return c


def paper_setup(preset: str = "UNet_L") -> ml_collections.ConfigDict:
    """The paper's runs: 256x256 slices, the medical KL-f8 VAE, a UNet preset, AdamW at 4e-5
    (weight decay 1e-4, batch 96, 200 epochs, cosine with 10 warm-up epochs), augmentation,
    ArrayRecord input and the reference's slice protocol, trained with `reference_recipe`.
    Data paths are left to the caller.
    """
    c = default_config()
    c.mode = "train_and_evaluate"
    c.image_size = 256
    c.vae = medical_vae()
    c.model.name = "unet"
    c.model.unet = unet(preset)
    c.train.update(
        dict(
            batch_size=96,
            lr=4e-5,
            weight_decay=1e-4,
            schedule="cosine",
            num_epochs=200.0,
            warmup_epochs=10.0,
            log_every_steps=100,
            checkpoint_every_steps=2_000,
        )
    )
    c.data.update(dict(kind="arrayrecord", augment=True, num_workers=4))
    c.evaluate.protocols = ("slice",)
    return reference_recipe(c)


BRATS_MODALITIES = ("FLAIR", "T1CE", "T2", "T1")


def brats_setup(modality: str = "FLAIR") -> ml_collections.ConfigDict:
    """`paper_setup` on BraTS'21 shard sets under `data/brats/{MODALITY}` (configs/brats.py)."""
    modality = modality.upper()
    if modality not in BRATS_MODALITIES:
        raise ValueError(f"modality must be one of {BRATS_MODALITIES}, not {modality!r}")
    c = paper_setup("UNet_L")
    root = f"data/brats/{modality}"
    c.data.update(dict(modality=modality, train_path=root, val_path=root, test_path=root))
    c.sample.update(dict(ddim_steps=10, eta=0.5, map_source="image"))
    return c
