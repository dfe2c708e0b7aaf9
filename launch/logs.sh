#!/usr/bin/env bash
# Follows the training log. Process 0 (worker 0) writes the metrics and progress; other workers log only warnings
# and errors, so look at them when something fails:
#   ./launch/logs.sh          follow worker 0
#   ./launch/logs.sh 3        follow worker 3
#   ./launch/logs.sh all      last 20 lines of every worker
source "$(dirname "$0")/common.sh"

worker="${1:-0}"
if [[ "${worker}" == "all" ]]; then
  on_all_workers "echo \"== \$(hostname)\"; tail -n 20 \$HOME/${LOG_FILE}"
else
  on_worker "${worker}" "tail -n 200 -F \$HOME/${LOG_FILE}"
fi
