"""BraTS'21 on one node with 8 NVIDIA GPUs (one process drives all of them).

    pip install -r requirements.txt "jax[cuda12]==0.10.2"
    python -m madad_jax.main --config=configs/gpu8.py:FLAIR --workdir=runs/brats_flair_gpu8 \
        --config.vae_train.checkpoint=CKPT_DIR

or `bash launch/gpu_single_node.sh configs/gpu8.py:FLAIR runs/brats_flair_gpu8 ...`. The
reference's model and hyperparameters (configs/brats.py), with the batch of 96 split 12 per
GPU over a pure data-parallel mesh, bfloat16 compute (float32 parameters, optimizer state
and GroupNorm statistics), and 8 data-loading worker processes. The same config runs on
fewer GPUs as long as they divide the batch.
"""

import ml_collections

from configs.common import brats_setup


def get_config(modality: str = "FLAIR") -> ml_collections.ConfigDict:
    c = brats_setup(modality)
    c.model.dtype = "bfloat16"
    c.model.attention = "auto"
    c.mesh.update(dict(data=-1, fsdp=1, param_sharding="replicated"))
    c.data.num_workers = 8
    c.sample.batch_size = 64
    c.evaluate.batch_size = 64
    return c
