"""One full GRPO step (rollouts + rewards + update): ours vs TRL's GRPOTrainer, same weights.

  python benchmarks/grpo_step.py [--prompts 1] [--steps 3] [--image-size 112] [--skip-trl]

Both sides train the bench checkpoint (`bench_models.build_bench_checkpoint`: Qwen2.5-VL, 8 text
layers of width 512, 4 vision blocks, tiny tokenizer) on the same prompts (`bench_prompts`: a
random 112×112 image and a counting request each) with the same settings: G = 8 completions per
prompt of exactly 64 tokens (EOS disabled on both sides so the counts match), temperature 1.0,
top-k 50, top-p 0.9; the counting reward on the same targets; GRPO advantages; a frozen
reference model with β = 0.04 (k3); one update per batch; Perception-R1's loss (mean over
sequences of token means); AdamW lr 1e-6 with grad-norm clip 1.0; float32, no gradient
checkpointing. Each side runs one warm-up step (our compilation, TRL's first-call overheads),
then `--steps` timed steps; completions/s = completions per step / mean step time.

Also reported: our update's achieved FLOP/s — XLA's cost analysis of the compiled
reference-log-prob and update programs divided by their measured time — as a fraction of the
machine's fp32 matmul peak, measured here with a jitted 2048×2048 `jnp.dot`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)  # `configs` and `benchmarks` live at the repository root

from bench_models import bench_prompts, build_bench_checkpoint

from configs import common
from perception_rl import policy as policy_lib
from perception_rl import rewards
from perception_rl.models.qwen_vl.vision import vision_layout
from perception_rl.rl import batch as batch_lib
from perception_rl.rl import loop, runtime, trainer
from perception_rl.rl.rollouts import RolloutCollector, RolloutConfig

GROUP, NEW_TOKENS = 8, 64
LABELS = ["red circle", "blue square", "green triangle", "yellow star"]


def conversations(num_prompts: int, image_size: int) -> tuple[list, list]:
    """`bench_prompts`' texts and images (the very same at its 112 px), at any image size."""
    from PIL import Image

    rng = np.random.default_rng(0)
    texts, images = [], []
    for i in range(num_prompts):
        texts.append(f"Output all the bounding boxes of the {LABELS[i % len(LABELS)]}")
        pixels = rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)
        images.append(Image.fromarray(pixels))
    return texts, images


def user_turn(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def targets(num_prompts: int) -> list[dict]:
    """Counting targets (0-1000 points) for the bench prompts, fixed by a seed."""
    rng = np.random.default_rng(1)
    return [
        {"points": rng.uniform(0, 1000, (rng.integers(1, 5), 2)).tolist()}
        for _ in range(num_prompts)
    ]


def records_from_batch(batch: dict, vision, goals: list[dict]) -> list[dict]:
    """The processor batch of `bench_prompts` as per-prompt trainer records (one image each)."""
    records, offset = [], 0
    for row, grid in enumerate(batch["image_grid_thw"]):
        real = batch["attention_mask"][row] > 0
        patches = int(np.prod(grid))
        layout = vision_layout(grid[None], vision).as_dict()
        prompt = {
            "input_ids": batch["input_ids"][row][real].astype(np.int32),
            "position_ids": batch["position_ids"][:, row][:, real].astype(np.int32),
            "pixel_values": batch["pixel_values"][offset : offset + patches],
            "image_grid_thw": grid[None].astype(np.int32),
            "patch_rows": layout["rows"],
            "patch_cols": layout["cols"],
            "frame_segments": layout["frame_segments"],
            "window_segments": layout["window_segments"],
        }
        records.append({"prompt": prompt, "target": goals[row]})
        offset += patches
    return records


def bench_config(path: str, num_prompts: int):
    config = common.get_config()
    config.model = path
    config.mesh_shape = (1, 1, 1)
    config.rl.prompts_per_step = num_prompts
    config.rl.num_generations = GROUP
    config.rl.max_new_tokens = NEW_TOKENS
    config.train.logprob_chunk = 64
    return config


def _flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis.get("flops", 0.0))


def time_ours(path: str, num_prompts: int, steps: int, image_size: int) -> dict:
    """Seconds per full step of our trainer, and the FLOP/s of its update programs."""
    config = bench_config(path, num_prompts)
    mesh = runtime.build_mesh(config)
    policy = policy_lib.load_policy(config, mesh)
    if image_size == 112:
        batch = bench_prompts(path, num_prompts)
    else:
        texts, images = conversations(num_prompts, image_size)
        batch = policy.processor([user_turn(t) for t in texts], [[image] for image in images])
    records = records_from_batch(batch, policy.model_config.vision, targets(num_prompts))
    settings = RolloutConfig(
        group_size=GROUP,
        max_new_tokens=NEW_TOKENS,
        temperature=1.0,
        top_k=50,
        top_p=0.9,
        eos_ids=(),
        pad_id=policy.pad_id,
        reward="counting",
    )
    collector = RolloutCollector(policy, iter(lambda: records, None), settings)
    step_fn = loop.make_train_step(
        config, policy, mesh, trainer.step_config(config), config.optim, steps + 1
    )
    state, rng = step_fn.init_state(policy.params), jax.random.key(0)
    times = []
    for step in range(1, steps + 2):
        start = time.perf_counter()
        state, metrics = trainer.grpo_step(
            state, step, rng, collector, step_fn, policy.params, config
        )
        times.append(time.perf_counter() - start)
        assert metrics["completion/length_min"] == NEW_TOKENS
    # The train step proper: reference log-probs + one update, timed alone on a fixed batch.
    rollouts = collector.collect(state.params, jax.random.key(1), num_prompts)
    placed = batch_lib.global_arrays(rollouts.batch, step_fn.batch_sharding)
    placed["completions"]["ref_logps"] = step_fn.logprobs(policy.params, placed)
    flops = _flops(step_fn.logprobs.lower(policy.params, placed).compile()) + _flops(
        step_fn.update.lower(state, placed).compile()
    )
    update_times = []
    for _ in range(steps):
        start = time.perf_counter()
        ref = step_fn.logprobs(policy.params, placed)
        state, metrics = step_fn.update(
            state, {**placed, "completions": {**placed["completions"], "ref_logps": ref}}
        )
        jax.block_until_ready(metrics)
        update_times.append(time.perf_counter() - start)
    return {
        "step_s": float(np.mean(times[1:])),
        "first_step_s": times[0],
        "update_s": float(np.mean(update_times)),
        "update_flops": flops,
    }


