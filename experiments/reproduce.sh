#!/usr/bin/env bash
# Reproduce one paper experiment end to end: build its datasets, train, evaluate every split,
# print the table next to the paper's numbers.
#
#   BASE=/ckpt/Qwen2-VL-2B-Instruct RAW=/data/raw WORKDIR=/runs/ground \
#     bash experiments/reproduce.sh grounding [--config.key=value ...]
#
# TASK: grounding | counting | ocr | detection (Perception-R1) or crowdhuman | citypersons |
#       wider_pedestrian (DIP-R1, a reconstruction: no paper numbers to compare with).
# BASE     the base policy, an HF directory (Qwen2-VL-2B-Instruct for PR1's grounding,
#          counting and OCR; Qwen2.5-VL-3B-Instruct for detection and DIP-R1).
# RAW      the downloaded raw files, one folder per dataset: $RAW/<dataset name> (the layout each
#          builder documents: python -m perception_rl.data.build --list).
# DATA_DIR where the built datasets go [~/tensorflow_datasets].
# WORKDIR  the run directory (checkpoints, metrics, protocol/table.md).
# DRY_RUN=1 prints the commands instead of running them.
# Extra arguments are config overrides passed to training and evaluation. On one 8-GPU box or
# one TPU VM host this runs as is; on a multi-host TPU slice launch the training step with
# experiments/tpu_pod.sh (its command is in each config's docstring).
set -euo pipefail
TASK=${1:?usage: reproduce.sh TASK [--config.key=value ...]}
shift
case "$TASK" in
  grounding)        CONFIG=configs/pr1/grounding.py
                    DATASETS="pr1_grounding refcoco/refcoco_unc refcoco/refcocoplus_unc refcoco/refcocog_umd" ;;
  counting)         CONFIG=configs/pr1/counting.py;  DATASETS="pixmo_count" ;;
  ocr)              CONFIG=configs/pr1/ocr.py;       DATASETS="fox_page_ocr/en fox_page_ocr/cn" ;;
  detection)        CONFIG=configs/pr1/detection.py; DATASETS="coco_detection" ;;
  crowdhuman)       CONFIG=configs/dip_r1/crowdhuman.py; DATASETS="crowdhuman" ;;
  citypersons)      CONFIG=configs/dip_r1/citypersons.py
                    DATASETS="citypersons citypersons/reasonable" ;;
  wider_pedestrian) CONFIG=configs/dip_r1/wider_pedestrian.py; DATASETS="wider_pedestrian" ;;
  *) echo "reproduce.sh: unknown task '$TASK'" >&2; exit 2 ;;
esac
: "${BASE:?set BASE to the HF directory of the base policy}" "${WORKDIR:?set WORKDIR}"
RAW=${RAW:-}
DATA_DIR=${DATA_DIR:-~/tensorflow_datasets}

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

if [[ -n "$RAW" ]]; then  # Builds are idempotent: a finished dataset is reused.
  for dataset in $DATASETS; do
    run python -m perception_rl.data.build "$dataset" \
      --manual_dir="$RAW/${dataset%%/*}" --data_dir="$DATA_DIR"
  done
else
  echo "reproduce.sh: RAW unset, using the datasets already built in $DATA_DIR" >&2
fi
run python -m perception_rl.main --config="$CONFIG:$BASE" --workdir="$WORKDIR" --mode=train \
  --config.data.data_dir="$DATA_DIR" "$@"
run python -m perception_rl.eval.protocol --config="$CONFIG:$BASE" --workdir="$WORKDIR" \
  --checkpoint="$WORKDIR/checkpoints" --config.data.data_dir="$DATA_DIR" "$@"
