#!/usr/bin/env bash
# Two JAX processes on one machine (CPU, gloo collectives) that behave like a 2-host pod.
# The multi-host code path exactly as on a pod, without a pod.
#
#   CONFIG=configs/smoke.py WORKDIR=/tmp/prl_2proc bash experiments/local_two_process.sh
set -euo pipefail
: "${CONFIG:=configs/smoke.py}" "${WORKDIR:=/tmp/prl_2proc}"
PORT=${PORT:-$((20000 + RANDOM % 20000))}
export JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
pids=()
for i in 0 1; do
  JAX_COORDINATOR_ADDRESS=127.0.0.1:$PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=$i \
    python -m perception_rl.main --config="$CONFIG" --workdir="$WORKDIR" "$@" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
