"""S1 setting: train on healthy IXI T1 scans, test on ATLAS 2.0 T1 stroke lesions.

Convert the data (both registered to MNI152 and skull-stripped; ATLAS 2.0 ships in
MNI152NLin2009aSym space):

    python -m madad_jax.data.convert nifti IXI_T1_ROOT data/ixi/T1 --layout flat \
        --modality T1 --image-size 256 --fractions train=0.9,val=0.1,test=0.0 \
        --policy train=healthy,val=healthy
    python -m madad_jax.data.convert nifti ATLAS_ROOT data/atlas/T1 --layout atlas \
        --modality T1 --image-size 256 --split test --policy test=all

Train and evaluate:

    python -m madad_jax.main --config=configs/ixi_atlas.py --workdir=runs/ixi_atlas \
        --config.vae_train.checkpoint=CKPT_DIR

`CKPT_DIR` holds the autoencoder (the reference's imported medical VAE, or one trained with
`configs/vae.py`). The paper reports F1-max (its "global max Dice") for this setting,
overall and by lesion size; `DIR/evaluate/metrics.json` holds `f1_max` with the other
metrics. Paths: `--config.data.train_path`, `val_path` (IXI) and `test_path` (ATLAS).
Hyperparameters and the training recipe are the reference's (see configs/brats.py).
"""

import ml_collections

from configs.common import paper_setup


def get_config() -> ml_collections.ConfigDict:
    c = paper_setup("UNet_L")
    c.data.update(
        dict(
            modality="T1",
            train_path="data/ixi/T1",
            val_path="data/ixi/T1",
            test_path="data/atlas/T1",
        )
    )
    return c
