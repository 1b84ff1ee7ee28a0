"""Default configuration shared by every `configs/*.py` file.

Each config file calls `default_config()` and overrides what differs. Every key can be
overridden on the command line: `--config.train.batch_size=32`. `validate(config)` holds
every key's type and range and every cross-key rule; `madad_jax.main` runs it right after
parsing, so a bad value ends in one line (`config.KEY=VALUE: RULE`) before any work.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections

from madad_jax.models.presets import DIT_PRESETS, UNET_PRESETS, dit, medical_vae, unet

# Re-exported: configs/*.py build their configs from these.
__all__ = ["DIT_PRESETS", "MODES", "UNET_PRESETS", "ConfigError", "default_config", "demo_data",
           "dit", "medical_vae", "unet", "validate"]


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
            # AnatomySpec fields that differ for the training subjects only (none: the same).
            train_anatomy={},
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

    c.sample = ml_collections.ConfigDict(
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
            eval_every_steps=0,  # 0: only at the end
            # (first, last): a jax.profiler trace of these steps in DIR/tb/profile (issue 20)
            profile_steps=(),
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
            val_every_steps=0,  # the autoencoder has no validation; kept for the loop's settings
            resume_from_damaged="stop",  # stop | previous (as train.resume_from_damaged)
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
            # --- results for users (issue 20; evaluation.results / calibration / bootstrap).
            # threshold: oracle | healthy_fpr (flag target_fpr of the val split's healthy
            # brain voxels) | percentile (threshold_percentile of them); saved beside the
            # checkpoint as calibration.json for predict's lesion masks.
            threshold="healthy_fpr", target_fpr=0.01, threshold_percentile=99.0,
            detection_quantile=0.99,  # slice / volume score: this quantile of the brain map
            bootstrap_resamples=1000,  # 0: no intervals; subjects are resampled
            bootstrap_pixel_resamples=200,  # for the pooled-pixel AUROC / AP (slow)
        )
    )

    c.predict = ml_collections.ConfigDict(
        dict(input="", brainmask="", segmentation="", output="", axis=2,
             num_panels=4,  # slices shown in the PNG panels
             # How the scan is sliced: auto | pad | brain | mni_grid. auto: mni_grid for a
             # checkpoint trained on the demo's MNI-space grid (resampled by the scan's
             # affine onto it), else the training manifest's fit, else pad.
             geometry="auto",
             # Gaussian sigma (mm) across slices of the maps before they go back into the
             # volume (0: none); it removes slice-to-slice stripes.
             z_sigma_mm=0.0,
             # --- lesion masks (issue 20): calibration.json to use ("" = the checkpoint
             # directory's, else the workdir's evaluate/); components smaller are dropped;
             # layout: flat (<stem>_*) | bids (a BIDS-derivatives folder).
             calibration="", min_lesion_voxels=0, layout="flat")
    )
    return c


# --- Validation: the rules every run is checked against before it does any work. ---

MODES = ("train", "evaluate", "predict", "train_and_evaluate", "train_vae")
TRAINING_MODES = ("train", "train_and_evaluate")  # train the denoiser
EVALUATING_MODES = ("evaluate", "train_and_evaluate")
# The names the later stages accept; they live in modules this one may not import
# (madad_jax.diffusion.loss, training.optimizer, training.loop, sampling.anomaly,
# sampling.loading, evaluation.evaluate), so tests/test_config_validate.py checks they agree.
MODEL_NAMES = ("unet", "dit")
MASK_LOSSES = ("mse", "bce")
SCHEDULES = ("cosine", "constant")
LR_SCHEDULES = ("per_step", "reference")
VALIDATIONS = ("batches", "reference", "none")
RESUME_FROM_DAMAGED = ("stop", "previous")
MAP_SOURCES = ("image", "input", "latent", "mask")
EVAL_CHECKPOINTS = ("latest", "best_loss", "best_mse", "best_mask_prediction")
PREDICT_GEOMETRIES = ("auto", "pad", "brain", "mni_grid")  # evaluation.predict.GEOMETRIES
THRESHOLDS = ("oracle", "healthy_fpr", "percentile")  # evaluation.calibration.METHODS
PREDICT_LAYOUTS = ("flat", "bids")
PROTOCOLS = ("slice", "volume")
PARAM_SHARDINGS = ("replicated", "fsdp")
DISTRIBUTED = ("auto", "on", "off", "true", "false", "1", "0", "yes", "no")
GROUPS = 32  # madad_jax.models.layers.GroupNorm's group count


class ConfigError(ValueError):
    """A config value that breaks a rule: `config.KEY=VALUE: RULE`."""

    def __init__(self, key: str, value: Any, rule: str, prefix: str = "config.") -> None:
        self.key, self.value, self.rule = key, value, rule
        super().__init__(f"{prefix}{key}={show(value)}: {rule}")


def show(value: Any) -> str:
    """A value as it would be written on the command line."""
    if isinstance(value, str):
        return value if value else "''"
    if isinstance(value, (list, tuple)):
        return str(tuple(value))
    return str(value)


def _get(config, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = node[part]
    return node


class _Checker:
    """Rule helpers over one config; each raises `ConfigError` naming the key."""

    def __init__(self, config) -> None:
        self.config = config

    def __call__(self, key: str) -> Any:
        return _get(self.config, key)

    def fail(self, key: str, rule: str, value: Any = None) -> None:
        raise ConfigError(key, self(key) if value is None else value, rule)

    def choice(self, key: str, allowed: Iterable[str]) -> str:
        allowed = tuple(allowed)
        v = self(key)
        if not isinstance(v, str) or v not in allowed:
            self.fail(key, f"must be one of {' | '.join(allowed)}")
        return v

    def integer(self, key: str, lo: int | None = None, hi: int | None = None) -> int:
        v = self(key)
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(key, "must be an integer")
        if lo is not None and v < lo:
            self.fail(key, f"must be >= {lo}" if hi is None else f"must be in [{lo}, {hi}]")
        if hi is not None and v > hi:
            self.fail(key, f"must be <= {hi}" if lo is None else f"must be in [{lo}, {hi}]")
        return v

    def number(self, key: str, lo: float | None = None, hi: float | None = None, *,
               lo_open: bool = False, hi_open: bool = False) -> float:
        v = self(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.fail(key, "must be a finite number")
        below = lo is not None and (v <= lo if lo_open else v < lo)
        above = hi is not None and (v >= hi if hi_open else v > hi)
        if below or above:
            if lo is not None and hi is not None:
                rule = f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
            elif lo is not None:
                rule = f"must be {'>' if lo_open else '>='} {lo}"
            else:
                rule = f"must be {'<' if hi_open else '<='} {hi}"
            self.fail(key, rule)
        return float(v)

    def ints(self, key: str, lo: int = 1, empty: bool = False) -> tuple[int, ...]:
        v = self(key)
        ok = isinstance(v, (list, tuple)) and (empty or len(v) > 0) and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= lo for x in v)
        if not ok:
            what = "a tuple of integers" if empty else "a non-empty tuple of integers"
            self.fail(key, f"must be {what} >= {lo}")
        return tuple(v)

    def probs(self, key: str, n: int, against: str) -> None:
        v = self(key)
        if not isinstance(v, (list, tuple)) or len(v) != n:
            self.fail(key, f"must have one probability per {against} entry ({n})")
        if not all(isinstance(p, (int, float)) and math.isfinite(p) and p >= 0 for p in v):
            self.fail(key, "must be non-negative")
        if abs(sum(v) - 1.0) > 1e-6:
            self.fail(key, "must sum to 1")


def _local(path: str) -> bool:
    return "://" not in path


def _scans_in(spec: str) -> bool:
    """Whether a folder (at any depth) or a glob holds a .nii / .nii.gz file."""
    pattern = os.path.join(spec, "**", "*.nii*") if os.path.isdir(spec) else spec
    return any(p.lower().endswith((".nii", ".nii.gz")) for p in glob.iglob(pattern,
                                                                          recursive=True))


def _exists(path: str) -> bool:
    if any(ch in path for ch in "*?["):
        return bool(glob.glob(path))
    return os.path.exists(path)


def _writable_dir(path: str) -> str | None:
    """Why `path` cannot be (or become) a writable directory; None when it can."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            return "exists and is not a directory"
        return None if os.access(path, os.W_OK | os.X_OK) else "is not writable"
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is not writable"
    return None


