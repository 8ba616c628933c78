"""One full GRPO step (rollouts + rewards + update): ours vs TRL's GRPOTrainer, same weights.

  python benchmarks/grpo_step.py [--prompts 1] [--steps 3] [--image-size 112] [--rounds 3]
                                 [--threads N] [--strict] [--skip-trl]

Both sides train the bench checkpoint (`bench_models.build_bench_checkpoint`: Qwen2.5-VL, 8 text
layers of width 512, 4 vision blocks, tiny tokenizer) on the same prompts (`bench_prompts`: a
random 112×112 image and a counting request each) with the same settings: G = 8 completions per
prompt of exactly 64 tokens (EOS disabled on both sides so the counts match), temperature 1.0,
top-k 50, top-p 0.9; the counting reward on the same targets; GRPO advantages; a frozen
reference model with β = 0.04 (k3); one update per batch; Perception-R1's loss (mean over
sequences of token means); AdamW lr 1e-6 with grad-norm clip 1.0; float32, no gradient
checkpointing. Each side runs in its own worker process (`benchmarks/harness.py`), alternately
for `--rounds` rounds on the same CPUs and thread count; each worker runs one warm-up step (our
compilation, TRL's first-call overheads), then `--steps` timed steps; completions/s =
completions per step / step time, min / median / max over all timed steps of all rounds.

Our step is also timed by part: rollouts (sampling + rewards + advantages), reference
log-probs, update; with a roofline of the last two (FLOPs and bytes from XLA's cost analysis of
the compiled programs) against the matmul peak and copy bandwidth measured in the same worker,
and a ceiling: the completions/s if a step cost only those two programs' FLOPs at the matmul
peak plus the rollouts' decode matmuls timed alone (`sampling.decode_kernels`), as a multiple of
TRL's median.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `configs` and this tree's `perception_rl` live at the repository root; appended, so an A/B
# worker's PYTHONPATH (another revision's perception_rl) still comes first.
sys.path.append(_ROOT)
sys.path.insert(0, os.path.join(_ROOT, "benchmarks"))

import harness
from bench_models import bench_prompts, build_bench_checkpoint
from sampling import decode_kernels

from configs import common
from perception_rl import policy as policy_lib
from perception_rl import rewards
from perception_rl.models.qwen_vl import prompts
from perception_rl.parallel import hosts
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


def records_from_batch(batch: dict, model_config, goals: list[dict]) -> list[dict]:
    """The processor batch of `bench_prompts` as per-prompt trainer records."""
    split = prompts.split_processor_batch(batch, model_config.vision, model_config.image_token_id)
    return [{"prompt": prompt, "target": goal} for prompt, goal in zip(split, goals)]


def bench_config(path: str, num_prompts: int):
    config = common.get_config()
    config.model = path
    config.mesh_shape = (1, 1, 1)
    config.rl.prompts_per_step = num_prompts
    config.rl.num_generations = GROUP
    config.rl.max_new_tokens = NEW_TOKENS
    config.train.logprob_chunk = 64
    return config


def worker_ours(path: str, num_prompts: int, steps: int, image_size: int) -> None:
    """Seconds per full step of our trainer; rollouts, reference log-probs and update apart."""
    harness.set_torch_threads()
    config = bench_config(path, num_prompts)
    mesh = runtime.build_mesh(config)
    policy = policy_lib.load_policy(config, mesh)
    if image_size == 112:
        batch = bench_prompts(path, num_prompts)
    else:
        texts, images = conversations(num_prompts, image_size)
        batch = policy.processor([user_turn(t) for t in texts], [[image] for image in images])
    records = records_from_batch(batch, policy.model_config, targets(num_prompts))
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
        config, policy, mesh, trainer.step_config(config), config.optim, 2 * steps + 2
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
    # The parts of a step, each timed to completion on its own.
    parts = {"rollouts": [], "ref_logps": [], "update": []}
    for step in range(steps):
        start = time.perf_counter()
        rollouts = collector.collect(state.params, jax.random.key(100 + step), num_prompts)
        placed = hosts.global_arrays(rollouts.batch, step_fn.batch_sharding)
        jax.block_until_ready(placed)
        sampled = time.perf_counter()
        ref = jax.block_until_ready(step_fn.logprobs(policy.params, placed))
        referenced = time.perf_counter()
        placed["completions"]["ref_logps"] = ref
        state, metrics = step_fn.update(state, placed)
        jax.block_until_ready((state, metrics))
        parts["rollouts"].append(sampled - start)
        parts["ref_logps"].append(referenced - sampled)
        parts["update"].append(time.perf_counter() - referenced)
    costs = {
        "ref_logps": harness.cost(step_fn.logprobs.lower(policy.params, placed).compile()),
        "update": harness.cost(step_fn.update.lower(state, placed).compile()),
    }
    # The rollouts' floor: their decode's text matmuls alone (`sampling.decode_kernels`).
    kernels = decode_kernels(
        policy.model(), num_prompts * GROUP, 0, NEW_TOKENS, steps, attention=False
    )
    harness.emit(
        times[1:],
        work=num_prompts * GROUP,
        unit="completions",
        first_step_s=times[0],
        parts={k: statistics.median(v) for k, v in parts.items()},
        costs=costs,
        kernels=kernels,
        matmul_peak=harness.matmul_peak(),
        bandwidth=harness.memory_bandwidth(),
        jax=jax.__version__,
        device=jax.devices()[0].device_kind,
    )


def worker_trl(path: str, num_prompts: int, steps: int, image_size: int) -> None:
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

    harness.set_torch_threads()

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
    harness.emit(
        timer.times[1:],
        work=num_prompts * GROUP,
        unit="completions",
        first_step_s=timer.times[0],
        versions={m: sys.modules[m].__version__ for m in ("trl", "torch", "transformers")},
    )


def by_part(name: str, result: list[dict]) -> str:
    """One side's step by part (medians over its rounds)."""
    med = lambda get: statistics.median(get(r) for r in result)
    parts = {k: med(lambda r, k=k: r["parts"][k]) for k in result[0]["parts"]}
    return (
        f"{name} by part (medians): "
        + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in parts.items())
        + f"; first step with compilation {med(lambda r: r['first_step_s']):.1f} s"
    )


