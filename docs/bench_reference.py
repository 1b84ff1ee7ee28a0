"""CPU speed of the authors' MAD-AD PyTorch code (farzad-bz/MAD-AD @ e76f546), float32.

Not part of the package: it needs torch, numpy and a checkout of the authors' repository
(`--ref-dir`). It produced the reference columns of docs/benchmarks.md:

    python docs/bench_reference.py --ref-dir=/path/to/MAD-AD --reps=3 --out=ref.json

Random weights; the medical VAE's architecture (ch 128, ch_mult 1,2,4,4, 2 res blocks, no
attention levels, 256x256, KL-f8) and UNet_XS (model_channels 64, 4 heads) from models.py.

- train step: the body of train-MAD-AD.py's loop at batch 8: VAE posterior sample, the
  reference's random_mask + brain-mask reduction, diffusion.training_losses, backward, AdamW
  step (lr 4e-5, wd 1e-4), zero_grad. Model in train mode (dropout 0.4).
- inference per slice: the body of evaluate-MAD-AD.py's loop at batch 1: VAE posterior mean,
  10-step mask-guided DDIM (eta 0.5, the reference default), two decodes, then the per-slice
  anomaly map of its evaluate() (abs diff, clip, x4, gaussian_filter sigma 5).

torch.set_num_threads(2); one warm-up, then the median of --reps timed repetitions, in wall
seconds and in process CPU seconds (the latter is much less sensitive to other processes).
Writes the figures as JSON to `--out`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import torch


def _import_reference(ref_dir: Path) -> types.SimpleNamespace:
    """The authors' modules, imported from their checkout (which they expect as the cwd)."""
    sys.path.insert(0, str(ref_dir))
    os.chdir(ref_dir)  # the authors' modules read their configs relative to the checkout
    from diffusion_x0 import create_diffusion
    from ldm.models.autoencoder import AutoencoderKL
    from models import UNET_models

    def script(name: str, filename: str) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(name, ref_dir / filename)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return types.SimpleNamespace(
        create_diffusion=create_diffusion, AutoencoderKL=AutoencoderKL,
        UNET_models=UNET_models, evaluate=script("ref_evaluate", "evaluate-MAD-AD.py"),
        train=script("ref_train", "train-MAD-AD.py"))


MEDICAL_DDCONFIG = dict(double_z=True, z_channels=4, resolution=256, in_channels=1, out_ch=1,
                        ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[],
                        dropout=0.0)


def synthetic_batch(n: int, size: int, gen: torch.Generator):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size),
                            indexing="ij")
    brain = ((yy / 0.8) ** 2 + (xx / 0.65) ** 2 < 1).float()
    img = 0.4 + 0.1 * torch.sin(5 * yy) * torch.cos(4 * xx)
    x = torch.stack([(img + 0.02 * torch.randn(size, size, generator=gen)) * brain
                     for _ in range(n)])[:, None]
    return x * 2 - 1, brain.expand(n, size, size).clone()


