#!/usr/bin/env bash
# Create the TPU VM slice (every host of a pod slice is one "worker").
#   ACCELERATOR_TYPE=v5p-32 ZONE=us-east5-a TPU_NAME=madad-pod [SPOT=1] bash launch/tpu/create.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
extra=()
if [[ "${SPOT:-0}" == "1" ]]; then extra+=(--spot); fi
gcloud compute tpus tpu-vm create "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
  --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${extra[@]}"
echo "created $TPU_NAME ($ACCELERATOR_TYPE) in $ZONE"
