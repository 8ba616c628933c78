#!/usr/bin/env bash
# Launch one perception_rl run on every host of a Cloud TPU pod slice.
#
#   TPU_NAME=my-v5e-32 ZONE=us-west4-a CONFIG=configs/smoke.py WORKDIR=gs://bucket/run1 \
#     bash experiments/tpu_pod.sh [--config.key=value ...]
#
# Every worker runs the same command; `perception_rl.main` calls jax.distributed.initialize(),
# which discovers the pod's coordinator on TPU VMs, and grain shards the data by
# process_index::process_count. Checkpoints (orbax) and metrics go to WORKDIR, which must be
# shared by all hosts (a gs:// path). Before the run, each worker installs the package from its
# checkout (pip, `jax[tpu]`); the run itself downloads nothing: weights and data must already be
# on the hosts or in GCS.
#
# First, on this machine, `perception_rl.plan` compiles the run's programs for TOPOLOGY (the
# slice's type and shape, e.g. v5e:4x8; needs `pip install '.[tpu]'`) and the launch stops
# there if they do not fit. SKIP_PLAN=1 skips it; PLAN_ARGS holds flags for the plan only
# (e.g. PLAN_ARGS="--extrapolate_depth --cache=/tmp/plan"); the extra arguments go to both.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
REPO_DIR=${REPO_DIR:-perception_rl}
EXTRA_ARGS=$(printf ' %q' "$@")

if [ "${SKIP_PLAN:-0}" != 1 ]; then
  : "${TOPOLOGY:?set TOPOLOGY (e.g. v5e:4x8) or SKIP_PLAN=1}"
  python -m perception_rl.plan --config="$CONFIG" --topology="$TOPOLOGY" ${PLAN_ARGS:-} "$@" \
    || { echo "tpu_pod.sh: the plan says this run does not fit $TOPOLOGY; not launching." >&2; exit 1; }
fi

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  cd $REPO_DIR
  pip install -q -e . 'jax[tpu]'
  python -m perception_rl.main --config=$CONFIG --workdir=$WORKDIR $EXTRA_ARGS
"
