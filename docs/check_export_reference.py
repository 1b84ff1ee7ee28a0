"""Load an export of this project into the authors' PyTorch code and compare the outputs.

Not part of the package: it needs torch, safetensors, einops, pillow, numpy and a checkout of
farzad-bz/MAD-AD (`--ref-dir`).

    python -m madad_jax.export_reference --checkpoint=CKPT_DIR --out=EXPORT
    python docs/export_outputs.py --checkpoint=CKPT_DIR --out=outputs.npz
    python docs/check_export_reference.py --ref-dir=MAD-AD --export=EXPORT --outputs=outputs.npz

The UNet is the authors' `UNetModel` (openaimodel_medical, as their `create_unet_model`
builds it) and the VAE their `Encoder` / `Decoder` with the 1x1 quant convs of their
`AutoencoderKL`; both load the export with `load_state_dict(strict=True)`. The script prints
the largest absolute difference of each output and exits non-zero above `--tol`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file


def build(ref_dir: Path, arch: dict):
    sys.path.insert(0, str(ref_dir))
    from ldm.modules.diffusionmodules.model import Decoder, Encoder
    from ldm.modules.diffusionmodules.openaimodel_medical import UNetModel

    u = arch["unet"]
    latent = arch["image_size"] // 2 ** (len(arch["vae"]["ch_mult"]) - 1)
    unet = UNetModel(image_size=latent, in_channels=u["in_channels"],
                     model_channels=u["model_channels"], out_channels=u["out_channels"],
                     num_heads=u["num_heads"], num_res_blocks=u["num_res_blocks"],
                     dropout=u.get("dropout", 0.0),
                     attention_resolutions=list(u["attention_resolutions"]),
                     channel_mult=list(u["channel_mult"]), use_spatial_transformer=False,
                     transformer_depth=1, context_dim=None)
    v = dict(arch["vae"])
    embed = v.pop("embed_dim")

    class VAE(torch.nn.Module):  # the parameter layout of the authors' AutoencoderKL
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = Encoder(**v), Decoder(**v)
            self.quant_conv = torch.nn.Conv2d(2 * v["z_channels"], 2 * embed, 1)
            self.post_quant_conv = torch.nn.Conv2d(embed, v["z_channels"], 1)

    return unet.eval(), VAE().eval()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref-dir", required=True)
    ap.add_argument("--export", required=True)
    ap.add_argument("--outputs", required=True)
    ap.add_argument("--tol", type=float, default=1e-3)
    args = ap.parse_args()
    export = Path(args.export)
    arch = json.loads((export / "arch.json").read_text())
    unet, vae = build(Path(args.ref_dir).resolve(), arch)
    unet.load_state_dict(load_file(export / "unet.safetensors"), strict=True)
    vae.load_state_dict(load_file(export / "vae.safetensors"), strict=True)
    want = dict(np.load(args.outputs))
    with torch.no_grad():
        moments = vae.quant_conv(vae.encoder(torch.from_numpy(want["images"])))
        mean, logvar = torch.chunk(moments, 2, dim=1)
        logvar = torch.clamp(logvar, -30.0, 20.0)
        decoded = vae.decoder(vae.post_quant_conv(mean))
        x0_hat, p_clean = unet(torch.from_numpy(want["z"]), torch.from_numpy(want["t"]).long())
    got = dict(vae_mean=mean, vae_logvar=logvar, decoded=decoded, x0_hat=x0_hat,
               p_clean=p_clean)
    worst = 0.0
    for k, v in got.items():
        err = float(np.abs(v.numpy() - want[k]).max())
        worst = max(worst, err)
        print(f"{k:11s} max |torch - jax| = {err:.3g}   (max |value| {np.abs(want[k]).max():.3g})")
    print("OK" if worst <= args.tol else "MISMATCH")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
