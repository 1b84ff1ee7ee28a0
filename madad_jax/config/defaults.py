"""The default configuration shared by every `configs/*.py` file, one builder per section.

Each config file calls `default_config()` and overrides what differs. Every key can be
overridden on the command line: `--config.train.batch_size=32`. The rules every key obeys
live in `madad_jax.config.validation`.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from madad_jax.models.presets import dit, medical_vae, unet


def demo_data() -> ml_collections.ConfigDict:
    """`data.demo`: the generated data set of `data.kind=demo` (madad_jax.data.synthetic)."""
    from madad_jax.data.synthetic import AnatomySpec, LesionSpec

    return ml_collections.ConfigDict(
        dict(
            seed=0,
            n_train=40,  # healthy subjects; every slab slice is a training slice
            n_test=40,  # lesioned subjects
            n_val=0,
            # Subjects without lesions scored beside the test split, for detection AUROC /
            # AP and the calibrated threshold's FPR on healthy test brains only.
            n_test_healthy=0,
            test_slices="largest",  # all | lesion | largest (one slice per subject, S2)
            modality="T1",
            fov_mm=208.0,
            z_mm=(-8.0, 40.0),  # MNI z of the first and last slice
            slice_mm=3.0,
            anatomy=dataclasses.asdict(AnatomySpec()),
            # AnatomySpec fields that differ for the training subjects only (none: the same).
            train_anatomy={},
            lesion=dataclasses.asdict(LesionSpec()),
        )
    )


def run_section(c: ml_collections.ConfigDict) -> None:
    """The top-level keys: mode, checkpoint, image size and the latent normalization."""
    c.mode = "train_and_evaluate"  # train | evaluate | predict | train_and_evaluate | train_vae
    c.checkpoint = ""  # an Orbax checkpoint to load instead of the workdir's latest
    c.verbose = False
    # JAX's persistent compilation cache (madad_jax.core.compile_cache): auto = the
    # directory JAX already has (JAX_COMPILATION_CACHE_DIR), else WORKDIR/compile_cache;
    # "" = none; any other value = that directory (e.g. ~/.cache/madad_jax to share it).
    c.compile_cache = "auto"
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


def model_section() -> ml_collections.ConfigDict:
    """`model`: the denoiser (models.presets) and its numerics."""
    m = ml_collections.ConfigDict()
    m.name = "unet"  # unet | dit
    m.unet = unet("UNet_L")
    m.dit = dit("DiT_B", 2)
    m.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay fp32)
    m.attention = "auto"  # auto | xla | cudnn  (jax.nn.dot_product_attention impl)
    # Matmul/conv precision: auto = full fp32 for fp32 compute (parity; TF32 breaks 1e-4 on
    # GPUs), backend default for bf16 | default | high | highest.
    m.precision = "auto"
    return m


def diffusion_section() -> ml_collections.ConfigDict:
    """`diffusion`: the forward process, the clean masks and the loss."""
    return ml_collections.ConfigDict(
        dict(
            num_steps=10,
            patch_sizes=(1, 2, 4, 8),
            patch_probs=(0.2, 0.3, 0.3, 0.2),
            max_noised_frac=0.4,
            brain_threshold=0.9,
            mask_loss="mse",  # mse (reference code) | bce (paper)
            # The forward process's noise: gaussian (the reference) | latent_swap (for
            # swap_prob of the samples, real latent content from elsewhere; diffusion.loss).
            noise="gaussian",
            swap_prob=0.5,
            # Of the swapped samples, the fraction whose noised patches take the latent of
            # the same slice with its tissue contrast changed, at the same place
            # (data.augment.contrast_changed; needs data.cache_latents), not another slice's.
            contrast_swap_prob=0.0,
            mask_loss_weight=0.001,
            # The reference's validation masking (train.validation=reference).
            val_patch_probs=(0.3, 0.3, 0.2, 0.2),
            val_max_noised_frac=0.3,
        )
    )


def sample_section() -> ml_collections.ConfigDict:
    """`sample`: the mask-guided DDIM inference and the anomaly map."""
    return ml_collections.ConfigDict(
        dict(
            ddim_steps=10,
            eta=0.5,
            flag_threshold=0.5,  # a position takes the DDIM update where P(clean) < this
            map_source="image",  # image | input | latent | mask
            clip=0.25,
            scale=4.0,
            sigma=5.0,
            latent_clip=1.0,  # "latent" maps: |dz| is clipped here, then divided by it
            batch_size=16,
            seed=0,
        )
    )


def data_section() -> ml_collections.ConfigDict:
    """`data`: where the slices come from, and their augmentation."""
    return ml_collections.ConfigDict(
        dict(
            kind="arrayrecord",  # arrayrecord | png | demo
            train_path="",  # ArrayRecord shard pattern or directory
            val_path="",
            test_path="",
            # Optional shard set of test units without lesions (scored for detection only).
            test_healthy_path="",
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


def train_section() -> ml_collections.ConfigDict:
    """`train`: the denoiser's training run."""
    return ml_collections.ConfigDict(
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
            # loss (DIR/best_mse, DIR/best_mask_prediction) | none: no validation.
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
            # > 0: every this many steps, a few val slices scored into DIR/tb (train_eval/:
            # max Dice, AUROC, the mask head's AUROC, a panel); 0: none
            eval_every_steps=0,
            # (first, last): a jax.profiler trace of these steps in DIR/tb/profile
            profile_steps=(),
            val_every_steps=0,  # validation loss + best copy (needs data.val_path); 0: at saves
            val_batches=4,  # fixed validation batches averaged for the best-checkpoint choice
            # > 0: num_steps = num_epochs * ceil(train slices / batch_size), and warmup_steps
            # likewise from warmup_epochs (the reference counts in epochs: 200, 10 warm-up).
            num_epochs=0.0,
            warmup_epochs=0.0,
        )
    )


