#!/usr/bin/env bash
# Queues a TPU VM slice (Cloud TPU queued resources) and waits until it is ACTIVE.
#   WORKDIR=gs://bucket/run ACCELERATOR_TYPE=v5p-64 ZONE=us-east5-a ./launch/create.sh
# With PROVISIONING=--spot the slice is cheaper but preemptible: use ./launch/resume.sh to bring it back.
source "$(dirname "$0")/common.sh"

state="$(queued_resource_state)"
if [[ "${state}" == "NOT_FOUND" ]]; then
  echo "queueing ${QR_ID}: ${ACCELERATOR_TYPE} (${RUNTIME_VERSION}) in ${ZONE} ${PROVISIONING}"
  # shellcheck disable=SC2086
  "${GCLOUD_TPU[@]}" queued-resources create "${QR_ID}" \
    --node-id="${TPU_NAME}" \
    --zone="${ZONE}" \
    --accelerator-type="${ACCELERATOR_TYPE}" \
    --runtime-version="${RUNTIME_VERSION}" \
    ${PROVISIONING}
else
  echo "queued resource ${QR_ID} already exists (state ${state})"
fi

# Poll until the slice is usable (queues can take minutes to hours for large slices).
while true; do
  state="$(queued_resource_state)"
  echo "$(date -u +%H:%M:%S) ${QR_ID}: ${state}"
  case "${state}" in
    ACTIVE) break ;;
    FAILED|SUSPENDED|NOT_FOUND) echo "queued resource is ${state}; see 'gcloud compute tpus queued-resources describe ${QR_ID} --zone=${ZONE}'" >&2; exit 1 ;;
  esac
  sleep 60
done
echo "slice ${TPU_NAME} is ACTIVE; next: ./launch/install.sh"
