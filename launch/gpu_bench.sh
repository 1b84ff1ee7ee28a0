#!/usr/bin/env bash
# The accelerator figures of docs/benchmarks.md, in one command with a bounded run time:
#   bash launch/gpu_bench.sh [OUT_DIR] [SECONDS]        (defaults: bench_gpu, 540)
# Each figure runs under its own share of SECONDS (a figure cut short is reported, the
# others still run); the JSON lines go to OUT_DIR/*.jsonl and a summary to stdout:
#   1. DiT-B/2 training step, bf16, latent cache: MFU (target >= 40 %);
#   2. UNet_L training slices/s, bf16, with the VAE encoder in the step;
#   3. a whole 155-slice 256x256 volume through inference, S = 10, bf16, in batches of 16:
#      latency (target < 1 s), peak memory and the fused jit's temporaries (temp_mb).
# The whole run takes at most SECONDS + 60 s (each figure is stopped at SECONDS / 3).
# Compiles go to OUT_DIR/compile_cache, so a second run gives the warm compile times.
set -uo pipefail
out="${1:-bench_gpu}"; budget="${2:-540}"
cd "$(dirname "$0")/.."
mkdir -p "$out"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
py="${PYTHON:-python}"
share=$(( budget / 3 ))
bench() {  # NAME ARGS...: one figure under its time share
  local name="$1"; shift
  timeout --signal=INT --kill-after=20 "$share" "$py" -m madad_jax.bench \
    --compile-cache="$out/compile_cache" --out="$out/$name.jsonl" "$@" \
    || echo "gpu_bench: $name stopped (exit $?, limit ${share}s)" >&2
}
bench dit_b2 --what=train --model=DiT_B/2 --batch=256 --latent-cache=on --dtype=bfloat16 \
  --reps=5 --warmup=2
bench unet_l --what=train --model=UNet_L --batch=96 --latent-cache=off --dtype=bfloat16 \
  --reps=5 --warmup=2
bench volume --what=infer --model=UNet_L --infer-batch=16 --ddim-steps=10 \
  --dtype=bfloat16 --volume=true --reps=3 --warmup=1
for f in "$out"/*.jsonl; do
  [[ -f "$f" ]] && "$py" - "$f" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    d = json.loads(line)
    keep = ("figure", "model", "batch", "dtype", "step_s", "slices_per_s", "mfu", "volume_s",
            "batch_s", "compile_s", "device_peak_mb", "temp_mb", "device_kind", "error")
    print({k: d[k] for k in keep if d.get(k) is not None})
PY
done
