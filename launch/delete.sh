#!/usr/bin/env bash
# Deletes the slice and its queued resource (stops billing). Checkpoints in $WORKDIR are kept.
source "$(dirname "$0")/common.sh"
"${GCLOUD_TPU[@]}" queued-resources delete "${QR_ID}" --zone="${ZONE}" --force --quiet
