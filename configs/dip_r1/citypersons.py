"""DIP-R1 on CityPersons — a RECONSTRUCTION (seed_spec.md B3; the paper's body was unavailable).

Task "crowd", reward "dip", trained on CityPersons train (2,975 Cityscapes images; pedestrians,
riders, sitting and other persons to find, ignore regions and groups ignored; TFDS
`citypersons`), one epoch at 16 prompts per update; evaluated on CityPersons val (500 images)
in the standard Reasonable setup (TFDS `citypersons/reasonable`: pedestrians ≥ 50 px tall and
≥ 65 % visible, the rest ignore regions) with the conventions of CityPersons'
`eval_MR_multisetup.py` (no clipping, IoU ≥ 0.5, detections under 40 px dropped, its miss-rate
sampling): `task_options.metric_protocol = "citypersons"`. The other settings are in
`configs/paper.py:dip_config`.

Launch (BASE = an HF directory of Qwen/Qwen2.5-VL-3B-Instruct; data built first with
`python -m perception_rl.data.build citypersons citypersons/reasonable ...`):

  8-chip TPU slice:
    TPU_NAME=... ZONE=... CONFIG=configs/dip_r1/citypersons.py:$BASE WORKDIR=gs://bucket/dip_cp \\
      bash experiments/tpu_pod.sh
  8-GPU box:
    python -m perception_rl.main --config=configs/dip_r1/citypersons.py:$BASE --workdir=/runs/cp
  Evaluate and print the table:
    python -m perception_rl.eval.protocol --config=configs/dip_r1/citypersons.py:$BASE \\
      --checkpoint=/runs/cp/checkpoints --workdir=/runs/cp

Expected: UNKNOWN (DIP-R1's tables were not retrievable; see configs/dip_r1/crowdhuman.py).
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:  # config files are loaded by path; `configs` lives at the root
    sys.path.insert(0, _ROOT)

from configs import paper

SPLITS = (("CityPersons val (Reasonable)", "citypersons/reasonable", "validation"),)


def get_config(arg: str | None = None):
    c = paper.dip_config(arg, train_data="citypersons", train_examples=2975, splits=SPLITS)
    c.task_options.metric_protocol = "citypersons"
    return c
