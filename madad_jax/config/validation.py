"""The rules every run is checked against before it does any work: the one gate.

`validate(config)` holds every key's type and range and every cross-key rule;
`madad_jax.main` runs it right after parsing, so a bad value ends in one line
(`config.KEY=VALUE: RULE`) before any work. The later stages trust a validated config and
do not check it again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from madad_jax.config.checks import Checker
from madad_jax.config.path_rules import check_paths

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
# evaluation.protocols.ORDER
PROTOCOLS = ("slice", "volume", "baseline", "selection", "mask_head", "ablations", "results",
             "report")
PARAM_SHARDINGS = ("replicated", "fsdp")
DISTRIBUTED = ("auto", "on", "off", "true", "false", "1", "0", "yes", "no")
GROUPS = 32  # madad_jax.models.layers.GroupNorm's group count


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


def _autoencoder(c: Checker) -> int:
    """The image size and the VAE; returns the latent's side."""
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
    return size // factor


def _unet(c: Checker, latent: int) -> None:
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


def _dit(c: Checker, latent: int) -> None:
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


def _diffusion(c: Checker, latent: int) -> None:
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


def _model(c: Checker, names: dict[str, tuple[str, ...]], training: bool) -> None:
    latent = _autoencoder(c)
    name = c.choice("model.name", MODEL_NAMES)
    c.choice("model.dtype", names["dtype"])
    c.choice("model.attention", names["attention"])
    c.choice("model.precision", names["precision"])
    if name == "unet":
        _unet(c, latent)
        prefix = "model.unet"
    else:
        _dit(c, latent)
        prefix = "model.dit"
    if training:
        for key in (f"{prefix}.in_channels", f"{prefix}.out_channels"):
            if c.integer(key, 1) != c("vae.embed_dim"):
                c.fail(key, f"must equal vae.embed_dim ({c('vae.embed_dim')})")
    _diffusion(c, latent)


def _sampling(c: Checker) -> None:
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


def _data(c: Checker, names: dict[str, tuple[str, ...]]) -> None:
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
    if c("data.kind") == "demo":
        for key in ("n_train", "n_val", "n_test", "n_test_healthy"):
            c.integer(f"data.demo.{key}", 0)


def _training(c: Checker) -> None:
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


def _vae_training(c: Checker) -> None:
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


def _mesh(c: Checker, devices: int | None, batch_keys: Sequence[str]) -> None:
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


def _selection_grid(c: Checker) -> None:
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


def _evaluation(c: Checker) -> None:
    protocols = c("evaluate.protocols")
    if (not isinstance(protocols, (list, tuple)) or not protocols
            or any(p not in PROTOCOLS for p in protocols)):
        c.fail("evaluate.protocols", f"must be a non-empty tuple of {' | '.join(PROTOCOLS)}")
    elif "slice" not in protocols:
        c.fail("evaluate.protocols", "must include slice (the other protocols build on it)")
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
    c.integer("predict.min_lesion_voxels", 0)
    c.choice("predict.layout", PREDICT_LAYOUTS)
    c.choice("evaluate.threshold", THRESHOLDS)
    c.number("evaluate.target_fpr", 0, 1)
    c.number("evaluate.detection_quantile", 0, 1)
    c.number("evaluate.threshold_percentile", 0, 100)
    c.integer("evaluate.bootstrap_resamples", 0)
    c.integer("evaluate.bootstrap_pixel_resamples", 0)
    if str(c("distributed.initialize")).lower() not in DISTRIBUTED:
        c.fail("distributed.initialize", "must be auto | on | off")
    c.integer("distributed.num_processes", 0)
    c.integer("distributed.process_id", -1)
    c.integer("distributed.heartbeat_timeout_s", 1)


def validate(config, *, devices: int | None = None, workdir: str | None = None,
             paths: bool = True) -> None:
    """Raise `ConfigError` for the first rule `config` breaks; nothing is read or written.

    `devices` is the mesh's device count (default `jax.device_count()`, asked only when the
    mode trains); `workdir`, when given, must be a directory or creatable, and writable.
    `paths=False` skips the file-system rules (for checking a config away from its data).
    """
    c = Checker(config)
    mode = c.choice("mode", MODES)
    if not isinstance(c("compile_cache"), str):
        c.fail("compile_cache", "must be a directory, auto or '' (no persistent cache)")
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
    if training and c("diffusion.contrast_swap_prob") and not c("data.cache_latents"):
        c.fail("diffusion.contrast_swap_prob", "takes the contrast-changed latents of the "
                                               "latent cache: set data.cache_latents=True")
    if paths:
        check_paths(c, mode, workdir, training=mode in TRAINING_MODES or mode == "train_vae",
                    evaluating=mode in EVALUATING_MODES)