def vae_train_section() -> ml_collections.ConfigDict:
    """`vae_train`: autoencoder training (the demo and new data sets need their own VAE)."""
    return ml_collections.ConfigDict(
        dict(
            enabled=False,
            checkpoint="",  # load a trained VAE from here instead of training
            # The autoencoder used when `enabled` is False and `checkpoint` is empty (the
            # demo: the one shipped in madad_jax/assets/demo_vae, made by its `enabled` run).
            pretrained="",
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
            resume_from_damaged="stop",  # stop | previous (as train.resume_from_damaged)
        )
    )


def mesh_section() -> ml_collections.ConfigDict:
    """`mesh`: the device mesh's axes and the parameters' sharding."""
    return ml_collections.ConfigDict(dict(data=-1, fsdp=1, param_sharding="replicated"))


def distributed_section() -> ml_collections.ConfigDict:
    """`distributed`: multi-host start-up. "auto" initializes jax.distributed when the
    environment says so (SLURM, JAX_COORDINATOR_ADDRESS, ...); "on" always (Cloud TPU pods);
    "off" never. `heartbeat_timeout_s` bounds how long a survivor waits for a lost peer;
    `supervise` reports that loss in one line (`core.peers`)."""
    return ml_collections.ConfigDict(
        dict(initialize="auto", coordinator_address="", num_processes=0, process_id=-1,
             heartbeat_timeout_s=100, supervise=True)
    )


def evaluate_section() -> ml_collections.ConfigDict:
    """`evaluate`: the protocols of mode=evaluate and the settings' selection."""
    return ml_collections.ConfigDict(
        dict(
            # The plug-ins of mode=evaluate (evaluation.protocols), run in their fixed order:
            # slice (the reference's), volume (Behrendt et al.), baseline, selection (what
            # `select` chose), mask_head, ablations, results (calibration, detection,
            # intervals, model card), report. A tuple of only slice / volume (the spelling
            # before the plug-ins) means those plus all the others.
            protocols=("slice", "baseline", "selection", "mask_head", "ablations", "results",
                       "report"),
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
            # Sampling settings chosen on the lesioned val split (evaluation.selection): every
            # combination of the grids below is scored there by max Dice, and the test split
            # is then scored once with the best. Off: the test split uses config.sample.
            select=ml_collections.ConfigDict(
                dict(
                    enabled=False,
                    flag_thresholds=(0.5, 0.7, 0.9, 0.95, 0.98),
                    ddim_steps=(2, 5, 10),
                    etas=(0.0, 0.5),
                    sigmas=(1.0, 2.0, 3.0),
                    map_sources=("image", "input", "latent", "mask"),
                )
            ),
            # Also score the ablations (evaluation.selection.ABLATIONS) on the test slices,
            # each with its own free settings chosen on the val split when selecting.
            ablations=False,
            # threshold: oracle | healthy_fpr (flag target_fpr of the val split's healthy
            # brain voxels) | percentile (threshold_percentile of them); saved beside the
            # checkpoint as calibration.json for predict's lesion masks.
            threshold="healthy_fpr", target_fpr=0.01, threshold_percentile=99.0,
            detection_quantile=0.99,  # slice / volume score: this quantile of the brain map
            bootstrap_resamples=1000,  # 0: no intervals; subjects are resampled
            bootstrap_pixel_resamples=200,  # for the pooled-pixel AUROC / AP (slow)
        )
    )


def predict_section() -> ml_collections.ConfigDict:
    """`predict`: a scan, a folder or a glob in; maps, lesion masks and panels out."""
    return ml_collections.ConfigDict(
        dict(input="", brainmask="", segmentation="", output="", axis=2,
             num_panels=4,  # slices shown in the PNG panels
             # How the scan is sliced: auto | pad | brain | mni_grid. auto: mni_grid for a
             # checkpoint trained on the demo's MNI-space grid (resampled by the scan's
             # affine onto it), else the training manifest's fit, else pad.
             geometry="auto",
             # Gaussian sigma (mm) across slices of the maps before they go back into the
             # volume (0: none); it removes slice-to-slice stripes.
             z_sigma_mm=0.0,
             # Lesion masks: calibration.json to use ("" = the checkpoint directory's, else
             # the workdir's evaluate/); components smaller are dropped; layout: flat
             # (<stem>_*) | bids (a BIDS-derivatives folder).
             calibration="", min_lesion_voxels=0, layout="flat")
    )


def default_config() -> ml_collections.ConfigDict:
    """Every key, declared once: the sections below, in the order the data flows."""
    c = ml_collections.ConfigDict()
    run_section(c)
    c.vae = medical_vae()
    c.model = model_section()
    c.diffusion = diffusion_section()
    c.sample = sample_section()
    c.data = data_section()
    c.data.demo = demo_data()
    c.train = train_section()
    c.vae_train = vae_train_section()
    c.mesh = mesh_section()
    c.distributed = distributed_section()
    c.evaluate = evaluate_section()
    c.predict = predict_section()
    return c
