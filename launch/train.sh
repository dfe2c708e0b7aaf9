#!/usr/bin/env bash
# Starts training on every worker, detached (nohup), logging to ~/$LOG_FILE on each worker.
# Every worker runs the SAME command: jax.distributed initialises from the TPU metadata, each host reads its own
# share of the data files, checkpoints go to $WORKDIR (must be shared: gs://...), only process 0 logs metrics.
# Rerunning this script after an interruption resumes from the latest checkpoint in $WORKDIR.
#   WORKDIR=gs://bucket/lamp/bridge DATA_DIR=gs://bucket/bridge_dataset CONFIG=configs/bridge.py:stage2 ./launch/train.sh
source "$(dirname "$0")/common.sh"

cmd="$(train_command)"
echo "on every worker: ${cmd}"
on_all_workers "set -e
if [[ -f \$HOME/lamp_train.pid ]] && kill -0 \$(cat \$HOME/lamp_train.pid) 2>/dev/null; then
  echo \"worker \$(hostname): training already running (pid \$(cat \$HOME/lamp_train.pid))\"; exit 0
fi
nohup bash -c '${cmd}' >> \$HOME/${LOG_FILE} 2>&1 &
echo \$! > \$HOME/lamp_train.pid
echo \"worker \$(hostname): started pid \$(cat \$HOME/lamp_train.pid)\""
echo "started; follow with ./launch/logs.sh"
