#!/usr/bin/env bash
# Shared settings for the launch scripts. Every value can be overridden from the environment, e.g.
#   TPU_NAME=lamp-v5p ZONE=us-east5-a ACCELERATOR_TYPE=v5p-64 ./launch/create.sh
# Sourced by the other scripts; not meant to be run on its own.
set -euo pipefail

: "${PROJECT:=$(gcloud config get-value project 2>/dev/null)}"
: "${ZONE:=us-east5-a}"                      # a zone that offers the accelerator type (see the Cloud TPU docs)
: "${TPU_NAME:=lamp-jax}"                    # TPU VM (node) name
: "${QR_ID:=${TPU_NAME}-qr}"                 # queued resource id
: "${ACCELERATOR_TYPE:=v5p-64}"              # v5p-64 = 32 chips (4x4x2); v5litepod-256 = 256 chips (16x16)
: "${RUNTIME_VERSION:=}"                     # derived from the accelerator type below when empty
: "${PROVISIONING:=}"                        # '' (on demand / reserved), '--spot', or '--reserved'
: "${REPO_URL:=}"                            # git URL to clone on the workers; empty = copy this checkout
: "${REPO_REF:=main}"                        # branch / tag / commit to check out when REPO_URL is set
: "${REMOTE_DIR:=lamp_jax}"                  # checkout directory on every worker (relative to $HOME)
: "${VENV_DIR:=lamp_venv}"                   # Python 3.11 virtual environment on every worker
: "${JAX_VERSION:=0.10.2}"                   # must match setup.py's jax pin
: "${CONFIG:=configs/bridge.py}"             # config file, optionally with ':variant'
: "${WORKDIR:?set WORKDIR to a path every host sees, e.g. gs://my-bucket/lamp/bridge_stage2}"
: "${DATA_DIR:=}"                            # Bridge V2 RLDS root (local path on every worker or gs://...)
: "${EXTRA_FLAGS:=}"                         # more '--config.x=y' overrides, identical on every worker
: "${LOG_FILE:=lamp_train.log}"              # per-worker log file (relative to $HOME)

if [[ -z "${RUNTIME_VERSION}" ]]; then
  case "${ACCELERATOR_TYPE}" in
    v4-*) RUNTIME_VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) RUNTIME_VERSION=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME_VERSION=v2-alpha-tpuv6e ;;
    *) echo "unknown ACCELERATOR_TYPE=${ACCELERATOR_TYPE}; set RUNTIME_VERSION" >&2; exit 2 ;;
  esac
fi

GCLOUD_TPU=(gcloud compute tpus --project="${PROJECT}")

# Runs a shell command on every worker of the slice (in parallel, as gcloud does with --worker=all).
on_all_workers() {
  "${GCLOUD_TPU[@]}" tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=all --command="$1"
}

# Runs a shell command on one worker (default 0).
on_worker() {
  local worker="$1"; shift
  "${GCLOUD_TPU[@]}" tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker="${worker}" --command="$1"
}

# State of the queued resource: WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, SUSPENDING, SUSPENDED, FAILED, ...
queued_resource_state() {
  "${GCLOUD_TPU[@]}" queued-resources describe "${QR_ID}" --zone="${ZONE}" --format='value(state.state)' \
    2>/dev/null || echo "NOT_FOUND"
}

# The training command, identical on every worker (hosts check that their configs agree at start).
train_command() {
  local cmd="cd \$HOME/${REMOTE_DIR} && source \$HOME/${VENV_DIR}/bin/activate && "
  cmd+="python -m lamp_jax.train --config=${CONFIG} --workdir=${WORKDIR}"
  if [[ -n "${DATA_DIR}" ]]; then cmd+=" --config.data.data_dir=${DATA_DIR}"; fi
  if [[ -n "${EXTRA_FLAGS}" ]]; then cmd+=" ${EXTRA_FLAGS}"; fi
  echo "${cmd}"
}
