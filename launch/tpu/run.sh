#!/usr/bin/env bash
# Run the main job on every worker of the slice at once (one JAX process per host).
#   bash launch/tpu/run.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
# WORKDIR must be visible to all hosts, e.g. gs://BUCKET/runs/NAME. Running the same
# command again resumes from the newest checkpoint there.
set -euo pipefail
source "$(dirname "$0")/common.sh"
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.KEY=VALUE ...]" >&2
  exit 2
fi
config="$1"; workdir="$2"; shift 2
args=$(printf '%q ' --config="$config" --workdir="$workdir" \
  --config.distributed.initialize=on "$@")
tpu_ssh "cd ~/$REMOTE_DIR && ~/$VENV/bin/python -m madad_jax.main $args 2>&1 \
  | tee -a ~/madad-train.log; exit \${PIPESTATUS[0]}"
