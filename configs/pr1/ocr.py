"""Perception-R1 page OCR: Qwen2-VL-2B-Instruct, GRPO on 5k page images (PR1 Table 2).

Settings (seed_spec.md A3/A6, datasets.md §2): G = 8, β = 0.04, lr 1e-6, temperature 1.0,
top-k 50 / top-p 0.9, ≤ 1 M pixels, one epoch of 5,000 pages, reward 1 − normalised edit
distance. PR1's 50k-page OCR training set was never released (nor its OCR prompt, reward
details and length limit): pass your own page-OCR dataset with
`--config.data.tfds_config=NAME` (the default name below exists nowhere, so a run without it
fails at once instead of training on the test pages). 2048 new tokens (a Fox page runs to
~1,500). Evaluation: greedy, 2048 new tokens, Fox page OCR English (112 pages) and Chinese
(100 pages, zero-shot in PR1): normalised edit distance, token-set F1 / precision / recall,
BLEU, METEOR (TFDS `fox_page_ocr/en`, `fox_page_ocr/cn`).

Launch (BASE = an HF directory of Qwen/Qwen2-VL-2B-Instruct, or the released
Kangheng/PR1-Qwen2-VL-2B-OCR to evaluate it; data built first with
`python -m perception_rl.data.build fox_page_ocr/en fox_page_ocr/cn ...`):

  8-chip TPU slice:
    TPU_NAME=... ZONE=... CONFIG=configs/pr1/ocr.py:$BASE WORKDIR=gs://bucket/pr1_ocr \\
      bash experiments/tpu_pod.sh --config.data.tfds_config=MY_PAGE_OCR
  8-GPU box:
    python -m perception_rl.main --config=configs/pr1/ocr.py:$BASE --workdir=/runs/ocr \\
      --config.data.tfds_config=MY_PAGE_OCR
  Evaluate every split and print the paper's table:
    python -m perception_rl.eval.protocol --config=configs/pr1/ocr.py:$BASE \\
      --checkpoint=/runs/ocr/checkpoints --workdir=/runs/ocr

Expected (paper, NeurIPS version, Qwen2-VL-2B → Perception-R1, en / cn): edit distance
8.0/10.0 → 2.8/8.4 (lower is better); F1 94.4/93.0 → 98.2/96.9; BLEU 90.9/78.0 → 96.6/74.7;
METEOR 94.1/87.2 → 98.1/93.8 (arXiv v1: edit distance 3.5/9.0). Precision and recall are not
in the paper.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:  # config files are loaded by path; `configs` lives at the root
    sys.path.insert(0, _ROOT)

from configs import paper

SPLITS = (("Fox en", "fox_page_ocr/en", "test"), ("Fox cn", "fox_page_ocr/cn", "test"))
METRICS = (("edit_distance", "ED↓"), ("f1", "F1"), ("bleu", "BLEU"), ("meteor", "METEOR"))


def get_config(arg: str | None = None):
    c = paper.base_config(
        arg,
        preset="qwen2_vl_2b",
        task="ocr",
        train_data="UNRELEASED_PR1_PAGE_OCR_SET",
        train_examples=5000,
    )
    c.rl.max_new_tokens = 2048
    c.eval.max_new_tokens = 2048
    c.eval.split = "test"
    c.protocol.splits = SPLITS
    c.protocol.columns = tuple(
        (label, key, f"{label} {header}") for label, _, _ in SPLITS for key, header in METRICS
    )
    c.protocol.lower_is_better = ("edit_distance",)
    c.protocol.paper = (
        ("Qwen2-VL-2B (paper)", (8.0, 94.4, 90.9, 94.1, 10.0, 93.0, 78.0, 87.2)),
        ("Perception-R1 (paper)", (2.8, 98.2, 96.6, 98.1, 8.4, 96.9, 74.7, 93.8)),
    )
    return c
