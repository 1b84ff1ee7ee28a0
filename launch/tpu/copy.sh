#!/usr/bin/env bash
# Copy the code (git-tracked files) to every worker and install it with JAX for TPU.
# With DATA_URI=gs://BUCKET/data and DATA_DIR=/data, also copy the converted shard sets to
# each worker's local disk (each host then reads its own 1/num_hosts of the slices).
#   bash launch/tpu/copy.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
repo="$(cd "$(dirname "$0")/../.." && pwd)"
archive="$(mktemp -d)/madad-jax.tar.gz"
git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":madad-jax.tar.gz --project="$PROJECT" \
  --zone="$ZONE" --worker=all
tpu_ssh "set -e; rm -rf ~/$REMOTE_DIR; mkdir -p ~/$REMOTE_DIR; \
  tar -xzf ~/madad-jax.tar.gz -C ~/$REMOTE_DIR; \
  python3 -m venv ~/$VENV; ~/$VENV/bin/pip install -q --upgrade pip; \
  ~/$VENV/bin/pip install -q -r ~/$REMOTE_DIR/requirements.txt 'jax[tpu]==$JAX_VERSION' \
    google-cloud-storage"
if [[ -n "${DATA_URI:-}" ]]; then
  DATA_DIR="${DATA_DIR:-/data}"
  tpu_ssh "set -e; sudo mkdir -p $DATA_DIR; sudo chown \$USER $DATA_DIR; \
    gcloud storage cp -r '$DATA_URI' $DATA_DIR/"
fi
echo "code installed on every worker of $TPU_NAME"
