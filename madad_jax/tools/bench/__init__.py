"""Speed benchmarks of training, inference and the data pipeline: one JSON line per figure.

    python -m madad_jax.bench --what=train --model=UNet_XS --batch=8 --image-size=256
    python -m madad_jax.bench --what=infer --model=UNet_XS --infer-batch=1 --ddim-steps=2,5,10
    python -m madad_jax.bench --what=data
    python -m madad_jax.bench --what=conv --reps=5   # the VAE's 3x3 convs, four lowerings
    python -m madad_jax.bench --tiny            # seconds-long smoke run of everything

Every list-valued flag (`--model=UNet_XS,DiT_B`, `--dtype=float32,bfloat16`, `--donate=true,
false`, ...) is swept: one figure per combination. Figures are timed after `--warmup` calls,
over `--reps` calls, each blocked until its results are ready; lines give the median, min and
max (wall-clock) and the median process CPU time, which is steadier than wall time on a
shared machine. Lowering and compiling are timed separately.

Training runs the real `make_train_step` under `jax.jit` on one device, with the state
donated (unless `--donate=false`), on random data placed on the device beforehand: images
through the VAE encoder, or (`--latent-cache=on`) the posterior moments a latent cache holds.
Inference runs `anomaly.make_infer_fn` (encode, the DDIM loop, both decodes, the smoothed map
in one jit) on random weights; `--infer-impl=separate` and `separate-sync` are the unfused
baselines (one jit per piece, a Python loop over steps, and with `-sync` a host read-back each
step). FLOPs are XLA's cost analysis (`flops_xla`, which counts loop bodies once) and the
matmul + conv count of the jaxpr (`flops`, loops counted in full); MFU divides `flops` by the
step time and the device's peak for the compute dtype (`flops.PEAK_FLOPS`).

Only jax, flax, optax, numpy, ml_collections and orbax (and scipy, through the sampler's
smoothing) are imported at module level; the data benchmark imports grain and ArrayRecord
when it runs.

`--what=conv` times the VAE's 3x3 convolution at each level in four lowerings (NHWC, NCHW,
im2col, nine shifted matmuls), each checked against NHWC's output.

Modules: `harness` (timing, memory, FLOP rates), `figures` (train, infer, infer_volume, data),
`convs` (conv), `cli` (flags and the sweep). `python -m madad_jax.bench` is the public command.
"""

from madad_jax.tools.bench.cli import build_parser, figure_jobs, main
from madad_jax.tools.bench.convs import bench_conv
from madad_jax.tools.bench.figures import bench_data, bench_infer, bench_train, model_config
from madad_jax.tools.bench.harness import memory_fields, rate_fields, time_calls

__all__ = [
    "bench_conv",
    "bench_data",
    "bench_infer",
    "bench_train",
    "build_parser",
    "figure_jobs",
    "main",
    "memory_fields",
    "model_config",
    "rate_fields",
    "time_calls",
]
