#!/usr/bin/env bash
# Delete the slice (checkpoints on the bucket are kept).
set -euo pipefail
source "$(dirname "$0")/common.sh"
gcloud compute tpus tpu-vm delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --quiet
