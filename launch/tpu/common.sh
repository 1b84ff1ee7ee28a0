#!/usr/bin/env bash
# Settings shared by the Cloud TPU VM scripts; override any of them in the environment.
#   PROJECT, ZONE, TPU_NAME, ACCELERATOR_TYPE, RUNTIME_VERSION, SPOT=1, REMOTE_DIR, VENV
# shellcheck disable=SC2034
PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null)}"
ZONE="${ZONE:-us-east5-a}"
TPU_NAME="${TPU_NAME:-madad-pod}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5p-32}"
case "$ACCELERATOR_TYPE" in
  v5p-*) DEFAULT_RUNTIME="v2-alpha-tpuv5" ;;
  v5litepod-*) DEFAULT_RUNTIME="v2-alpha-tpuv5-lite" ;;
  v6e-*) DEFAULT_RUNTIME="v2-alpha-tpuv6e" ;;
  *) DEFAULT_RUNTIME="tpu-ubuntu2204-base" ;;  # v4
esac
RUNTIME_VERSION="${RUNTIME_VERSION:-$DEFAULT_RUNTIME}"
REMOTE_DIR="${REMOTE_DIR:-madad-jax}"  # relative to each worker's home directory
VENV="${VENV:-venv-madad}"
JAX_VERSION="${JAX_VERSION:-0.10.2}"

tpu_ssh() {  # tpu_ssh COMMAND: run COMMAND on every worker of the slice, in parallel
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --worker=all --command="$1"
}

tpu_state() {  # READY, CREATING, PREEMPTED, ... or MISSING
  gcloud compute tpus tpu-vm describe "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --format='value(state)' 2>/dev/null || echo MISSING
}
