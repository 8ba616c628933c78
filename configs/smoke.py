"""Smoke run: tiny random Qwen2.5-VL policy, GRPO on a handful of synthetic OCR examples.

    python -m perception_rl.main --config=configs/smoke.py --workdir=/tmp/prl_smoke

Expected result: finishes in well under a minute on a 2-core CPU (most of it compilation),
prints a progress bar for 4 steps and leaves in the workdir
  metrics.jsonl      4 lines; reward/total/mean around 0.02-0.1 (a random policy's edit
                     similarity to the text), finite loss, kl > 0 from step 2 on, skipped 0;
  tensorboard/       the same scalars;
  checkpoints/2, checkpoints/4   orbax checkpoints (a rerun resumes and does nothing);
  policy/            the final policy as an HF directory (config.json, safetensors, tokenizer).
OCR is used because a random policy's edit similarity varies within a group, so the
advantages, and with them the whole policy-gradient path, are non-zero from the first step;
a random policy never passes the counting format gate. Two processes, as on a pod:
`CONFIG=configs/smoke.py bash experiments/local_two_process.sh`.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # config files are loaded by path; `configs` lives at the root
    sys.path.insert(0, _ROOT)

from configs import common


def get_config():
    c = common.get_config()
    c.task = "ocr"
    c.model = "qwen2p5_vl_tiny"
    c.data.num_examples = 8
    c.data.synthetic = {"min_size": 112, "max_size": 112, "max_text_lines": 1}  # one shape
    c.data.buckets = (16,)
    c.rl.prompts_per_step = 4
    c.rl.num_generations = 4
    c.rl.max_new_tokens = 16
    c.optim.learning_rate = 1e-4
    c.train.num_steps = 4
    c.train.checkpoint_every = 2
    c.train.logprob_chunk = 16
    c.sft.batch_size = 4
    c.sft.num_steps = 4
    c.sft.checkpoint_every = 2
    c.eval.num_examples = 4
    c.eval.batch_size = 4
    c.eval.max_new_tokens = 16
    return c
