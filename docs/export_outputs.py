"""This project's outputs on fixed inputs, for `docs/check_export_reference.py`.

    python docs/export_outputs.py --checkpoint=CKPT_DIR --out=outputs.npz

Writes the inputs (an image batch in [-1, 1], latents and timesteps) and what the checkpoint's
models give for them: the VAE posterior (mean, logvar), the decode of the mean, the denoiser's
x0 prediction and P(clean) (the raw weights, not the EMA ones: the export's default follows the
checkpoint, so pass `--no-ema` to both if the checkpoint has EMA weights). NCHW, float32.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from madad_jax import analysis  # noqa: E402
from madad_jax.models.adapters import denoiser_fn, vae_decode, vae_encode  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-ema", action="store_true")
    ap.add_argument("--batch", type=int, default=3)
    args = ap.parse_args()
    config, models, params = analysis.load(args.checkpoint, ema=not args.no_ema)
    rng = np.random.default_rng(0)
    size, c = int(config.image_size), int(config.vae.in_channels)
    images = np.tanh(rng.standard_normal((args.batch, size, size, c))).astype(np.float32)
    mean, logvar = vae_encode(models.vae, params["vae"], jnp.asarray(images))
    decoded = vae_decode(models.vae, params["vae"], mean)
    z = rng.standard_normal(mean.shape).astype(np.float32)
    t = np.arange(args.batch, dtype=np.int32) % int(config.diffusion.num_steps)
    x0_hat, logit = denoiser_fn(models.denoiser)(params["denoiser"], jnp.asarray(z),
                                                  jnp.asarray(t))

    def nchw(a):
        return np.asarray(a, np.float32).transpose(0, 3, 1, 2)

    np.savez(args.out, images=nchw(images), z=nchw(z), t=t, vae_mean=nchw(mean),
             vae_logvar=nchw(logvar), decoded=nchw(decoded), x0_hat=nchw(x0_hat),
             p_clean=nchw(jax.nn.sigmoid(logit)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
