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
weight decay 1e-4, batch 96, 200 epochs, no EMA, no gradient clipping, and the authors'
training recipe (`configs/common.reference_recipe`, README "Training recipe"): the LR stepped
once per epoch (10 warm-up epochs, cosine over 1.2 x the epochs), exact epochs with a partial
last batch, their augmentations (+5 degrees, +8 px, brightness/contrast, each with p 0.5),
validation on the whole val split every 10 epochs with best copies by val MSE and by val mask
loss (`--config.evaluate.checkpoint=best_mse` evaluates one), empty-mask slices kept.
"""

import ml_collections

from configs.common import brats_setup


def get_config(modality: str = "FLAIR") -> ml_collections.ConfigDict:
    return brats_setup(modality)
