#!/usr/bin/env bash
# Brings a preempted run back. A spot / preemptible slice that was reclaimed ends in state SUSPENDED or FAILED;
# its VMs (and their local disks) are gone, but the checkpoints in $WORKDIR (gs://) are not. This script
#   1. deletes the dead queued resource, 2. queues a new one and waits for it (create.sh),
#   3. reinstalls (install.sh), 4. reruns the same training command (train.sh), which resumes from the
#      latest complete checkpoint (orbax only exposes fully written steps).
# If the slice is still ACTIVE (the process died, not the VMs) it only restarts training.
#   ./launch/resume.sh            once
#   WATCH=1 ./launch/resume.sh    keep watching every 5 minutes and recover whenever needed
source "$(dirname "$0")/common.sh"
here="$(dirname "$0")"

recover() {
  local state
  state="$(queued_resource_state)"
  echo "$(date -u +%H:%M:%S) ${QR_ID}: ${state}"
  case "${state}" in
    ACTIVE)
      "${here}/train.sh" ;;  # no-op on workers where training is still running
    SUSPENDED|FAILED|SUSPENDING)
      "${GCLOUD_TPU[@]}" queued-resources delete "${QR_ID}" --zone="${ZONE}" --force --quiet
      "${here}/create.sh" && "${here}/install.sh" && "${here}/train.sh" ;;
    NOT_FOUND)
      "${here}/create.sh" && "${here}/install.sh" && "${here}/train.sh" ;;
    *)
      echo "waiting (state ${state})" ;;
  esac
}

if [[ -n "${WATCH:-}" ]]; then
  while true; do recover || true; sleep 300; done
else
  recover
fi
