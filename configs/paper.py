"""What every paper config (configs/pr1/*.py, configs/dip_r1/*.py) shares.

A paper config is `common.get_config()` plus the paper's settings: the policy (an HF
directory given as the config argument, else the architecture preset with random weights, for
planning and shape checks), a built real dataset (`data.source="tfds"`), the GRPO numbers of
Perception-R1 (seed_spec.md A3), the evaluation protocol (datasets.md §2) and a `protocol`
section that `perception_rl.eval.protocol` reads:

  protocol.splits   ((label, tfds_config, split), ...): every split the paper reports;
  protocol.columns  ((split label, metric key, header), ...): the paper table's columns;
  protocol.paper    ((row name, (value ×100 or None, ...)), ...): the paper's rows, one
                    value per column (None where the paper gives none);
  protocol.lower_is_better  metric keys where lower is better (shown with ↓).

Batch: PR1 ran 7 training GPUs × 1 prompt × 8 rollouts with 2 accumulation steps (14 prompts
per update). An 8-chip slice or an 8-GPU box runs 16 prompts per update (8 × 2 micro-batches),
the nearest multiple of the device count; steps are one epoch of the training set at 16.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # config files are loaded by path; `configs` lives at the root
    sys.path.insert(0, _ROOT)

import ml_collections
from ml_collections import config_dict

from configs import common

PROMPTS_PER_STEP = 16  # 8 devices × 2 micro-batches; PR1: 7 GPUs × 2 accumulation steps = 14


def base_config(
    arg: str | None, *, preset: str, task: str, train_data: str, train_examples: int | None
):
    """The shared part of a paper config.

    Args:
      arg: the config argument (`--config=configs/pr1/grounding.py:/ckpt/Qwen2-VL-2B-Instruct`):
        the base checkpoint, an HF directory. Empty: the `preset` architecture, randomly
        initialised (plans, shape checks and smoke tests; nothing to reproduce a number with).
      preset: the architecture preset of the paper's policy (`perception_rl.models.preset`).
      task: the task registry name.
      train_data: the TFDS dataset (`name[/config]`) of the training split.
      train_examples: the paper's training-set size (first N examples); None: all.
    """
    c = common.get_config()
    c.mode = "train"
    c.task = task
    c.model = (arg or "").strip() or preset
    c.dtype = "bfloat16"
    c.mesh_shape = (1, -1, 1)  # FSDP over every chip: a 2-7B policy, its reference and Adam
    c.data.source = "tfds"
    c.data.tfds_config = train_data
    c.data.split = "train"
    c.data.first_examples = train_examples  # the paper's first N (None: the whole split)
    c.data.max_pixels = 1_000_000  # every PR1 training script
    c.data.buckets = (256, 512, 1024, 1280)  # merged visual tokens: ≤ 1 M px is ≤ 1,276

    c.rl.prompts_per_step = PROMPTS_PER_STEP
    c.rl.num_generations = 8
    c.rl.temperature = 1.0  # the paper (the released grounding script left TRL's 0.9)
    c.rl.top_k = 50
    c.rl.top_p = 0.9
    c.rl.beta = 0.04
    c.optim.learning_rate = 1e-6
    c.optim.grad_clip = 1.0
    c.train.num_micro_batches = 2  # PR1's gradient accumulation
    c.train.remat = True
    c.train.checkpoint_every = 100
    if train_examples:
        c.train.num_steps = -(-train_examples // PROMPTS_PER_STEP)  # one epoch

    c.eval.batch_size = 16
    c.eval.num_examples = config_dict.placeholder(int)  # every example of every split

    c.protocol = ml_collections.ConfigDict()
    c.protocol.splits = ()
    c.protocol.columns = ()
    c.protocol.paper = ()
    c.protocol.lower_is_better = ()
    return c


def dip_config(arg: str | None, *, train_data: str, train_examples: int | None, splits):
    """DIP-R1's reconstruction (seed_spec.md B3) on one crowd dataset.

    The paper's body was not available: its base model, prompt, reward constants, GRPO
    hyper-parameters, metrics and numbers are unknown. Chosen here: Qwen2.5-VL-3B-Instruct (as
    PR1's detection; 7B is `--config.model=...` with a 7B directory), PR1's GRPO settings with
    token-mean loss aggregation (the only rendering of DIP-R1's objective found, a third-party
    review: 1/Σ|o_i|), the "dip" reward's defaults (think/look/answer format, group-variance
    look reward, 0.4·P + 0.6·R accuracy at IoU 0.5), 2048 new tokens in training and 4096 in
    evaluation (a CrowdHuman image holds ~23 people), greedy decoding, and the crowd metrics
    AP50 / MR⁻² / JI / recall / precision / F1 at IoU 0.5 (constant scores: AP50 and MR⁻² are
    single-operating-point numbers).
    """
    c = base_config(
        arg,
        preset="qwen2p5_vl_3b",
        task="crowd",
        train_data=train_data,
        train_examples=train_examples,
    )
    c.rl.loss_agg = "token_mean"
    c.rl.max_new_tokens = 2048
    c.eval.max_new_tokens = 4096
    c.eval.split = splits[0][2]
    c.protocol.splits = splits
    metrics = (("AP50", "AP50"), ("MR-2", "MR⁻²↓"), ("JI", "JI"), ("F1", "F1"))
    c.protocol.columns = tuple(
        (label, key, f"{label} {header}") for label, _, _ in splits for key, header in metrics
    )
    c.protocol.lower_is_better = ("MR-2",)
    unknown = (None,) * len(c.protocol.columns)
    c.protocol.paper = (
        ("base model (paper: unknown)", unknown),
        ("DIP-R1 (paper: unknown)", unknown),
    )
    return c
