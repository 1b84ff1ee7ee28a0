"""Import the reference's PyTorch weights (MAD-AD UNet + LDM KL autoencoder) as an Orbax checkpoint.

    python -m madad_jax.import_reference --arch=ARCH.json --unet=PATH --vae=PATH --out=CKPT_DIR
    python -m madad_jax.import_reference --unet-preset=UNet_L --unet=PATH --vae=PATH --out=CKPT_DIR

`PATH` is a `.safetensors` state_dict or one of the reference's `.pt` files (`{'model':
state_dict}` or a whole pickled `AutoencoderKL`). `.pt` files are read without torch and
without running pickle code (see `madad_jax.interop.torch_pickle`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from madad_jax.core import checkpoint, files
from madad_jax.core.cli import OneLineParser, run_command
from madad_jax.core.errors import InputError
from madad_jax.models import UNET_KEYS, VAE_KEYS, unet_kwargs, vae_kwargs
from madad_jax.models.presets import UNET_PRESETS, medical_vae, unet
from madad_jax.models.unet import UNet
from madad_jax.models.vae import AutoencoderKL

VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
DEFAULT_UNET_DROPOUT = 0.4  # the reference's create_unet_model


class ReferenceImportError(InputError):
    """A weights or architecture file that cannot be imported (message names the file)."""


# ---------------------------------------------------------------------------- reading


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """A flat `{name: array}` state_dict from a `.safetensors` or a reference `.pt` file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            sd = load_file(path)
        except Exception as e:  # safetensors raises its own error types
            raise ReferenceImportError(f"{path}: not a readable safetensors file ({e})") from e
    else:
        from madad_jax.interop.torch_pickle import load_state_dict as load_pt

        sd = load_pt(path)
    sd = {k: np.asarray(v) for k, v in sd.items()}
    for name, arr in sd.items():
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            raise ReferenceImportError(f"{path}: tensor {name} holds {bad} NaN/Inf value(s)")
    return _strip_prefix(sd, "module.")