def timed(fn, reps: int) -> tuple[list[float], list[float], dict]:
    """Wall seconds and process CPU seconds (all threads) per repetition, after a warm-up."""
    fn()  # warm-up
    times, cpu, parts = [], [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        part = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        parts.append(part)
    med_parts = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
    return times, cpu, med_parts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ref-dir", required=True, help="checkout of farzad-bz/MAD-AD")
    ap.add_argument("--out", default="bench_reference.json")
    opts = ap.parse_args()
    out = Path(opts.out).resolve()  # before the import moves the cwd into the checkout
    ref = _import_reference(Path(opts.ref_dir).resolve())
    torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    gen = torch.Generator().manual_seed(0)
    load_before = os.getloadavg()

    vae = ref.AutoencoderKL(ddconfig=MEDICAL_DDCONFIG, lossconfig={"target": "torch.nn.Identity"},
                        embed_dim=4).eval()
    model = ref.UNET_models["UNet_XS"](latent_size=32)
    diffusion = ref.create_diffusion(timestep_respacing="ddim10", predict_xstart=True,
                                 sigma_small=False, learn_sigma=False, diffusion_steps=10)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-5, weight_decay=1e-4)
    n_params = sum(p.numel() for p in model.parameters())

    # ------------------------------------------------------------------ train step
    x_img, brainmask = synthetic_batch(opts.batch, 256, gen)
    model.train()

    def train_step() -> dict:
        t0 = time.perf_counter()
        with torch.no_grad():
            x = vae.encode(x_img).sample().mul_(0.18215)
        t1 = time.perf_counter()
        t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],))
        mask_patch_size_x = np.random.choice([1, 2, 4, 8], 1, p=[0.2, 0.3, 0.3, 0.2]).item()
        mask_patch_size_y = np.random.choice([1, 2, 4, 8], 1, p=[0.2, 0.3, 0.3, 0.2]).item()
        mask_ratios = np.random.uniform(low=0.0, high=0.4, size=x.shape[0])
        mask = ref.train.random_mask(x, mask_ratios=mask_ratios,
                                     mask_patch_size_x=mask_patch_size_x,
                                     mask_patch_size_y=mask_patch_size_y)
        brainmask_reduced = (torch.nn.functional.avg_pool2d(brainmask.unsqueeze(1), 16, 16)
                             < 0.9).to(torch.int32)
        brainmask_reduced = torch.repeat_interleave(brainmask_reduced, x.shape[1], 1)
        brainmask_reduced = torch.repeat_interleave(
            torch.repeat_interleave(brainmask_reduced, 2, 2), 2, 3)
        mask[brainmask_reduced == 1] = 1
        noise = torch.randn_like(x)
        loss_dict = diffusion.training_losses(model, x, t, {"mask": mask}, noise=noise)
        loss = loss_dict["loss"].mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss.item()
        t2 = time.perf_counter()
        return {"vae_encode_s": t1 - t0, "unet_fwd_bwd_adamw_s": t2 - t1}

    train_times, train_cpu, train_parts = timed(train_step, opts.reps)

    # ------------------------------------------------------------------ inference
    model.eval()
    x1, _ = synthetic_batch(1, 256, gen)

    def infer_slice() -> dict:
        with torch.no_grad():
            t0 = time.perf_counter()
            encoded = vae.encode(x1).mean.mul_(0.18215)
            t1 = time.perf_counter()
            latent_corrected = diffusion.ddim_sample_loop(
                model, encoded.shape, noise=encoded, clip_denoised=False, t=10,
                model_kwargs={"mask": torch.ones_like(encoded)}, progress=False,
                device=torch.device("cpu"), eta=0.5)
            t2 = time.perf_counter()
            image_samples = vae.decode(latent_corrected / 0.18215)
            x0 = vae.decode(encoded / 0.18215)
            t3 = time.perf_counter()
        # the per-slice part of evaluate(): image difference -> clip -> x4 -> gaussian
        for xx, image_sample in zip([x0], [image_samples], strict=True):
            image_difference = (((((torch.abs(image_sample - xx))).to(torch.float32)).mean(
                axis=0)).detach().cpu().numpy().transpose(1, 2, 0).max(axis=2))
            image_difference = (np.clip(image_difference, 0.0, 0.25)) * 4
            ref.evaluate.smooth_mask(image_difference, sigma=5)
        t4 = time.perf_counter()
        return {"vae_encode_s": t1 - t0, "ddim10_s": t2 - t1, "two_decodes_s": t3 - t2,
                "anomaly_map_s": t4 - t3}

    infer_times, infer_cpu, infer_parts = timed(infer_slice, opts.reps)
    load_after = os.getloadavg()

    result = {
        "code": "farzad-bz/MAD-AD @ e76f546 (authors' PyTorch), random weights, float32, CPU",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "os_cpu_count": os.cpu_count(),
        "loadavg_1m_before_after": [load_before[0], load_after[0]],
        "note": "wall seconds are inflated when other processes share the cores (see loadavg); "
                "cpu_s is process CPU time summed over threads, so cpu_s / threads is about "
                "the wall time on an idle machine with perfect 2-thread scaling",
        "unet": "UNet_XS (model_channels 64, num_heads 4, channel_mult 1,2,4, 2 res blocks, "
                "attention 4,2,1, dropout 0.4)",
        "unet_params": n_params,
        "vae": {"ddconfig": MEDICAL_DDCONFIG, "embed_dim": 4},
        "train_step": {
            "batch": opts.batch,
            "image_size": 256,
            "median_s": statistics.median(train_times),
            "reps_s": train_times,
            "cpu_s_median": statistics.median(train_cpu),
            "cpu_s_reps": train_cpu,
            "median_parts_s": train_parts,
        },
        "inference_per_slice": {
            "batch": 1,
            "ddim_steps": 10,
            "eta": 0.5,
            "median_s": statistics.median(infer_times),
            "reps_s": infer_times,
            "cpu_s_median": statistics.median(infer_cpu),
            "cpu_s_reps": infer_cpu,
            "median_parts_s": infer_parts,
        },
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
