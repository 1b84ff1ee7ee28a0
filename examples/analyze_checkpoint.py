"""Read a checkpoint, run a few slices through it, and plot the maps and the mask head.

    python examples/analyze_checkpoint.py runs/demo                       # the demo's test slices
    python examples/analyze_checkpoint.py CKPT --png-root ROOT --modality T2   # reference PNGs
    python examples/analyze_checkpoint.py CKPT --nifti SCAN.nii.gz [--segmentation SEG.nii.gz]

Without a data option the slices come from the checkpoint's own run config: the demo's
synthetic test set, or its `data.png_root` / `data.test_path`. The figure shows, per slice:
input | healthy counterpart | anomaly map | ground truth | the mask head's P(anomalous)
averaged over the DDIM steps (the paper's "average predicted mask").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from madad_jax import analysis  # noqa: E402
from madad_jax.evaluation import figures  # noqa: E402


def load_slices(args, config) -> dict:
    """images (N,H,W,1) in [-1, 1], segmentations or None, names."""
    size = int(config.image_size)
    if args.nifti:
        from madad_jax.data import nifti, preprocess
        from madad_jax.evaluation import predict

        subject = nifti.load_subject("scan", args.nifti, args.brainmask, args.segmentation)
        rows = preprocess.subject_slices(subject, predict.slice_options(config))
        segs = ([r["segmentation"] for r in rows] if subject.segmentation is not None
                else None)
        return {"images": np.stack([r["image"] for r in rows])[..., None],
                "segmentations": None if segs is None else np.stack(segs),
                "names": [f"slice_{r['slice_index']}" for r in rows]}
    if args.png_root or (config.data.get("png_root") and config.data.kind == "png"):
        from madad_jax.data.png import read_reference_split

        return read_reference_split(args.png_root or config.data.png_root, args.split,
                                    args.modality or config.data.modality, size)
    if config.data.kind == "demo":
        from madad_jax.data import synthetic

        return synthetic.from_config(config, (args.split,))[args.split]
    from madad_jax.data.sources import eval_slices

    return eval_slices(config, args.split)


def pick(data: dict, n: int) -> np.ndarray:
    """The n slices with the largest lesions, or n evenly spread slices."""
    count = len(data["images"])
    segs = data.get("segmentations")
    if segs is not None and np.any(segs):
        area = np.asarray(segs).reshape(count, -1).sum(1)
        return np.sort(np.argsort(-area, kind="stable")[:n])
    return np.unique(np.linspace(0, count - 1, min(n, count)).round().astype(int))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a workdir or an Orbax checkpoint directory")
    p.add_argument("--out", default="analysis.png", help="output PNG")
    p.add_argument("--num-slices", type=int, default=4)
    p.add_argument("--split", default="test")
    p.add_argument("--png-root", help="the reference's PNG layout root")
    p.add_argument("--modality", help="with --png-root (default: the config's)")
    p.add_argument("--nifti", help="a NIfTI scan, sliced as predict mode slices it")
    p.add_argument("--brainmask", help="with --nifti")
    p.add_argument("--segmentation", help="with --nifti")
    p.add_argument("--ddim-steps", type=int, help="override sample.ddim_steps")
    args = p.parse_args(argv)

    config, models, params = analysis.load(args.checkpoint)
    if args.ddim_steps:
        config.sample.ddim_steps = args.ddim_steps
    print(f"checkpoint {config.checkpoint}: image_size {config.image_size}, "
          f"denoiser {config.model.name}, {config.sample.ddim_steps} DDIM steps")
    data = load_slices(args, config)
    idx = pick(data, args.num_slices)
    images = np.asarray(data["images"])[idx]
    out = analysis.anomaly_maps(config, models, params, images)
    # the mask head's (h, w) grid, shown at image resolution
    f = images.shape[1] // out["mean_anomalous"].shape[1]
    mask_maps = np.repeat(np.repeat(out["mean_anomalous"], f, axis=1), f, axis=2)
    segs = data.get("segmentations")
    names = [data["names"][i] for i in idx]
    figures.slice_panels(args.out, images, out["sample"], out["anomaly_map"],
                         None if segs is None else np.asarray(segs)[idx], titles=names,
                         mask_maps=mask_maps)
    for name, m, a in zip(names, out["anomaly_map"], out["mean_anomalous"], strict=True):
        print(f"{name}: map max {m.max():.3f} mean {m.mean():.4f}; "
              f"mean P(anomalous) > 0.5 at {float((a > 0.5).mean()):.1%} of latent positions")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