def _names(config) -> dict[str, tuple[str, ...]]:
    """Allowed names owned by stages this module may import (data, models)."""
    from madad_jax.data.augment import AUGMENT_MODES
    from madad_jax.data.errors import POLICIES
    from madad_jax.data.sources import KINDS
    from madad_jax.models.attention import ATTENTION_IMPLS
    from madad_jax.models.layers import PRECISIONS

    return dict(augment=AUGMENT_MODES, bad_input=POLICIES, kinds=KINDS,
                attention=tuple(ATTENTION_IMPLS), precision=PRECISIONS,
                dtype=("float32", "fp32", "bfloat16", "bf16", "float16", "fp16"))


def _model(c: _Checker, names: dict[str, tuple[str, ...]], training: bool) -> None:
    c.integer("image_size", 1)
    c.number("latent_scale", 0, lo_open=True)
    c.integer("vae.ch", 1)
    mult = c.ints("vae.ch_mult")
    for key in ("vae.num_res_blocks", "vae.z_channels", "vae.embed_dim", "vae.in_channels",
                "vae.out_ch", "vae.resolution"):
        c.integer(key, 1)
    c.ints("vae.attn_resolutions", empty=True)
    c.number("vae.dropout", 0, 1, hi_open=True)
    ch = c("vae.ch")
    if any(ch * m % GROUPS for m in mult):
        bad = next(ch * m for m in mult if ch * m % GROUPS)
        c.fail("vae.ch", f"vae.ch x each vae.ch_mult entry must be a multiple of {GROUPS} "
                         f"(GroupNorm's groups; {bad} is not)")
    factor = 2 ** (len(mult) - 1)
    size = c("image_size")
    if size % factor:
        c.fail("image_size", f"must be divisible by the autoencoder's downsampling factor "
                             f"{factor} (2**(len(vae.ch_mult)-1))")
    latent = size // factor

    name = c.choice("model.name", MODEL_NAMES)
    c.choice("model.dtype", names["dtype"])
    c.choice("model.attention", names["attention"])
    c.choice("model.precision", names["precision"])
    if name == "unet":
        mc = c.integer("model.unet.model_channels", 1)
        umult = c.ints("model.unet.channel_mult")
        c.integer("model.unet.num_res_blocks", 1)
        heads = c.integer("model.unet.num_heads", 1)
        attn = c.ints("model.unet.attention_resolutions", empty=True)
        c.number("model.unet.dropout", 0, 1, hi_open=True)
        if any(mc * m % GROUPS for m in umult):
            c.fail("model.unet.model_channels",
                   f"model_channels x each channel_mult entry must be a multiple of {GROUPS} "
                   "(GroupNorm's groups)")
        # Attention runs at the levels whose downsampling is listed, and in the middle block.
        attended = [mc * m for i, m in enumerate(umult) if 2**i in attn] + [mc * umult[-1]]
        if any(width % heads for width in attended):
            c.fail("model.unet.num_heads", "must divide the channels of every attention layer "
                                           f"({sorted(set(attended))})")
        down = 2 ** (len(umult) - 1)
        if latent % down:
            c.fail("model.unet.channel_mult",
                   f"the UNet halves the {latent}x{latent} latent {len(umult) - 1} times: "
                   f"the latent size must be divisible by {down}")
        prefix = "model.unet"
    else:
        hidden = c.integer("model.dit.hidden_size", 4)
        heads = c.integer("model.dit.num_heads", 1)
        c.integer("model.dit.depth", 1)
        patch = c.integer("model.dit.patch_size", 1)
        c.number("model.dit.mlp_ratio", 0, lo_open=True)
        c.number("model.dit.dropout", 0, 1, hi_open=True)
        if hidden % 4:
            c.fail("model.dit.hidden_size", "must be a multiple of 4 (the 2-D sin-cos embedding)")
        if hidden % heads:
            c.fail("model.dit.num_heads", f"must divide model.dit.hidden_size ({hidden})")
        if latent % patch:
            c.fail("model.dit.patch_size", f"must divide the {latent}x{latent} latent "
                                           "(image_size / the autoencoder's factor)")
        prefix = "model.dit"
    if training:
        for key in (f"{prefix}.in_channels", f"{prefix}.out_channels"):
            if c.integer(key, 1) != c("vae.embed_dim"):
                c.fail(key, f"must equal vae.embed_dim ({c('vae.embed_dim')})")

    c.integer("diffusion.num_steps", 1)
    sizes = c.ints("diffusion.patch_sizes")
    for p in sizes:
        if latent % p:
            c.fail("diffusion.patch_sizes", f"every entry must divide the {latent}x{latent} "
                                            "latent (image_size / the autoencoder's factor)")
    c.probs("diffusion.patch_probs", len(sizes), "diffusion.patch_sizes")
    c.number("diffusion.max_noised_frac", 0, 1)
    c.number("diffusion.brain_threshold", 0, 1)
    c.choice("diffusion.mask_loss", MASK_LOSSES)
    c.choice("diffusion.noise", ("gaussian", "latent_swap"))
    c.number("diffusion.swap_prob", 0, 1)
    c.number("diffusion.contrast_swap_prob", 0, 1)
    c.number("diffusion.mask_loss_weight", 0)
    c.number("diffusion.val_max_noised_frac", 0, 1)


