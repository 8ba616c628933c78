"""Shared defaults of every run config: Perception-R1's GRPO recipe (DESIGN.md §3, seed_spec A2/A3).

Not a run config itself; configs start from `get_config()` and override what they change:

    from configs import common
    def get_config():
        config = common.get_config()
        config.task = "grounding"
        ...

The schema is shared by the three modes of `perception_rl.main`: `train` (GRPO: `rl`, `optim`,
`train`), `sft` (`sft`, `train.logprob_chunk/remat`) and `eval` (`checkpoint`, `eval`, read by
`perception_rl.eval.runner`). Every field can be overridden on the command line,
`--config.rl.beta=0.0`; a field that is None by default takes a value of its declared type.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """Perception-R1 defaults on the tiny random policy and synthetic counting data."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = "counting"  # perception_rl.tasks registry name
    c.task_options = ml_collections.ConfigDict()  # overrides of the task's fields
    c.model = "qwen2p5_vl_tiny"  # an HF checkpoint directory, or a preset name
    c.tokenizer = config_dict.placeholder(str)  # default: the model dir, or the tiny one
    c.dtype = "float32"  # parameter dtype ("bfloat16" on accelerators)
    c.checkpoint = config_dict.placeholder(str)  # eval mode: HF dir or <workdir>/checkpoints
    c.mesh_shape = (-1, 1, 1)  # (data, fsdp, tensor); one -1 takes the rest
    c.param_rules = ()  # ((regex, (axis, ...)), ...); () = DEFAULT_RULES

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # "synthetic" (generated) or "tfds" (built dataset)
    c.data.split = "train"
    c.data.num_examples = 1000  # synthetic training examples (first N, PR1 A2)
    c.data.seed = 0  # shuffle seed (and synthetic generator seed)
    c.data.synthetic = ml_collections.ConfigDict()  # SyntheticConfig field overrides
    c.data.tfds_config = config_dict.placeholder(str)
    c.data.first_examples = config_dict.placeholder(int)  # tfds: first N of the split (None: all)
    c.data.source_dir = config_dict.placeholder(str)  # eval runner's data.source="jsonl"
    c.data.data_dir = "~/tensorflow_datasets"
    c.data.min_pixels = config_dict.placeholder(int)
    c.data.max_pixels = 1_000_000  # every PR1 training script
    c.data.buckets = (16, 64, 256, 1024, 4096)  # merged visual tokens per image

    c.reward = ml_collections.ConfigDict()  # overrides of the task reward's config fields

    c.rl = ml_collections.ConfigDict()
    c.rl.prompts_per_step = 16  # global prompts per step (PR1: 14 = 7 GPUs x 2)
    c.rl.num_generations = 8  # G
    c.rl.max_new_tokens = 768  # PR1 grounding/counting; detection 2048
    c.rl.temperature = 1.0
    c.rl.top_k = 50
    c.rl.top_p = 0.9
    c.rl.beta = 0.04  # k3 KL to the frozen initial policy
    c.rl.kl_estimator = "k3"
    c.rl.epsilon_low = 0.2
    c.rl.epsilon_high = config_dict.placeholder(float)  # DAPO clip-higher, e.g. 0.28
    c.rl.loss_agg = "seq_mean_token_mean"  # or token_mean (DAPO), seq_mean_token_sum_norm
    c.rl.max_tokens_norm = config_dict.placeholder(float)  # Dr. GRPO divisor; None = T
    c.rl.advantage_estimator = "grpo"  # (r - mean) / (std_ddof1 + eps); or "drgrpo"
    c.rl.advantage_eps = 1e-4
    c.rl.advantage_components = ()  # reward components normalised separately
    c.rl.num_iterations = 1  # mu: updates per rollout batch
    c.rl.dynamic_sampling = False  # drop zero-variance groups, draw fresh prompts
    c.rl.max_resample = 0  # extra draws per step with dynamic sampling
    c.rl.logprob_temperature = 1.0  # PR1 scores training log-probs at temperature 1
    c.rl.sampler_chunk = config_dict.placeholder(int)  # prompts per sampler call; None = all

    c.optim = ml_collections.ConfigDict()  # HF Trainer's AdamW as PR1 ran it
    c.optim.learning_rate = 1e-6
    c.optim.warmup_steps = 0
    c.optim.end_learning_rate = 0.0  # linear decay to 0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0
    c.optim.moment_dtype = config_dict.placeholder(str)  # Adam moments; None = param dtype

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 500
    c.train.num_micro_batches = 1  # gradient accumulation inside the step
    c.train.remat = False  # rematerialise decoder and vision layers (= remat_policy per_layer)
    c.train.remat_policy = config_dict.placeholder(str)  # none | per_layer | save_dots
    c.train.attention_chunk = config_dict.placeholder(int)  # attention queries per chunk
    c.train.logprob_chunk = 256  # sequence positions per LM-head chunk
    c.train.checkpoint_every = 100  # PR1's save interval
    c.train.keep_checkpoints = 2
    # After SIGTERM the run finishes its step and checkpoints; past this many seconds it exits
    # at once (status 75) from the last checkpoint. A second SIGTERM exits at once too.
    c.train.stop_grace_s = 120.0

    c.sft = ml_collections.ConfigDict()
    c.sft.batch_size = 16
    c.sft.num_steps = 200
    c.sft.num_micro_batches = 1
    c.sft.checkpoint_every = 100
    c.sft.optim = ml_collections.ConfigDict(c.optim.to_dict())
    c.sft.optim.learning_rate = 1e-5

    c.plan = ml_collections.ConfigDict()  # perception_rl.plan: the step's padded shapes
    c.plan.image_pixels = config_dict.placeholder(int)  # default: data.max_pixels (or synthetic)
    c.plan.text_tokens = 64  # prompt tokens beside the image (system prompt + task template)
    c.plan.answer_tokens = 128  # SFT answer tokens

    c.eval = ml_collections.ConfigDict()  # perception_rl.eval.runner
    c.eval.split = "validation"
    c.eval.num_examples = config_dict.placeholder(int)
    c.eval.batch_size = 8
    c.eval.max_new_tokens = 256
    c.eval.repetition_penalty = 1.0  # HF semantics; PR1's grounding eval: 1.05
    c.eval.name = config_dict.placeholder(str)
    c.eval.step = config_dict.placeholder(int)
    c.eval.predictions_file = config_dict.placeholder(str)  # re-score it; no model is loaded
    c.eval.gallery_size = 4
    return c
