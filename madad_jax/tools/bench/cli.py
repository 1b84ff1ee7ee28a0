"""Speed benchmarks of training, inference and the data pipeline: one JSON line per figure.

    python -m madad_jax.bench --what=train --model=UNet_XS --batch=8 --image-size=256
    python -m madad_jax.bench --tiny            # seconds-long smoke run of everything

Every list-valued flag is swept (one figure per combination); see `madad_jax.tools.bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax

from madad_jax import config as config_lib
from madad_jax.core import compile_cache
from madad_jax.models.attention import ATTENTION_IMPLS
from madad_jax.tools.bench.convs import CONV_IMPLS, bench_conv, vae_conv_shapes
from madad_jax.tools.bench.figures import (
    INFER_IMPLS,
    bench_data,
    bench_infer,
    bench_train,
    model_config,
)
from madad_jax.tools.bench.harness import environment, memory_fields

WHAT = ("train", "infer", "data", "conv")
ATTENTIONS = tuple(ATTENTION_IMPLS)  # config.model.attention names


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        print(f"bench: {message}", file=sys.stderr)
        raise SystemExit(2)


def _int_list(minimum: int) -> Callable[[str], list[int]]:
    """A parser of comma-separated integers, each at least `minimum` (0 or 1)."""
    want = "positive integers" if minimum == 1 else f"integers >= {minimum}"

    def parse(text: str) -> list[int]:
        try:
            out = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers, got {text!r}") from None
        if not out or min(out) < minimum:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return out

    return parse


_ints, _ints_or_zero = _int_list(1), _int_list(0)


def _bools(text: str) -> list[bool]:
    table = {"true": True, "on": True, "1": True, "yes": True,
             "false": False, "off": False, "0": False, "no": False}
    vals = [x.strip().lower() for x in text.split(",") if x.strip()]
    if not vals or any(v not in table for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated true/false, got {text!r}")
    return [table[v] for v in vals]


def _fractions(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals or any(not 0.0 <= v <= 1.0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers in [0, 1], got "
                                         f"{text!r}")
    return vals


def _choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        vals = [x.strip() for x in text.split(",") if x.strip()]
        bad = [v for v in vals if v not in allowed]
        if not vals or bad:
            raise argparse.ArgumentTypeError(f"{bad or text!r} not in {list(allowed)}")
        return vals

    return parse


def _models(text: str) -> list[str]:
    vals = [x.strip() for x in text.split(",") if x.strip()]
    known = set(config_lib.UNET_PRESETS) | set(config_lib.DIT_PRESETS)
    for v in vals:
        base, _, patch = v.partition("/")
        if base not in known or (patch and (base not in config_lib.DIT_PRESETS
                                             or not patch.isdigit())):
            raise argparse.ArgumentTypeError(
                f"unknown model {v!r}; expected one of {sorted(known)} (DiT as DiT_B/2)")
    if not vals:
        raise argparse.ArgumentTypeError("no model given")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m madad_jax.bench", description=__doc__.split("\n")[0])
    p.add_argument("--what", type=_choices(WHAT + ("all",)), default=["all"],
                   help="figures to take: train, infer, data, conv or all")
    p.add_argument("--model", type=_models, default=["UNet_XS"],
                   help="UNet_XS..UNet_XL, DiT_S..DiT_XL (DiT_B/4: patch size 4)")
    p.add_argument("--batch", type=_ints, default=[8], help="training (and data) batch sizes")
    p.add_argument("--infer-batch", type=_ints, default=[1], help="inference batch sizes")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--latent-cache", type=_bools, default=[False, True],
                   help="train on cached posterior moments (skips the VAE encoder)")
    p.add_argument("--dtype", type=_choices(("float32", "bfloat16")), default=["float32"])
    p.add_argument("--donate", type=_bools, default=[True], help="donate the training state")
    p.add_argument("--attention", type=_choices(ATTENTIONS), default=["auto"],
                   help="config.model.attention (see madad_jax.models.attention)")
    p.add_argument("--dit-scan", type=_bools, default=[True], help="DiT: scan over layers")
    p.add_argument("--dit-remat", type=_bools, default=[False], help="DiT: remat each block")
    p.add_argument("--ddim-steps", type=_ints, default=[2, 5, 10])
    p.add_argument("--infer-impl", type=_choices(INFER_IMPLS), default=["fused"])
    p.add_argument("--flag-threshold", type=_fractions, default=[0.5],
                   help="sample.flag_threshold; 1.0 flags every position, so both decodes "
                        "run as in the reference (the figure's `decodes` says which ran)")
    p.add_argument("--volume", type=_bools, default=None,
                   help="also time a whole 155-slice volume end to end (default: off on CPU)")
    p.add_argument("--data-workers", type=_ints_or_zero, default=[0])
    p.add_argument("--data-slices", type=int, default=256)
    p.add_argument("--data-seconds", type=float, default=5.0)
    p.add_argument("--conv-impl", type=_choices(CONV_IMPLS), default=list(CONV_IMPLS),
                   help="conv: lowerings of the VAE's 3x3 convolutions (madad_jax.tools."
                        "bench.convs)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--tiny", action="store_true",
                   help="tiny models at 32x32 for a smoke test (figures mean nothing)")
    p.add_argument("--compile-cache", default="",
                   help="JAX's persistent compilation cache directory (default none: every "
                        "compile is cold); run twice for the warm compile times")
    p.add_argument("--out", default="", help="also write the JSON lines to this file")
    p.add_argument("--verbose", action="store_true", help="tracebacks for failed figures")
    return p


def figure_jobs(args: argparse.Namespace) -> Iterator[tuple[str, dict[str, Any],
                                                           Callable[[], list[dict]]]]:
    """(kind, settings, thunk) for every figure the flags ask for, in order."""
    what = set(WHAT) if "all" in args.what else set(args.what)
    common = dict(image_size=args.image_size, warmup=args.warmup, reps=args.reps,
                  tiny=args.tiny)
    if "train" in what:
        for model, batch, latents, dtype, donate, attn in itertools.product(
                args.model, args.batch, args.latent_cache, args.dtype, args.donate,
                args.attention):
            is_dit = model.partition("/")[0] in config_lib.DIT_PRESETS
            layouts = (itertools.product(args.dit_scan, args.dit_remat) if is_dit
                       else [(True, False)])
            for scan, remat in layouts:
                kw = dict(common, latents=latents, dtype=dtype, donate=donate,
                          attention=attn, scan=scan, remat=remat)
                yield ("train", dict(kw, model=model, batch=batch),
                       lambda m=model, b=batch, kw=kw: [bench_train(m, b, **kw)])
    if "infer" in what:
        volume = args.volume if args.volume is not None else [jax.default_backend() != "cpu"]
        for model, batch, steps, dtype, impl, attn, thr in itertools.product(
                args.model, args.infer_batch, args.ddim_steps, args.dtype, args.infer_impl,
                args.attention, args.flag_threshold):
            kw = dict(common, ddim_steps=steps, dtype=dtype, impl=impl, attention=attn,
                      volume=volume[0], flag_threshold=thr)
            yield ("infer", dict(kw, model=model, batch=batch),
                   lambda m=model, b=batch, kw=kw: bench_infer(m, b, **kw))
    if "data" in what:
        for batch in args.batch:
            yield ("data", dict(batch=batch, image_size=args.image_size),
                   lambda b=batch: bench_data(args.image_size, b, slices=args.data_slices,
                                              seconds=args.data_seconds,
                                              workers=args.data_workers))
    if "conv" in what:
        vae_cfg = model_config("UNet_XS", args.image_size, "float32", tiny=args.tiny).vae
        for size, ch in vae_conv_shapes(vae_cfg):
            yield ("conv", dict(size=size, channels=ch),
                   lambda s=size, c=ch: bench_conv(s, c, args.conv_impl, warmup=args.warmup,
                                                   reps=args.reps, tiny=args.tiny))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tiny:
        args.image_size = min(args.image_size, 32)
        args.data_slices = min(args.data_slices, 16)
        args.data_seconds = min(args.data_seconds, 0.5)
    if args.image_size < 8 or args.image_size % 8:
        print(f"bench: --image-size must be a positive multiple of 8, not {args.image_size}",
              file=sys.stderr)
        return 2
    with compile_cache.enabled(args.compile_cache or None):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Take every figure, print each as one JSON line, and write them to `--out`."""
    out_tmp = f"{args.out}.tmp-{os.getpid()}" if args.out else ""
    sink = open(out_tmp, "w") if out_tmp else None  # noqa: SIM115 (closed below)
    env = environment()
    failed = 0
    try:
        for kind, settings, thunk in figure_jobs(args):
            start_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            try:
                figs = thunk()
            except Exception as e:  # one failed figure does not stop the others
                failed += 1
                if args.verbose:
                    traceback.print_exc()
                figs = [dict(figure=kind, **settings,
                             error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")]
            for fig in figs:
                end_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
                line = json.dumps({**fig, **env, "load_avg_1m": start_load,
                                   "load_avg_1m_end": end_load})
                print(line, flush=True)
                if sink:
                    sink.write(line + "\n")
                    sink.flush()
        summary = json.dumps({"figure": "memory", **memory_fields(), **env})
        print(summary, flush=True)
        if sink:
            sink.write(summary + "\n")
            sink.close()
            os.replace(out_tmp, args.out)
    except BaseException:
        if sink:
            sink.close()
            with contextlib.suppress(OSError):
                os.remove(out_tmp)
        raise
    return 1 if failed else 0