def _sampling(c: _Checker) -> None:
    c.integer("sample.ddim_steps", 1, c("diffusion.num_steps"))
    c.number("sample.eta", 0)
    c.number("sample.flag_threshold", 0, 1)
    c.choice("sample.map_source", MAP_SOURCES)
    c.number("sample.clip", 0, lo_open=True)
    c.number("sample.scale", 0, lo_open=True)
    c.number("sample.sigma", 0)
    c.number("sample.latent_clip", 0, lo_open=True)
    c.integer("sample.batch_size", 1)
    c.integer("sample.seed")


def _data(c: _Checker, names: dict[str, tuple[str, ...]]) -> None:
    c.choice("data.kind", names["kinds"])
    c.choice("data.bad_input", names["bad_input"])
    c.choice("data.augment_mode", names["augment"])
    c.number("data.augment_p", 0, 1)
    c.number("data.rotate_degrees", 0)
    c.integer("data.translate_px", -1)
    c.number("data.brightness", 0)
    c.number("data.contrast", 0)
    c.integer("data.num_workers", 0)
    c.integer("data.shuffle_seed")


def _training(c: _Checker) -> None:
    c.integer("train.num_steps", 0)
    c.number("train.num_epochs", 0)
    if c("train.num_steps") < 1 and c("train.num_epochs") <= 0:
        c.fail("train.num_steps", "must be >= 1 (or train.num_epochs > 0)")
    c.integer("train.batch_size", 1)
    c.integer("train.seed")
    c.number("train.lr", 0, lo_open=True)
    c.number("train.weight_decay", 0)
    c.integer("train.warmup_steps", 0)
    c.number("train.warmup_epochs", 0)
    c.choice("train.schedule", SCHEDULES)
    if c.choice("train.lr_schedule", LR_SCHEDULES) == "reference":
        for key in ("train.num_epochs", "train.warmup_epochs"):
            if c(key) != int(c(key)):
                c.fail(key, "must be a whole number of epochs with train.lr_schedule=reference")
    if c.choice("train.validation", VALIDATIONS) == "reference":
        n = len(c("diffusion.patch_sizes"))
        c.probs("diffusion.val_patch_probs", n, "diffusion.patch_sizes")
    c.integer("train.val_every_epochs", 1)
    c.choice("train.resume_from_damaged", RESUME_FROM_DAMAGED)
    c.choice("vae_train.resume_from_damaged", RESUME_FROM_DAMAGED)
    c.integer("train.val_seed")
    c.number("train.ema_decay", 0, 1, hi_open=True)
    c.number("train.grad_clip", 0)
    c.integer("train.log_every_steps", 1)
    c.integer("train.checkpoint_every_steps", 1)
    c.integer("train.keep_checkpoints", 1)
    c.integer("train.eval_every_steps", 0)  # 0: only at the end
    prof = c("train.profile_steps")
    if not (isinstance(prof, (list, tuple)) and (len(prof) == 0 or (
            len(prof) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in prof)
            and 0 <= prof[0] <= prof[1]))):
        c.fail("train.profile_steps", "must be () or two steps (first, last), 0 <= first <= last")
    c.integer("train.val_every_steps", 0)  # 0: at saves
    c.integer("train.val_batches", 0)