def time_trl(path: str, num_prompts: int, steps: int, image_size: int) -> dict:
    """Seconds per step of TRL's GRPOTrainer with the same model, prompts and settings."""
    import torch
    from datasets import Dataset
    from transformers import (
        AutoTokenizer,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessorPil,
        TrainerCallback,
    )
    from trl import GRPOConfig, GRPOTrainer

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        """HF's processor without its video processor, which needs torchvision."""

        def check_argument_for_proper_class(self, name, argument):
            return (
                None
                if argument is None
                else super().check_argument_for_proper_class(name, argument)
            )

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    processor = ImageOnlyProcessor(
        image_processor=Qwen2VLImageProcessorPil(max_pixels=1_000_000),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )
    texts, images = conversations(num_prompts, image_size)
    rows = [
        {"prompt": user_turn(text), "image": image, "points": goal["points"]}
        for text, image, goal in zip(texts, images, targets(num_prompts))
    ]

    def counting(completions, points, **unused):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        goals = [{"points": p} for p in points[::GROUP]]
        return rewards.score("counting", texts, goals, group_size=GROUP).tolist()

    class Timer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.start)

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(),
        use_cpu=True,
        bf16=False,
        seed=0,
        max_steps=steps + 1,
        per_device_train_batch_size=GROUP * num_prompts,
        num_generations=GROUP,
        max_completion_length=NEW_TOKENS,
        generation_kwargs={"min_new_tokens": NEW_TOKENS},
        temperature=1.0,
        top_k=50,
        top_p=0.9,
        beta=0.04,
        loss_type="grpo",
        learning_rate=1e-6,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        max_grad_norm=1.0,
        gradient_checkpointing=False,
        disable_dropout=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
    )
    timer = Timer()
    trl_trainer = GRPOTrainer(
        model=model,
        reward_funcs=counting,
        args=args,
        train_dataset=Dataset.from_list(rows * (steps + 1)),
        processing_class=processor,
        callbacks=[timer],
    )
    trl_trainer.train()
    lengths = [
        log["completions/mean_length"]
        for log in trl_trainer.state.log_history
        if "completions/mean_length" in log
    ]
    assert min(lengths) == NEW_TOKENS, lengths
    return {"step_s": float(np.mean(timer.times[1:])), "first_step_s": timer.times[0]}


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Measured fp32 matmul FLOP/s of the default device (best of `repeats`)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    dot = jax.jit(lambda x: x @ x)
    dot(a).block_until_ready()
    best = min(_timed(lambda: dot(a).block_until_ready()) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=1, help="prompts per step (x G = 8)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after a warm-up")
    parser.add_argument("--image-size", type=int, default=112, help="image side (bench: 112)")
    parser.add_argument("--skip-trl", action="store_true", help="only time our step")
    args = parser.parse_args()
    completions = args.prompts * GROUP
    with tempfile.TemporaryDirectory() as path:
        build_bench_checkpoint(path)
        ours = time_ours(path, args.prompts, args.steps, args.image_size)
        peak = matmul_peak()
        trl = None
        if not args.skip_trl:
            try:
                trl = time_trl(path, args.prompts, args.steps, args.image_size)
            except ImportError as e:  # keep our measurement; say what the peer needs
                print(f"TRL side skipped ({e}); pip install -e '.[bench]' to compare.")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, jax {jax.__version__} on "
        f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind})"
    )
    print(
        f"step: {args.prompts} prompt(s) with a {args.image_size} px image x G={GROUP} = "
        f"{completions} completions x {NEW_TOKENS} tokens, beta 0.04, mu 1"
    )
    print(
        f"ours: {completions / ours['step_s']:8.2f} completions/s ({ours['step_s']:.3f} s/step;"
        f" first step with compilation {ours['first_step_s']:.1f} s)"
    )
    if trl is not None:
        print(
            f"TRL GRPOTrainer: {completions / trl['step_s']:8.2f} completions/s "
            f"({trl['step_s']:.3f} s/step)"
        )
        print(f"ratio: {trl['step_s'] / ours['step_s']:.1f}x TRL's completions/s")
    achieved = ours["update_flops"] / ours["update_s"]
    print(
        f"train step (ref log-probs + update): {ours['update_flops'] / 1e9:.2f} GFLOP in "
        f"{ours['update_s'] * 1e3:.1f} ms = {achieved / 1e9:.1f} GFLOP/s; fp32 matmul peak "
        f"{peak / 1e9:.1f} GFLOP/s; MFU {achieved / peak:.1%}"
    )


if __name__ == "__main__":
    main()
