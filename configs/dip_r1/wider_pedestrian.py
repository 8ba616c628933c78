"""DIP-R1 on WiderPedestrian — a RECONSTRUCTION (seed_spec.md B3; the paper's body was
unavailable).

Task "crowd", reward "dip", trained on the WIDER Face & Person 2019 pedestrian track's train
split (driving and surveillance scenes; ignore file regions ignored; TFDS `wider_pedestrian`),
one epoch at 16 prompts per update (its size depends on the user's copy: set
`--config.train.num_steps`); evaluated on its validation split with CrowdHuman's conventions
(no official evaluation script was found for this track; the protocol is our choice). The
other settings are in `configs/paper.py:dip_config`.

Launch (BASE = an HF directory of Qwen/Qwen2.5-VL-3B-Instruct; data built first with
`python -m perception_rl.data.build wider_pedestrian ...`):

  8-chip TPU slice:
    TPU_NAME=... ZONE=... CONFIG=configs/dip_r1/wider_pedestrian.py:$BASE \\
      WORKDIR=gs://bucket/dip_wp bash experiments/tpu_pod.sh
  8-GPU box:
    python -m perception_rl.main --config=configs/dip_r1/wider_pedestrian.py:$BASE \\
      --workdir=/runs/wp
  Evaluate and print the table:
    python -m perception_rl.eval.protocol --config=configs/dip_r1/wider_pedestrian.py:$BASE \\
      --checkpoint=/runs/wp/checkpoints --workdir=/runs/wp

Expected: UNKNOWN (DIP-R1's tables were not retrievable; see configs/dip_r1/crowdhuman.py).
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:  # config files are loaded by path; `configs` lives at the root
    sys.path.insert(0, _ROOT)

from configs import paper

SPLITS = (("WiderPedestrian val", "wider_pedestrian", "validation"),)


def get_config(arg: str | None = None):
    c = paper.dip_config(arg, train_data="wider_pedestrian", train_examples=None, splits=SPLITS)
    c.train.num_steps = 1000  # unknown size of the user's copy; one epoch is size / 16
    c.task_options.metric_protocol = "crowdhuman"
    return c