def _vae_training(c: _Checker) -> None:
    c.integer("vae_train.num_steps", 1)
    c.integer("vae_train.batch_size", 1)
    c.number("vae_train.lr", 0, lo_open=True)
    c.number("vae_train.kl_weight", 0)
    c.number("vae_train.gan_weight", 0)
    c.integer("vae_train.gan_start_step", 0)
    c.integer("vae_train.log_every_steps", 1)
    c.integer("vae_train.checkpoint_every_steps", 1)
    c.integer("vae_train.keep_checkpoints", 1)
    c.integer("vae_train.seed")
    c.integer("vae_train.val_every_steps", 0)


def _mesh(c: _Checker, devices: int | None, batch_keys: Sequence[str]) -> None:
    for key in ("mesh.data", "mesh.fsdp"):
        v = c.integer(key)
        if v != -1 and v < 1:
            c.fail(key, "must be -1 (every device left) or >= 1")
    c.choice("mesh.param_sharding", PARAM_SHARDINGS)
    if not batch_keys:
        return
    import jax

    from madad_jax.core.mesh import mesh_shape

    n = jax.device_count() if devices is None else int(devices)
    nproc = jax.process_count()
    try:
        mesh_shape(c.config, n)
    except ValueError:
        key = "mesh.fsdp" if c("mesh.data") == -1 else "mesh.data"
        c.fail(key, f"mesh.data x mesh.fsdp must equal the {n} devices "
                    f"(data={c('mesh.data')}, fsdp={c('mesh.fsdp')})")
    for key in batch_keys:
        if c(key) % n or c(key) % nproc:
            c.fail(key, f"must be divisible by the {n} devices of the mesh and the {nproc} "
                        "processes")


