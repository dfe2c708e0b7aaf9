#!/usr/bin/env bash
# Stops the training process on every worker (by the pid train.sh recorded). Checkpoints already written stay.
source "$(dirname "$0")/common.sh"

on_all_workers "if [[ -f \$HOME/lamp_train.pid ]]; then
  pid=\$(cat \$HOME/lamp_train.pid); kill \$pid 2>/dev/null && echo \"\$(hostname): stopped \$pid\" || true
  rm -f \$HOME/lamp_train.pid
fi"
