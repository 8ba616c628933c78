"""DIP-R1 on CrowdHuman — a RECONSTRUCTION (seed_spec.md B3; the paper's body was unavailable).

Task "crowd" (think / look / answer), reward "dip", trained on CrowdHuman train (15,000 images,
full-body boxes; `mask` tags and ignore flags are ignore regions; TFDS `crowdhuman`), one
epoch at 16 prompts per update; evaluated on CrowdHuman val (4,370 images) under CrowdHuman's
official conventions (CrowdDet's evaluation: boxes clipped to the image on both sides, Caltech
matching at IoU > 0.5, its miss-rate sampling, JI). Every setting the paper would fix and
does not (base model, prompt, reward constants, G, β, lr, lengths, steps) is listed in
`configs/paper.py:dip_config`, chosen as PR1's where one exists.

Launch (BASE = an HF directory of Qwen/Qwen2.5-VL-3B-Instruct; data built first with
`python -m perception_rl.data.build crowdhuman ...`):

  8-chip TPU slice:
    TPU_NAME=... ZONE=... CONFIG=configs/dip_r1/crowdhuman.py:$BASE WORKDIR=gs://bucket/dip_ch \\
      bash experiments/tpu_pod.sh
  8-GPU box:
    python -m perception_rl.main --config=configs/dip_r1/crowdhuman.py:$BASE --workdir=/runs/ch
  Evaluate and print the table:
    python -m perception_rl.eval.protocol --config=configs/dip_r1/crowdhuman.py:$BASE \\
      --checkpoint=/runs/ch/checkpoints --workdir=/runs/ch

Expected: UNKNOWN. DIP-R1's tables were not retrievable; its abstract reports consistent gains
over the base MLLM and over SFT, in and out of domain, without numbers we could read.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:  # config files are loaded by path; `configs` lives at the root
    sys.path.insert(0, _ROOT)

from configs import paper

SPLITS = (("CrowdHuman val", "crowdhuman", "validation"),)


def get_config(arg: str | None = None):
    c = paper.dip_config(arg, train_data="crowdhuman", train_examples=15_000, splits=SPLITS)
    c.task_options.metric_protocol = "crowdhuman"
    return c
