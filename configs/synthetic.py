"""The main job: SFT warm start, then GRPO, on synthetic perception data, on a laptop CPU.

    python -m perception_rl.main --config=configs/synthetic.py --workdir=/tmp/prl
    python -m perception_rl.main --config=configs/synthetic.py:grounding --workdir=/tmp/prl_g
    python -m perception_rl.main --config=configs/synthetic.py --config.task=detection ...

Runs `perception_rl.recipe.run` (mode "recipe"): SFT of a randomly initialised tiny
Qwen2.5-VL on the task's ideal answers, greedy evaluation of the SFT policy on the held-out
validation split, GRPO from the SFT policy (which is also the KL reference), evaluation of the
GRPO policy, and a report (reward curves, gallery, before/after table) in `<workdir>/report/`.
The config argument is the task (`counting` by default; `task=grounding` also accepted).

Sizes are chosen for a 2-core CPU: 112 px images (16 merged visual tokens), at most three
instances to count or detect (large ones), 800 SFT steps (the tiny policy only starts to use
the image after ~600; stopping SFT there leaves GRPO answers it samples but does not yet give
greedily), 200 GRPO steps of 8 prompts x 8 completions, and 1000 held-out examples
per evaluation (a standard error of ~1.5 points on an accuracy near 60%). Grounding uses the
same model with rope_theta 2 (the default's M-RoPE cannot tell the 16 tokens' positions apart),
single-attribute expressions, larger objects and 400 GRPO steps. The README section
"The main job" has the measured numbers.
"""

import os
import sys

import ml_collections
from ml_collections import config_dict

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # config files are loaded by path; `configs` lives at the root
    sys.path.insert(0, _ROOT)

from configs import common

TASKS = ("counting", "grounding", "detection")


def parse_task(arg: str | None) -> str:
    """The task of a config argument: "", "grounding" or "task=grounding"."""
    task = (arg or "counting").strip()
    task = task.split("=", 1)[1] if task.startswith("task=") else task
    if task not in TASKS:
        raise ValueError(f"configs/synthetic.py: task {task!r}; expected one of {TASKS}.")
    return task


def get_config(arg: str | None = None):
    """The main job's config for the task named by `arg` (counting by default)."""
    c = common.get_config()
    c.mode = "recipe"  # perception_rl.main's default mode for this config
    c.task = parse_task(arg)
    c.model = "qwen2p5_vl_tiny_synthetic"
    c.data.num_examples = 4096
    # Few, large objects: a policy this small, trained for minutes, must resolve them from the
    # 16 merged visual tokens of a 112 px image.
    c.data.synthetic = {
        "min_size": 112,
        "max_size": 112,
        "max_count": 3,
        "max_distractors": 1,
        "max_objects": 3,
        "object_scale": (0.2, 0.3),
    }
    c.data.buckets = (16,)  # one image shape: one compiled program per phase

    c.sft.batch_size = 16
    c.sft.num_steps = 800
    c.sft.checkpoint_every = 400
    c.sft.optim.learning_rate = 2e-3
    c.sft.optim.warmup_steps = 10

    if c.task == "grounding":
        # The tiny model with rope_theta 2: at 1e6 its M-RoPE height/width frequencies are
        # too low to tell the 4x4 merged tokens apart, and SFT never learns where the referent
        # is (Acc@0.5 ~5-11%, predicted centres uncorrelated with the target's); at 2 it does.
        c.model = "qwen2p5_vl_tiny_synthetic_grounding"
        # Expressions by colour and shape only (no "left of the ..." relations), objects
        # 0.3-0.45 of the side: one referent among at most one distractor.
        c.data.synthetic.relation_prob = 0.0
        c.data.synthetic.object_scale = (0.3, 0.45)
        # PR1's IoU^2 + format; declared so `--config.reward.iou_power=1` can set it.
        c.reward.iou_power = 2.0

    if c.task == "counting":
        # Unset: Perception-R1's reward. "exact_count" selects R1-V's binary variant
        # (`--config.reward.kind=exact_count`); declared so the CLI can set it.
        c.reward.kind = config_dict.placeholder(str)

    c.rl.prompts_per_step = 8
    c.rl.num_generations = 8
    c.rl.max_new_tokens = 112  # a three-object detection answer is ~100 tokens
    c.rl.beta = 0.04
    c.optim.learning_rate = 1e-4
    c.train.num_steps = 200
    c.train.checkpoint_every = 50
    if c.task == "grounding":
        # After 800 SFT steps the policy localises roughly (Acc@0.5 ~56%) and GRPO's IoU reward
        # tightens its boxes over 400 steps (+4 to +5 points); after 1200 SFT steps (~69%) GRPO
        # sharpened its samples but moved greedy Acc@0.5 by -0.2 to +3.8 (README).
        c.train.num_steps = 400
    c.train.logprob_chunk = 64

    c.eval.num_examples = 1000
    c.eval.batch_size = 40
    c.eval.max_new_tokens = 112
    c.eval.gallery_size = 4

    # Report diagnostics (perception_rl.recipe): the paired bootstrap interval of GRPO − SFT
    # over the held-out examples, and pass@k at the training temperature of both policies on
    # the first pass_k_examples of them (max(pass_k) samples each, pass_k_prompts prompts per
    # batch; 0 examples turns it off). 100 x 8 samples cost about one greedy evaluation.
    c.diagnostics = ml_collections.ConfigDict()
    c.diagnostics.pass_k = (1, 4, 8)
    c.diagnostics.pass_k_examples = 100
    c.diagnostics.pass_k_prompts = 5
    c.diagnostics.bootstrap_resamples = 2000
    c.diagnostics.confidence = 0.95
    return c
