"""Perception-R1 detection: Qwen2.5-VL-3B-Instruct, GRPO on COCO 2017 train (PR1 Table 4).

Settings (seed_spec.md A3/A7, datasets.md §2): every COCO train2017 image (TFDS
`coco_detection`; PR1 used 110k), G = 8, β = 0.04, lr 1e-6, temperature 1.0, top-k 50 /
top-p 0.9, 2048 new tokens, ≤ 1 M pixels, one epoch; reward PR1's detection reward (0.25 ×
format + F1 + class accuracy + matched IoU, missing penalty on as in the paper's Table 6, clamp
[0, 3]); label names from the dataset (80 COCO classes). PR1's easy-to-hard curriculum was not
released and is not reproduced. Evaluation: greedy, 4096 new tokens, pycocotools COCOeval on
every val2017 image, every box scored 1.0 (PR1's protocol). Ranking boxes by their sequence
likelihood (`perception_rl.eval.box_scores`) is a different protocol:
`--config.task_options.score_detections=likelihood` (applied by `perception_rl.eval.protocol`).

Launch (BASE = an HF directory of Qwen/Qwen2.5-VL-3B-Instruct; data built first with
`python -m perception_rl.data.build coco_detection ...`):

  8-chip TPU slice:
    TPU_NAME=... ZONE=... CONFIG=configs/pr1/detection.py:$BASE WORKDIR=gs://bucket/pr1_det \\
      bash experiments/tpu_pod.sh
  8-GPU box:
    python -m perception_rl.main --config=configs/pr1/detection.py:$BASE --workdir=/runs/det
  Evaluate and print the paper's table:
    python -m perception_rl.eval.protocol --config=configs/pr1/detection.py:$BASE \\
      --checkpoint=/runs/det/checkpoints --workdir=/runs/det

Expected (paper, COCO val2017, Qwen2.5-VL-3B → Perception-R1): AP 16.1 → 31.9, AP50 23.7 →
46.7, AP75 16.7 → 33.4.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:  # config files are loaded by path; `configs` lives at the root
    sys.path.insert(0, _ROOT)

from configs import paper

SPLITS = (("COCO val2017", "coco_detection", "validation"),)


def get_config(arg: str | None = None):
    c = paper.base_config(
        arg,
        preset="qwen2p5_vl_3b",
        task="detection",
        train_data="coco_detection",
        train_examples=None,
    )
    c.train.num_steps = -(-118_287 // paper.PROMPTS_PER_STEP)  # one epoch of train2017 images
    c.rl.max_new_tokens = 2048
    c.eval.max_new_tokens = 4096
    c.eval.split = "validation"
    c.reward.missing_penalty = True
    c.task_options.score_detections = "constant"  # PR1: every box 1.0; or "likelihood"
    c.protocol.splits = SPLITS
    c.protocol.columns = tuple(("COCO val2017", key, key) for key in ("AP", "AP50", "AP75", "F1"))
    c.protocol.paper = (
        ("Qwen2.5-VL-3B (paper)", (16.1, 23.7, 16.7, None)),
        ("Perception-R1 (paper)", (31.9, 46.7, 33.4, None)),
    )
    return c
