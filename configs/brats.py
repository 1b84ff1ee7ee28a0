"""BraTS'21, one modality per run, with the reference's training hyperparameters (S2 setting).

Convert the data once per modality (volumes registered to MNI152 and skull-stripped; healthy
slices for training and validation, the slice with the largest lesion per test volume):

    python -m madad_jax.data.convert nifti BRATS_ROOT data/brats/FLAIR --layout brats \
        --modality FLAIR --image-size 256 --policy train=healthy,val=healthy,test=largest_lesion

Train and evaluate (the modality after the colon: FLAIR | T1CE | T2 | T1):

    python -m madad_jax.main --config=configs/brats.py:FLAIR --workdir=runs/brats_flair \
        --config.vae_train.checkpoint=CKPT_DIR

`CKPT_DIR` holds the autoencoder, for example the reference's medical VAE imported with
`python -m madad_jax.import_reference` (or train one with `configs/vae.py`). Data paths
default to `data/brats/{MODALITY}`; set `--config.data.train_path=...`, `val_path`,
`test_path` to point elsewhere. Running the same command again resumes.

Reference settings: UNet_L (model_channels 256, 8 heads, dropout 0.4), AdamW lr 4e-5,
weight decay 1e-4, batch 96, 200 epochs with a cosine schedule after 10 warm-up epochs
(`train.num_epochs` / `warmup_epochs` turn into steps from the training set's size; the
schedule is stepped per optimizer step rather than per epoch), no EMA, no gradient clipping,
augmentation (rotation 5 degrees, translation, brightness/contrast, each with p 0.5).
"""

import ml_collections

from madad_jax.config import default_config, medical_vae, unet

MODALITIES = ("FLAIR", "T1CE", "T2", "T1")


def get_config(modality: str = "FLAIR") -> ml_collections.ConfigDict:
    modality = modality.upper()
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, not {modality!r}")
    c = default_config()
    c.mode = "train_and_evaluate"
    c.image_size = 256
    c.vae = medical_vae()
    c.model.name = "unet"
    c.model.unet = unet("UNet_L")

    c.train.update(
        dict(
            batch_size=96,
            lr=4e-5,
            weight_decay=1e-4,
            schedule="cosine",
            num_epochs=200.0,
            warmup_epochs=10.0,
            ema=False,
            grad_clip=0.0,
            log_every_steps=100,
            checkpoint_every_steps=2_000,
            keep_checkpoints=3,
        )
    )

    root = f"data/brats/{modality}"
    c.data.update(
        dict(
            kind="arrayrecord",
            modality=modality,
            train_path=root,
            val_path=root,
            test_path=root,
            augment=True,
            num_workers=4,
        )
    )
    c.sample.update(dict(ddim_steps=10, eta=0.5, map_source="image"))
    c.evaluate.protocols = ("slice",)
    return c
