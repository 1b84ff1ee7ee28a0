#!/usr/bin/env bash
# Keep a (spot / preemptible) slice training until the run finishes.
#   SPOT=1 bash launch/tpu/resume_loop.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
# Resuming is automatic (the same command in the same WORKDIR continues from the newest
# checkpoint), so after a preemption this recreates the slice, reinstalls the code and runs
# the same command again. A run stopped by SIGTERM exits 75 after saving the step it
# reached, and is always resumed; so is one that lost a peer host (exit 76). A run that
# fails while the slice is still READY (bad input, a diverged loss) is not retried unless
# RETRY_ON_ERROR=1. MAX_ATTEMPTS bounds the retries.
set -euo pipefail
here="$(dirname "$0")"
source "$here/common.sh"
max_attempts="${MAX_ATTEMPTS:-50}"
for ((attempt = 1; attempt <= max_attempts; attempt++)); do
  state="$(tpu_state)"
  echo "[resume_loop] attempt $attempt: $TPU_NAME is $state"
  case "$state" in
    READY) ;;
    MISSING|PREEMPTED|TERMINATED|STOPPED)
      if [[ "$state" != "MISSING" ]]; then
        gcloud compute tpus tpu-vm delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
          --quiet || true
      fi
      if ! { bash "$here/create.sh" && bash "$here/copy.sh"; }; then
        sleep 120  # no capacity yet: try again
        continue
      fi ;;
    *)
      sleep 60; continue ;;  # CREATING, STARTING, REPAIRING, ...
  esac
  rc=0
  bash "$here/run.sh" "$@" || rc=$?
  if [[ $rc -eq 0 ]]; then
    echo "[resume_loop] training finished"
    exit 0
  fi
  if [[ $rc -eq 75 ]]; then  # PREEMPTED_EXIT: saved the step reached on SIGTERM; resume
    echo "[resume_loop] the run saved its step and stopped on SIGTERM (exit 75): resuming"
    continue
  fi
  if [[ $rc -eq 76 ]]; then  # LOST_PEER_EXIT: a host died; every host restarts, resuming
    echo "[resume_loop] a peer process was lost (exit 76): restarting every host"
    continue
  fi
  if [[ "$(tpu_state)" == "READY" && "${RETRY_ON_ERROR:-0}" != "1" ]]; then
    echo "[resume_loop] the run failed on a healthy slice; see ~/madad-train.log" >&2
    exit 1
  fi
  sleep 30
done
echo "[resume_loop] gave up after $max_attempts attempts" >&2
exit 1
