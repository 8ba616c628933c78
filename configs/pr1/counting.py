"""Perception-R1 counting: Qwen2-VL-2B-Instruct, GRPO on 10k PixMo-Count images (PR1 Table 3).

Settings (seed_spec.md A3/A5, datasets.md §2): the first 10,000 training images of PixMo-Count
(TFDS `pixmo_count`; PR1's `pr1_counting_10k.json` is not public, and the paper's "1.9 M"
does not match the public 36,916 rows), G = 8, β = 0.04, lr 1e-6, temperature 1.0, top-k 50 /
top-p 0.9, 768 new tokens, ≤ 1 M pixels, one epoch; reward PR1's counting reward (count ratio ×
Hungarian-matched point distance, format-gated). Evaluation: greedy, 512 new tokens, exact
count match on PixMo val / test (540 images each).

Launch (BASE = an HF directory of Qwen/Qwen2-VL-2B-Instruct; data built first with
`python -m perception_rl.data.build pixmo_count ...`):

  8-chip TPU slice:
    TPU_NAME=... ZONE=... CONFIG=configs/pr1/counting.py:$BASE WORKDIR=gs://bucket/pr1_count \\
      bash experiments/tpu_pod.sh
  8-GPU box:
    python -m perception_rl.main --config=configs/pr1/counting.py:$BASE --workdir=/runs/count
  Evaluate every split and print the paper's table:
    python -m perception_rl.eval.protocol --config=configs/pr1/counting.py:$BASE \\
      --checkpoint=/runs/count/checkpoints --workdir=/runs/count

Expected (paper, exact-match accuracy, Qwen2-VL-2B → Perception-R1): Pixmo val 60.2 → 78.1,
Pixmo test 50.5 → 75.6.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:  # config files are loaded by path; `configs` lives at the root
    sys.path.insert(0, _ROOT)

from configs import paper

SPLITS = (("Pixmo val", "pixmo_count", "validation"), ("Pixmo test", "pixmo_count", "test"))


def get_config(arg: str | None = None):
    c = paper.base_config(
        arg, preset="qwen2_vl_2b", task="counting", train_data="pixmo_count", train_examples=10_000
    )
    c.rl.max_new_tokens = 768
    c.eval.max_new_tokens = 512
    c.eval.split = "validation"
    c.protocol.splits = SPLITS
    c.protocol.columns = tuple((label, "accuracy", label) for label, _, _ in SPLITS)
    c.protocol.paper = (
        ("Qwen2-VL-2B (paper)", (60.2, 50.5)),
        ("Perception-R1 (paper)", (78.1, 75.6)),
    )
    return c
