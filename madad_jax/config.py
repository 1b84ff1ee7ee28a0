"""Default configuration shared by every `configs/*.py` file.

Each config file calls `default_config()` and overrides what differs. Every key can be
overridden on the command line: `--config.train.batch_size=32`.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from madad_jax.models.presets import DIT_PRESETS, UNET_PRESETS, dit, medical_vae, unet

# Re-exported: configs/*.py build their configs from these.
__all__ = ["DIT_PRESETS", "UNET_PRESETS", "default_config", "demo_data", "dit", "medical_vae",
           "unet"]


def demo_data() -> ml_collections.ConfigDict:
    """`data.demo`: the generated data set of `data.kind=demo` (madad_jax.data.synthetic)."""
    from madad_jax.data.synthetic import AnatomySpec, LesionSpec

    return ml_collections.ConfigDict(
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
            anatomy=dataclasses.asdict(AnatomySpec()),
            lesion=dataclasses.asdict(LesionSpec()),
        )
    )


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mode = "train_and_evaluate"  # train | evaluate | predict | train_and_evaluate | train_vae
    c.checkpoint = ""  # an Orbax checkpoint to load instead of the workdir's latest
    c.verbose = False
    c.image_size = 256
    c.latent_scale = 0.18215
    # With data.cache_latents and a VAE trained or loaded in the run: set latent_scale to
    # 1 / std of the cached latents (latent diffusion's rule), saved with the checkpoint.
    c.latent_scale_from_data = False
    # With data.cache_latents: whiten the latents instead, z = (latent - shift) @ matrix.T,
    # the ZCA of the cached in-brain posterior means (diffusion.latent_norm). Filled in by the
    # run and saved with the checkpoint; empty: latents are multiplied by latent_scale.
    c.latent_whiten_from_data = False
    c.latent_whitening = ml_collections.ConfigDict(dict(shift=(), matrix=()))

    c.vae = medical_vae()

    c.model = ml_collections.ConfigDict()
    c.model.name = "unet"  # unet | dit
    c.model.unet = unet("UNet_L")
    c.model.dit = dit("DiT_B", 2)
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay fp32)
    c.model.attention = "auto"  # auto | xla | cudnn  (jax.nn.dot_product_attention impl)
    # Matmul/conv precision: auto = full fp32 for fp32 compute (parity; TF32 breaks 1e-4 on
    # GPUs), backend default for bf16 | default | high | highest.
    c.model.precision = "auto"

    c.diffusion = ml_collections.ConfigDict(
        dict(
            num_steps=10,
            patch_sizes=(1, 2, 4, 8),
            patch_probs=(0.2, 0.3, 0.3, 0.2),
            max_noised_frac=0.4,
            brain_threshold=0.9,
            mask_loss="mse",  # mse (reference code) | bce (paper)
            mask_loss_weight=0.001,
            # The reference's validation masking (train.validation=reference).
            val_patch_probs=(0.3, 0.3, 0.2, 0.2),
            val_max_noised_frac=0.3,
        )
    )

    c.sample = ml_collections.ConfigDict(
        dict(
            ddim_steps=10,
            eta=0.5,
            flag_threshold=0.5,  # a position takes the DDIM update where P(clean) < this
            map_source="image",  # image | latent | mask
            clip=0.25,
            scale=4.0,
            sigma=5.0,
            latent_clip=1.0,  # "latent" maps: |dz| is clipped here, then divided by it
            batch_size=16,
            seed=0,
        )
    )

    c.data = ml_collections.ConfigDict(
        dict(
            kind="arrayrecord",  # arrayrecord | png | demo
            train_path="",  # ArrayRecord shard pattern or directory
            val_path="",
            test_path="",
            png_root="",  # reference PNG layout root
            split="test",
            modality="T2",
            latent_cache="",  # ArrayRecord of VAE posterior moments; empty: encode on the fly
            # Encode the training slices once with the run's VAE (trained or loaded) into
            # {workdir}/latent_cache and train the denoiser from there (no augmentation).
            cache_latents=False,
            augment=True,
            augment_p=0.5,  # probability of each augmentation (the reference's 0.5)
            # symmetric: rotation U(-r, r), shifts in [-t, t] | reference: exactly +r degrees,
            # exactly +t px in x and y, jitter on the uint8 slice (data.augment)
            augment_mode="symmetric",
            rotate_degrees=5.0,
            translate_px=-1,  # -1: image_size // 32
            brightness=0.1,
            contrast=0.1,
            num_workers=0,
            shuffle_seed=0,
            bad_input="skip",  # skip | stop
            keep_empty_brainmask=False,  # keep slices whose brain mask is empty (the reference)
        )
    )
    c.data.demo = demo_data()

    c.train = ml_collections.ConfigDict(
        dict(
            num_steps=100_000,
            batch_size=96,
            seed=0,
            lr=4e-5,
            weight_decay=1e-4,
            warmup_steps=5_000,
            schedule="cosine",  # cosine | constant
            # per_step: the schedule above, per step | reference: the authors' warm-up +
            # cosine stepped once per epoch (num_epochs, warmup_epochs; horizon 1.2 x epochs)
            lr_schedule="per_step",
            # True: each epoch is a fresh shuffle of every slice, its last batch partial
            # (zero-weight padding keeps the shape), as the reference trains; False: one
            # stream of full batches across epoch boundaries, the remainder dropped.
            exact_epochs=False,
            # batches: `val_batches` fixed batches of data.val_path, one best copy by total
            # loss | reference: the whole val split every `val_every_epochs` epochs with the
            # reference's validation masking and seed, best copies by val MSE and by val mask
            # loss (DIR/best_mse, DIR/best_mask_prediction).
            validation="batches",
            val_every_epochs=10,
            val_seed=0,
            ema=False,
            ema_decay=0.9999,
            grad_clip=0.0,  # 0: none (reference)
            log_every_steps=50,
            checkpoint_every_steps=1_000,
            keep_checkpoints=3,
            resume_from_damaged="stop",  # a damaged newest step: stop | previous (good step)
            eval_every_steps=0,  # 0: only at the end
            val_every_steps=0,  # validation loss + best copy (needs data.val_path); 0: at saves
            val_batches=4,  # fixed validation batches averaged for the best-checkpoint choice
            # > 0: num_steps = num_epochs * ceil(train slices / batch_size), and warmup_steps
            # likewise from warmup_epochs (the reference counts in epochs: 200, 10 warm-up).
            num_epochs=0.0,
            warmup_epochs=0.0,
        )
    )

    # Autoencoder training (the demo and new data sets need their own VAE).
    c.vae_train = ml_collections.ConfigDict(
        dict(
            enabled=False,
            checkpoint="",  # load a trained VAE from here instead of training
            num_steps=20_000,
            batch_size=16,
            lr=4.5e-6,
            kl_weight=1e-6,
            gan_weight=0.0,  # > 0 turns on the patch-GAN term
            gan_start_step=5_000,
            log_every_steps=50,
            checkpoint_every_steps=1_000,
            keep_checkpoints=3,
            seed=0,  # the autoencoder's initialization and posterior draws (+17, as before)
            val_every_steps=0,  # the autoencoder has no validation; kept for the loop's settings
        )
    )

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, param_sharding="replicated"))

    # Multi-host: "auto" initializes jax.distributed when the environment says so (SLURM,
    # JAX_COORDINATOR_ADDRESS, ...); "on" always (Cloud TPU pods); "off" never.
    c.distributed = ml_collections.ConfigDict(
        dict(initialize="auto", coordinator_address="", num_processes=0, process_id=-1)
    )

    c.evaluate = ml_collections.ConfigDict(
        dict(
            protocols=("slice",),  # slice (reference) and/or volume (Behrendt et al.)
            batch_size=16,
            max_examples=0,  # 0: all
            # Lesion-size bins (small < a <= medium < b <= large): () = terciles of the test
            # set's lesion sizes; (a, b) = fixed edges, in lesion pixels per slice ...
            size_edges_slice=(),
            # ... and in lesion voxels per stacked volume (the per-volume protocol).
            size_edges_volume=(),
            volume_threshold=-1.0,  # per-volume protocol: < 0 = best Dice on the val split
            baseline=True,  # also score an intensity-threshold detector (evaluation.baseline)
            num_panels=4,  # slices shown in DIR/evaluate/panels.png
            use_ema=True,  # the denoiser's EMA weights, when the checkpoint has them (train.ema)
            # Which checkpoint of a training run: latest | best_mse | best_mask_prediction
            # (train.validation=reference) | best_loss (train.validation=batches).
            checkpoint="latest",
        )
    )

    c.predict = ml_collections.ConfigDict(
        dict(input="", brainmask="", segmentation="", output="", axis=2,
             num_panels=4)  # slices shown in the PNG panels
    )
    return c
