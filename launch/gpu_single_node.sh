#!/usr/bin/env bash
# One node, all of its GPUs, one process (JAX sees every local GPU).
#   bash launch/gpu_single_node.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
# e.g. bash launch/gpu_single_node.sh configs/gpu8.py:FLAIR runs/brats_flair \
#        --config.vae_train.checkpoint=CKPT_DIR
# Needs: pip install -r requirements.txt "jax[cuda12]==0.10.2". CUDA_VISIBLE_DEVICES picks
# a subset of GPUs. Rerunning the same command resumes.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.KEY=VALUE ...]" >&2
  exit 2
fi
config="$1"; workdir="$2"; shift 2
cd "$(dirname "$0")/.."
# Let XLA use most of the GPU memory, and keep the data workers off the GPUs.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
exec "${PYTHON:-python}" -m madad_jax.main --config="$config" --workdir="$workdir" \
  --config.distributed.initialize=off "$@"
