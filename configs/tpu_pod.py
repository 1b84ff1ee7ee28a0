"""A latent DiT with the MAD-AD objective on a Cloud TPU pod slice (v5p or v4), FSDP + bf16.

    bash launch/tpu/create.sh           # a v5p-32 (4 hosts x 4 chips) queued resource
    bash launch/tpu/copy.sh             # code (and a data path list) to every worker
    bash launch/tpu/run.sh configs/tpu_pod.py:FLAIR gs://BUCKET/runs/brats_flair_dit \
        --config.vae_train.checkpoint=gs://BUCKET/vae
    bash launch/tpu/resume_loop.sh ...  # reruns the same command after a preemption

Every host runs the same command; `distributed.initialize=on` makes them one JAX system
(`jax.distributed.initialize` finds the pod's coordinator itself). Data, checkpoints and
TensorBoard logs should live on a bucket (`gs://...`) that all hosts see: each host reads
its own 1/num_hosts of the ArrayRecord shards, and Orbax writes one checkpoint cooperatively.

Model: DiT-L/2 on the 32x32x4 latent (256 tokens), depth scanned and rematerialized.
Parameters and AdamW moments are split over the `fsdp` axis (16 chips = one v5p-32
slice's chips, so each chip holds 1/16 of them); the batch splits over every chip. With
the latent cache (`data.latent_cache`, built by `madad_jax.training.latent_cache`) the VAE
encoder is not run in the step. AdamW at 1e-4 without weight decay (the DiT paper's optimizer)
for the 1024 batch, 200 epochs with 10 warm-up epochs as the reference; everything else
(T = 10, patch masks, loss) is the reference's.
"""

import ml_collections

from configs.common import brats_setup
from madad_jax.config import dit


def get_config(modality: str = "FLAIR") -> ml_collections.ConfigDict:
    c = brats_setup(modality)
    c.model.name = "dit"
    c.model.dit = dit("DiT_L", patch_size=2)
    c.model.dit.update(dict(scan_layers=True, remat=True))
    c.model.dtype = "bfloat16"
    c.mesh.update(dict(data=-1, fsdp=16, param_sharding="fsdp"))
    c.distributed.initialize = "on"

    c.train.update(
        dict(
            batch_size=1024,
            lr=1e-4,
            weight_decay=0.0,
            num_epochs=200.0,
            warmup_epochs=10.0,
            log_every_steps=50,
            checkpoint_every_steps=1_000,
        )
    )
    c.data.num_workers = 8
    c.sample.batch_size = 256
    c.evaluate.batch_size = 256
    return c
