"""Perception-R1 grounding: Qwen2-VL-2B-Instruct, GRPO on 5k RefCOCO expressions (PR1 Table 1).

Settings (seed_spec.md A3/A4, datasets.md §2): the first 5,000 rows of PR1's training set
(`Kangheng/refcoco_320k`, TFDS `pr1_grounding`), G = 8, β = 0.04, lr 1e-6, temperature 1.0,
top-k 50 / top-p 0.9, 768 new tokens, ≤ 1 M pixels, one epoch, reward IoU² + strict format
(`--config.reward.format_check=pr1_lenient` reproduces the released regex). Evaluation: greedy,
repetition penalty 1.05, 512 new tokens, every expression of RefCOCO val/testA/testB,
RefCOCO+ val/testA/testB and RefCOCOg val/test (TFDS `refcoco`).

Launch (BASE = an HF directory of Qwen/Qwen2-VL-2B-Instruct; data built first with
`python -m perception_rl.data.build pr1_grounding refcoco/refcoco_unc ...`):

  8-chip TPU slice:
    TPU_NAME=... ZONE=... CONFIG=configs/pr1/grounding.py:$BASE WORKDIR=gs://bucket/pr1_ground \\
      bash experiments/tpu_pod.sh
  8-GPU box:
    python -m perception_rl.main --config=configs/pr1/grounding.py:$BASE --workdir=/runs/ground
  Evaluate every split and print the paper's table:
    python -m perception_rl.eval.protocol --config=configs/pr1/grounding.py:$BASE \\
      --checkpoint=/runs/ground/checkpoints --workdir=/runs/ground

Expected (paper, Acc@0.5, Qwen2-VL-2B → Perception-R1): RefCOCO val/testA/testB
86.8/89.6/82.0 → 89.1/91.4/84.5; RefCOCO+ 77.1/82.5/70.1 → 81.7/86.8/74.3; RefCOCOg val/test
83.3/83.1 → 85.7/85.4; RefCOCO val Acc@0.75 77.2 → 79.5, Acc@0.95 33.0 → 35.0.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:  # config files are loaded by path; `configs` lives at the root
    sys.path.insert(0, _ROOT)

from configs import paper

SPLITS = (
    ("RefCOCO val", "refcoco/refcoco_unc", "val"),
    ("RefCOCO testA", "refcoco/refcoco_unc", "testA"),
    ("RefCOCO testB", "refcoco/refcoco_unc", "testB"),
    ("RefCOCO+ val", "refcoco/refcocoplus_unc", "val"),
    ("RefCOCO+ testA", "refcoco/refcocoplus_unc", "testA"),
    ("RefCOCO+ testB", "refcoco/refcocoplus_unc", "testB"),
    ("RefCOCOg val", "refcoco/refcocog_umd", "val"),
    ("RefCOCOg test", "refcoco/refcocog_umd", "test"),
)


def get_config(arg: str | None = None):
    c = paper.base_config(
        arg, preset="qwen2_vl_2b", task="grounding", train_data="pr1_grounding", train_examples=5000
    )
    c.rl.max_new_tokens = 768
    c.eval.max_new_tokens = 512
    c.eval.repetition_penalty = 1.05
    c.eval.split = "val"
    c.protocol.splits = SPLITS
    c.protocol.columns = tuple((label, "acc@0.5", f"{label} @0.5") for label, _, _ in SPLITS) + (
        ("RefCOCO val", "acc@0.75", "RefCOCO val @0.75"),
        ("RefCOCO val", "acc@0.95", "RefCOCO val @0.95"),
    )
    c.protocol.paper = (
        ("Qwen2-VL-2B (paper)", (86.8, 89.6, 82.0, 77.1, 82.5, 70.1, 83.3, 83.1, 77.2, 33.0)),
        ("Perception-R1 (paper)", (89.1, 91.4, 84.5, 81.7, 86.8, 74.3, 85.7, 85.4, 79.5, 35.0)),
    )
    return c