def _strip_prefix(sd: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


# ---------------------------------------------------------------------------- converting


def torch_name(path: tuple[str, ...]) -> str:
    """The reference's state_dict key of a Flax parameter path.

    Module names carry the torch indices as `_N` suffixes (`input_blocks_4_0` ->
    `input_blocks.4.0`), except the autoencoder's `mid.block_1` / `mid.attn_1` names.
    """
    parts = []
    for i, seg in enumerate(path[:-1]):
        if i > 0 and path[i - 1] == "mid":
            parts.append(seg)
        else:
            parts.append(re.sub(r"_(\d+)", r".\1", seg))
    leaf = {"scale": "weight", "kernel": "weight", "bias": "bias"}[path[-1]]
    return ".".join(parts + [leaf])


def _to_flax(name: str, arr: np.ndarray, leaf: str, want: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)
    if leaf == "kernel" and len(want) == 4:  # conv: OIHW -> HWIO
        if arr.ndim != 4:
            raise ValueError(f"{name}: expected a 4-D conv weight, got shape {arr.shape}")
        arr = arr.transpose(2, 3, 1, 0)
    elif leaf == "kernel" and len(want) == 2:  # linear / 1x1 conv: (O, I[, 1, 1]) -> (I, O)
        if arr.ndim < 2 or any(s != 1 for s in arr.shape[2:]):
            raise ValueError(f"{name}: expected a linear or 1x1 weight, got shape {arr.shape}")
        arr = arr.reshape(arr.shape[:2]).T
    if arr.shape != tuple(want):
        raise ValueError(
            f"{name}: shape {tuple(arr.shape)} does not match the architecture "
            f"(expects {tuple(want)} in JAX layout)")
    return np.ascontiguousarray(arr)


def convert(sd: dict[str, np.ndarray], abstract: Any,
            ignore_prefixes: tuple[str, ...] = ()) -> dict[str, Any]:
    """Map a torch state_dict onto the Flax params tree `abstract` (shapes only).

    Raises ValueError on missing keys, unexpected keys (outside `ignore_prefixes`) or shape
    mismatches.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    out, used, missing = [], set(), []
    for kp, spec in leaves:
        path = tuple(k.key for k in kp)
        name = torch_name(path)
        if name not in sd:
            missing.append(name)
            out.append(None)
            continue
        used.add(name)
        out.append(_to_flax(name, sd[name], path[-1], tuple(spec.shape)))
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ValueError(f"missing weights {', '.join(missing[:5])}{more}")
    extra = sorted(k for k in sd if k not in used and not k.startswith(ignore_prefixes))
    if extra:
        more = f" (and {len(extra) - 5} more)" if len(extra) > 5 else ""
        raise ValueError(f"unexpected weights {', '.join(extra[:5])}{more}")
    return jax.tree_util.tree_unflatten(treedef, out)


def unet_abstract(unet_cfg: Any) -> Any:
    model = UNet(**unet_kwargs(unet_cfg))
    s = 2 ** (len(unet_cfg["channel_mult"]) - 1)
    z = jax.ShapeDtypeStruct((1, s, s, unet_cfg["in_channels"]), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    return jax.eval_shape(lambda z, t: model.init(jax.random.key(0), z, t), z, t)["params"]


def vae_abstract(vae_cfg: Any) -> Any:
    model = AutoencoderKL(**vae_kwargs(vae_cfg))
    s = 2 ** (len(vae_cfg["ch_mult"]) - 1)
    x = jax.ShapeDtypeStruct((1, s, s, vae_cfg["in_channels"]), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]


def convert_unet(sd: dict[str, np.ndarray], unet_cfg: Any) -> dict[str, Any]:
    """The reference `UNetModel` state_dict as `UNet` params (numpy, float32)."""
    return convert(sd, unet_abstract(unet_cfg))


def convert_vae(sd: dict[str, np.ndarray], vae_cfg: Any) -> dict[str, Any]:
    """The reference `AutoencoderKL` state_dict as `AutoencoderKL` params.

    Keys outside the encoder, decoder and the two quantization convs (e.g. the training
    loss's `loss.*`) are ignored.
    """
    ignore = tuple({k.split(".")[0] + "." for k in sd} - set(VAE_PREFIXES))
    return convert(sd, vae_abstract(vae_cfg), ignore_prefixes=ignore)


# ---------------------------------------------------------------------------- architecture


def arch_from_reference(ref: dict[str, Any]) -> dict[str, Any]:
    """`checkpoint` arch (image_size, latent_scale, vae, model) from an ARCH.json object."""
    missing = [k for k in ("image_size", "unet", "vae") if k not in ref]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    u, v = ref["unet"], ref["vae"]
    unet_cfg = {k: u[k] for k in UNET_KEYS if k != "dropout" and k in u}
    lacking = [k for k in UNET_KEYS if k != "dropout" and k not in u]
    if lacking:
        raise ValueError(f"unet: missing key(s) {', '.join(lacking)}")
    unet_cfg["dropout"] = float(u.get("dropout", DEFAULT_UNET_DROPOUT))
    lacking = [k for k in VAE_KEYS if k not in v]
    if lacking:
        raise ValueError(f"vae: missing key(s) {', '.join(lacking)}")
    vae_cfg = {k: v[k] for k in VAE_KEYS}
    for cfg, keys in ((unet_cfg, ("attention_resolutions", "channel_mult")),
                      (vae_cfg, ("ch_mult", "attn_resolutions"))):
        for k in keys:
            cfg[k] = [int(x) for x in cfg[k]]
    return {
        "image_size": int(ref["image_size"]),
        "latent_scale": float(ref.get("latent_scale", 0.18215)),
        "vae": vae_cfg,
        "model": {"name": "unet", "unet": unet_cfg},
    }


def preset_reference(preset: str) -> dict[str, Any]:
    """ARCH.json contents for a reference UNet preset with the medical VAE at 256x256."""
    if preset not in UNET_PRESETS or preset == "UNet_XL":
        raise ValueError(f"unknown preset {preset!r}; expected UNet_XS, UNet_S, UNet_M or UNet_L")
    return {"image_size": 256, "latent_scale": 0.18215,
            "unet": unet(preset).to_dict(), "vae": medical_vae().to_dict()}


# ---------------------------------------------------------------------------- command line


def _parse(argv: list[str]) -> argparse.Namespace:
    p = OneLineParser(prog="python -m madad_jax.import_reference",
                      description="Import the reference's UNet and VAE weights as an "
                                  "Orbax checkpoint.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--arch", help="ARCH.json (image_size, latent_scale, unet, vae)")
    g.add_argument("--unet-preset", choices=["UNet_XS", "UNet_S", "UNet_M", "UNet_L"])
    p.add_argument("--unet", required=True, help=".safetensors or .pt UNet weights")
    p.add_argument("--vae", required=True, help=".safetensors or .pt VAE weights")
    p.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")
    p.add_argument("--verbose", action="store_true", help="print tracebacks")
    return p.parse_args(argv)


def _read_arch(args: argparse.Namespace) -> dict[str, Any]:
    if args.unet_preset:
        return arch_from_reference(preset_reference(args.unet_preset))
    try:
        with open(args.arch) as f:
            ref = json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{args.arch}: no such file") from e
    except (OSError, ValueError) as e:
        raise ReferenceImportError(f"{args.arch}: not a readable JSON file ({e})") from e
    if not isinstance(ref, dict):
        raise ReferenceImportError(f"{args.arch}: expected a JSON object")
    try:
        return arch_from_reference(ref)
    except (KeyError, TypeError, ValueError) as e:
        raise ReferenceImportError(f"{args.arch}: {e}") from e


def _convert_file(path: str, fn, cfg: dict[str, Any]) -> dict[str, Any]:
    sd = load_state_dict(path)
    try:
        return fn(sd, cfg)
    except ValueError as e:
        raise ReferenceImportError(f"{path}: {e}") from e


def run(args: argparse.Namespace) -> str:
    """Convert and write the checkpoint; returns the output directory."""
    arch = _read_arch(args)
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not (os.path.isdir(out) and not os.listdir(out)):
        raise ReferenceImportError(f"{args.out}: already exists and is not an empty directory")
    denoiser = _convert_file(args.unet, convert_unet, arch["model"]["unet"])
    vae = _convert_file(args.vae, convert_vae, arch["vae"])
    with files.atomic_path(out, directory=True) as tmp:
        checkpoint.save_params(tmp, {"vae": vae, "denoiser": denoiser}, arch)
    return out


def main(argv: list[str] | None = None) -> int:
    return run_command("import_reference", _parse, lambda args: [f"wrote {run(args)}"], argv)


if __name__ == "__main__":
    sys.exit(main())
