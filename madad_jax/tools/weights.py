"""Copy a checkpoint's weights without its training state: the parameters and the
architecture of one step, into a new params-only Orbax checkpoint (a third of the size of a
training checkpoint, whose optimizer moments are not needed to use the model).

    python -m madad_jax.tools.weights SRC_DIR DST_DIR [--step N] [--only vae]

The demo's shipped autoencoder (`madad_jax/assets/demo_vae`) was made this way from a
`mode=train_vae` run, with `--only vae`.
"""

from __future__ import annotations

import argparse
import os

from madad_jax.core import checkpoint as ckpt
from madad_jax.core import cli, files


def parse(argv: list[str]) -> argparse.Namespace:
    p = cli.OneLineParser(prog="python -m madad_jax.tools.weights", description=__doc__)
    p.add_argument("src", help="a checkpoint directory (a workdir's checkpoints/ or "
                               "vae_checkpoints/)")
    p.add_argument("dst", help="the new params-only checkpoint directory (must not exist)")
    p.add_argument("--step", type=int, default=None, help="default: the latest")
    p.add_argument("--only", default="", help="keep one top-level parameter tree (vae | "
                                              "denoiser)")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def copy_weights(src: str, dst: str, step: int | None = None, only: str = "") -> int:
    """Write `src`'s parameters and architecture at `step` to `dst`; returns the step."""
    if os.path.exists(dst):
        raise FileExistsError(f"{dst}: already exists")
    step = ckpt.latest_step(src) if step is None else step
    if step is None:
        raise FileNotFoundError(f"{src}: no checkpoint found")
    params, arch = ckpt.load_params(src, step)
    if only:
        if only not in params:
            raise ValueError(f"{src}: no '{only}' parameters (has {sorted(params)})")
        params = {only: params[only]}
    with files.atomic_dir(dst) as tmp:
        ckpt.save_params(tmp, params, arch, step=step)
    return step


def main(argv: list[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> list[str]:
        step = copy_weights(args.src, args.dst, args.step, args.only)
        return [f"wrote step {step} of {args.src} to {args.dst}"]

    return cli.run_command("weights", parse, body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