def roofline(result: list[dict]) -> list[str]:
    """Our reference log-probs and update against the machine's peaks."""
    med = lambda get: statistics.median(get(r) for r in result)
    peak, bandwidth = med(lambda r: r["matmul_peak"]), med(lambda r: r["bandwidth"])
    parts = {k: med(lambda r, k=k: r["parts"][k]) for k in result[0]["parts"]}
    lines = ["roofline of ours (FLOPs and bytes: XLA's cost analysis of the compiled programs):"]
    for name in ("ref_logps", "update"):
        cost = result[0]["costs"][name]
        lines.append(
            harness.roofline_line(name, cost["flops"], cost["bytes"], parts[name], peak, bandwidth)
        )
    return lines


def ceiling(report: harness.Report) -> list[str]:
    """Our completions/s if a step cost only the reference log-probs' and the update's FLOPs at
    the matmul peak plus the rollouts' decode matmuls alone, against trl's median when it ran."""
    ours = report.sides[0].runs
    if ours[0].get("kernels") is None:
        return []
    med = lambda get: statistics.median(get(r) for r in ours)
    at_peak = {
        k: med(lambda r, k=k: r["costs"][k]["flops"] / r["matmul_peak"])
        for k in ("ref_logps", "update")
    }
    rollouts = med(lambda r: r["kernels"]["weights"])
    best = ours[0]["work"] / (rollouts + sum(at_peak.values()))
    line = (
        f"ceiling of ours on this machine's XLA: the rollouts' text matmuls alone"
        f" {rollouts * 1e3:.0f} ms + reference log-probs at the matmul peak"
        f" {at_peak['ref_logps'] * 1e3:.0f} ms + update at the peak {at_peak['update'] * 1e3:.0f}"
        f" ms = at most {best:.2f} completions/s"
    )
    return [line + harness.against_side(report, "trl", best)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1, help="prompts per step (x G = 8)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per worker")
    parser.add_argument("--image-size", type=int, default=112, help="image side (bench: 112)")
    parser.add_argument("--skip-trl", action="store_true", help="only time our step")
    parser.add_argument(
        "--against",
        default=None,
        metavar="REV",
        help="A/B: time our step at git revision REV (its perception_rl/ exported to a temp "
        "dir) against the working tree, instead of TRL",
    )
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    harness.add_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        worker = {"ours": worker_ours, "trl": worker_trl}[args.worker]
        return worker(args.checkpoint, args.prompts, args.steps, args.image_size)
    with_trl = not (args.skip_trl or args.against) and importlib.util.find_spec("trl") is not None
    if (
        not (args.skip_trl or args.against) and not with_trl
    ):  # keep our measurement; say what the peer needs
        print("TRL side skipped (trl is not installed); pip install -e '.[bench]' to compare.")
    with tempfile.TemporaryDirectory() as path:
        build_bench_checkpoint(path)
        common = [
            *("--checkpoint", path, "--prompts", str(args.prompts), "--steps", str(args.steps)),
            *("--image-size", str(args.image_size)),
        ]
        me = (sys.executable, os.path.abspath(__file__))
        ours_env = (("PYTHONPATH", harness.snapshot_tree(path)),) if args.against else ()
        sides = [harness.Side("ours", (*me, "--worker", "ours", *common), ours_env)]
        if args.against:
            env = (("PYTHONPATH", harness.export_revision(args.against, path)),)
            sides.append(harness.Side(args.against, (*me, "--worker", "ours", *common), env))
        elif with_trl:
            sides.append(harness.Side("trl", (*me, "--worker", "trl", *common)))
        report = harness.compare(
            sides, rounds=args.rounds, threads=args.threads, max_other_cores=args.max_other_cores
        )
    ours = report.sides[0].runs
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, jax {ours[0]['jax']} on "
        f"{ours[0]['device']}" + (f"; {report.sides[1].runs[0]['versions']}" if with_trl else "")
    )
    print(
        f"step: {args.prompts} prompt(s) with a {args.image_size} px image x G={GROUP} = "
        f"{args.prompts * GROUP} completions x {NEW_TOKENS} tokens, beta 0.04, mu 1"
    )
    baseline = args.against or ("trl" if with_trl else None)
    extra = [f"  {side.name}: perception_rl from {side.runs[0]['source']}" for side in report.sides]
    extra += [by_part(side.name, side.runs) for side in report.sides if "parts" in side.runs[0]]
    extra += roofline(ours) + ceiling(report)
    harness.finish(report, baseline=baseline, strict=args.strict, extra=extra)


if __name__ == "__main__":
    main()