def _selection_grid(c: _Checker) -> None:
    """evaluate.select: non-empty grids of valid sampler settings."""
    def grid(key: str, ok) -> None:
        v = c(key)
        if not isinstance(v, (list, tuple)) or not v or not all(ok(x) for x in v):
            c.fail(key, "must be a non-empty tuple of valid values")

    def num(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    steps = c("diffusion.num_steps")
    grid("evaluate.select.flag_thresholds", lambda x: num(x) and 0 <= x <= 1)
    grid("evaluate.select.ddim_steps",
         lambda x: isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= steps)
    grid("evaluate.select.etas", lambda x: num(x) and 0 <= x <= 1)
    grid("evaluate.select.sigmas", lambda x: num(x) and x >= 0)
    grid("evaluate.select.map_sources", lambda x: x in MAP_SOURCES)


def _evaluation(c: _Checker) -> None:
    protocols = c("evaluate.protocols")
    if (not isinstance(protocols, (list, tuple)) or not protocols
            or any(p not in PROTOCOLS for p in protocols)):
        c.fail("evaluate.protocols", f"must be a non-empty tuple of {' | '.join(PROTOCOLS)}")
    c.integer("evaluate.batch_size", 0)
    c.integer("evaluate.max_examples", 0)
    c.integer("evaluate.num_panels", 0)
    for key in ("evaluate.size_edges_slice", "evaluate.size_edges_volume"):
        v = c(key)
        ok = isinstance(v, (list, tuple)) and (len(v) == 0 or (
            len(v) == 2 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
            and 0 <= v[0] < v[1]))
        if not ok:
            c.fail(key, "must be () (terciles) or two increasing non-negative sizes (a, b)")
    c.number("evaluate.volume_threshold")
    c.choice("evaluate.checkpoint", EVAL_CHECKPOINTS)
    _selection_grid(c)
    c.integer("predict.axis", 0, 2)
    c.integer("predict.num_panels", 0)
    c.choice("predict.geometry", PREDICT_GEOMETRIES)
    c.number("predict.z_sigma_mm", 0)
    # issue 20's keys
    c.choice("evaluate.threshold", THRESHOLDS)
    for key in ("evaluate.target_fpr", "evaluate.detection_quantile"):
        if not (isinstance(c(key), (int, float)) and 0 <= c(key) <= 1):
            c.fail(key, "must be a number in [0, 1]")
    if not (isinstance(c("evaluate.threshold_percentile"), (int, float))
            and 0 <= c("evaluate.threshold_percentile") <= 100):
        c.fail("evaluate.threshold_percentile", "must be a number in [0, 100]")
    c.integer("evaluate.bootstrap_resamples", 0)
    c.integer("evaluate.bootstrap_pixel_resamples", 0)
    c.integer("predict.min_lesion_voxels", 0)
    c.choice("predict.layout", PREDICT_LAYOUTS)
    if str(c("distributed.initialize")).lower() not in DISTRIBUTED:
        c.fail("distributed.initialize", "must be auto | on | off")
    c.integer("distributed.num_processes", 0)
    c.integer("distributed.process_id", -1)


def _paths(c: _Checker, mode: str, workdir: str | None) -> None:
    """Inputs that must exist and outputs that must be writable directories (local paths)."""
    def must_exist(key: str, what: str = "does not exist", isfile: bool = False) -> None:
        v = c(key)
        if not v or not _local(v):
            return
        if isfile and not os.path.isfile(v):
            c.fail(key, "is not a file" if os.path.exists(v) else "file not found")
        if not _exists(v):
            c.fail(key, what)

    if workdir and _local(workdir):
        why = _writable_dir(workdir)
        if why:
            raise ConfigError("workdir", workdir, why, prefix="--")
    kind = c("data.kind")
    training = mode in TRAINING_MODES or mode == "train_vae"
    if training:
        must_exist("vae_train.checkpoint", "no such checkpoint")
        if not c("vae_train.enabled"):
            must_exist("vae_train.pretrained", "no such checkpoint")
        must_exist("data.latent_cache", "no such latent cache")
        if kind == "arrayrecord":
            if not c("data.train_path"):
                c.fail("data.train_path", "is required to train with data.kind=arrayrecord "
                                          "(a shard set from python -m madad_jax.data.convert)")
            must_exist("data.train_path", "no such shard set")
            must_exist("data.val_path", "no such shard set")
    if mode in EVALUATING_MODES and kind == "arrayrecord":
        if not c("data.test_path"):
            c.fail("data.test_path", "is required to evaluate with data.kind=arrayrecord")
        must_exist("data.test_path", "no such shard set")
    if kind == "png" and mode != "predict":
        root = c("data.png_root")
        if not root:
            c.fail("data.png_root", "is required with data.kind=png")
        if _local(root) and not os.path.isdir(root):
            c.fail("data.png_root", "is not a directory" if os.path.exists(root)
                   else "directory not found")
    if mode in ("evaluate", "predict"):
        must_exist("checkpoint", "no such checkpoint")
    if mode == "predict":
        if not c("predict.input"):
            c.fail("predict.input", "predict mode needs a scan (predict.input=SCAN.nii.gz)")
        many = _local(c("predict.input")) and (os.path.isdir(c("predict.input")) or any(
            ch in c("predict.input") for ch in "*?["))  # a folder or a glob (predict_many)
        for key in ("predict.input", "predict.brainmask", "predict.segmentation")[many:]:
            must_exist(key, isfile=True)
        if many and not _scans_in(c("predict.input")):
            c.fail("predict.input", "names no NIfTI scan (a file, a folder or a glob)")
        out = c("predict.output")
        if out and _local(out):
            why = _writable_dir(out)
            if why:
                c.fail("predict.output", why)


def validate(config, *, devices: int | None = None, workdir: str | None = None,
             paths: bool = True) -> None:
    """Raise `ConfigError` for the first rule `config` breaks; nothing is read or written.

    `devices` is the mesh's device count (default `jax.device_count()`, asked only when the
    mode trains); `workdir`, when given, must be a directory or creatable, and writable.
    `paths=False` skips the file-system rules (for checking a config away from its data).
    """
    c = _Checker(config)
    mode = c.choice("mode", MODES)
    names = _names(config)
    training = mode in TRAINING_MODES
    _model(c, names, training)
    _sampling(c)
    _data(c, names)
    _training(c)
    _vae_training(c)
    trains_vae = mode == "train_vae" or (training and bool(c("vae_train.enabled"))
                                         and not c("vae_train.checkpoint"))
    batch_keys = (["train.batch_size"] if training else []) + (
        ["vae_train.batch_size"] if trains_vae else [])
    _mesh(c, devices, batch_keys)
    _evaluation(c)
    if training and (c("latent_scale_from_data") or c("latent_whiten_from_data")) \
            and not c("data.cache_latents"):
        key = "latent_scale_from_data" if c("latent_scale_from_data") else \
            "latent_whiten_from_data"
        c.fail(key, "derives the latent normalization from the latent cache: "
                    "set data.cache_latents=True")
    if paths:
        _paths(c, mode, workdir)
