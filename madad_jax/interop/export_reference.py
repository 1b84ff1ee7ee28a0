"""Export a checkpoint back to the reference's format (the inverse of `import_reference`).

    python -m madad_jax.export_reference --checkpoint=CKPT_DIR --out=DIR

writes `DIR/unet.safetensors` and `DIR/vae.safetensors` with the reference's parameter names
and PyTorch layouts, and `DIR/arch.json` in the ARCH format `import_reference --arch` reads.
The denoiser's EMA weights are exported when the checkpoint has them (`--no-ema`: the raw
ones). A DiT denoiser cannot be exported (the reference has none), nor whitened latents
(the reference multiplies by `latent_scale`) unless `--allow-whitening`, which adds the
whitening beside the weights in `DIR/latent_whitening.safetensors`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Any

import jax
import numpy as np

from madad_jax.core.cli import OneLineParser, run_command
from madad_jax.core.errors import InputError
from madad_jax.interop.import_reference import torch_name
from madad_jax.models import UNET_KEYS, VAE_KEYS
from madad_jax.sampling.loading import restore

REFERENCE_UNET_KEYS = UNET_KEYS  # the reference's UNetModel kwargs, dropout included
WHITENING_FILE = "latent_whitening.safetensors"


class ReferenceExportError(InputError):
    """A checkpoint the reference's code cannot express (message says why)."""


def _torch_kernel(name: str, arr: np.ndarray, model: str) -> np.ndarray:
    """A Flax kernel in the reference's layout: conv HWIO -> OIHW; (I, O) -> the torch module's
    own shape (linear (O, I), 1-D attention conv (O, I, 1), 1x1 conv (O, I, 1, 1))."""
    if arr.ndim == 4:
        return arr.transpose(3, 2, 0, 1)
    if arr.ndim != 2:
        raise ReferenceExportError(f"{name}: unexpected kernel shape {arr.shape}")
    arr = arr.T
    if model == "vae":  # every 2-D kernel of the autoencoder is a 1x1 Conv2d
        return arr[:, :, None, None]
    if name.endswith((".qkv.weight", ".proj_out.weight")):  # the UNet's attention: Conv1d
        return arr[:, :, None]
    if ".skip_connection." in name:
        return arr[:, :, None, None]
    return arr


def reference_state_dict(params: Any, model: str) -> dict[str, np.ndarray]:
    """`{reference name: float32 array}` for a `UNet` (model="unet") or `AutoencoderKL`
    ("vae") params tree."""
    out = {}
    for kp, leaf in jax.tree_util.tree_leaves_with_path(params):
        path = tuple(k.key for k in kp)
        name = torch_name(path)
        arr = np.asarray(leaf, np.float32)
        if path[-1] == "kernel":
            arr = _torch_kernel(name, arr, model)
        if name in out:
            raise ReferenceExportError(f"two parameters map to {name}")
        out[name] = np.ascontiguousarray(arr)
    return out


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def reference_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's `arch` as an ARCH.json object (the reference's kwargs and ddconfig)."""
    model = arch.get("model", {})
    name = model.get("name", "unet")
    if name != "unet":
        raise ReferenceExportError(f"the denoiser is a {name!r}; the reference has only the UNet")
    unet_cfg, vae_cfg = model["unet"], arch["vae"]
    return {
        "image_size": int(arch["image_size"]),
        "latent_scale": float(arch.get("latent_scale", 0.18215)),
        "unet": {k: _plain(unet_cfg[k]) for k in REFERENCE_UNET_KEYS},
        "vae": {k: _plain(vae_cfg[k]) for k in VAE_KEYS},
    }


def whitening(arch: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The latent whitening `{shift, matrix}` a checkpoint uses, or None."""
    w = arch.get("latent_whitening") or {}
    if len(w.get("matrix", ()) or ()) == 0:
        return None
    return {"shift": np.asarray(w["shift"], np.float64),
            "matrix": np.asarray(w["matrix"], np.float64)}


# ---------------------------------------------------------------------------- command line


def _parse(argv: list[str]) -> argparse.Namespace:
    p = OneLineParser(prog="python -m madad_jax.export_reference",
                      description="Export a checkpoint as the reference's safetensors weights.")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or workdir")
    p.add_argument("--out", required=True, help="output directory (must not exist, or be empty)")
    p.add_argument("--allow-whitening", action="store_true",
                   help=f"export whitened latents, writing the whitening to {WHITENING_FILE}")
    p.add_argument("--no-ema", action="store_true", help="the raw denoiser weights, not EMA")
    p.add_argument("--verbose", action="store_true", help="print tracebacks")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> tuple[str, list[str]]:
    """Write the export; returns the output directory and notes for the user."""
    from safetensors.numpy import save_file

    out = os.path.abspath(args.out)
    if os.path.exists(out) and not (os.path.isdir(out) and not os.listdir(out)):
        raise ReferenceExportError(f"{args.out}: already exists and is not an empty directory")
    restored = restore(args.checkpoint, ema=not args.no_ema)
    arch = reference_arch(restored.arch)
    white = whitening(restored.arch)
    notes = []
    if white is not None:
        if not args.allow_whitening:
            raise ReferenceExportError(
                f"{args.checkpoint}: the model uses whitened latents, which the reference "
                "cannot express (it multiplies by latent_scale); --allow-whitening exports "
                f"anyway with the whitening in {WHITENING_FILE}")
        notes.append(f"the latents are whitened: {WHITENING_FILE} holds shift and matrix "
                     "(z = (latent - shift) @ matrix.T replaces latent * latent_scale, which "
                     "the reference's code does not do)")
    unet_sd = reference_state_dict(restored.params["denoiser"], "unet")
    vae_sd = reference_state_dict(restored.params["vae"], "vae")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        save_file(unet_sd, os.path.join(tmp, "unet.safetensors"))
        save_file(vae_sd, os.path.join(tmp, "vae.safetensors"))
        if white is not None:
            save_file(white, os.path.join(tmp, WHITENING_FILE))
        with open(os.path.join(tmp, "arch.json"), "w") as f:
            json.dump(arch, f, indent=1)
            f.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
        if os.path.isdir(out):
            os.rmdir(out)  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, notes


def main(argv: list[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> list[str]:
        out, notes = run(args)
        return [f"note: {note}" for note in notes] + [f"wrote {out}"]

    return run_command("export_reference", _parse, body, argv)


if __name__ == "__main__":
    sys.exit(main())
