"""Rollout throughput: our jitted sampler vs HF `generate`, same weights, prompts, settings.

  python benchmarks/sampling.py [--batch 16] [--new-tokens 128] [--repeats 3]

Both sample with temperature 1.0, top-k 50, top-p 0.9 and generate exactly `--new-tokens`
tokens per row (HF: min_new_tokens = max_new_tokens; ours: no EOS), so the counts match.
Prints new tokens/s of each and the ratio. Compilation is excluded (one warm-up run each).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import jax
from bench_models import bench_prompts, build_bench_checkpoint

from perception_rl.models import from_pretrained
from perception_rl.sampling import generate


def time_ours(model, batch, new_tokens, repeats):
    run = lambda seed: generate(
        model,
        batch,
        max_new_tokens=new_tokens,
        key=jax.random.key(seed),
        temperature=1.0,
        top_k=50,
        top_p=0.9,
        eos_ids=(),
    )
    run(0)  # compile
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        out = run(r + 1)
        times.append(time.perf_counter() - start)
    assert out.tokens.shape[1] == new_tokens and (out.lengths == new_tokens).all()
    return min(times)


def time_hf(path, batch, new_tokens, repeats):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    inputs = {
        k: torch.as_tensor(batch[k])
        for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
    }
    for k in ("input_ids", "attention_mask", "image_grid_thw"):  # HF wants int64 ids
        inputs[k] = inputs[k].long()
    inputs["mm_token_type_ids"] = (inputs["input_ids"] == model.config.image_token_id).long()
    kw = dict(
        do_sample=True,
        temperature=1.0,
        top_k=50,
        top_p=0.9,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
    )
    times = []
    with torch.no_grad():
        model.generate(**inputs, **kw)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            out = model.generate(**inputs, **kw)
            times.append(time.perf_counter() - start)
    assert out.shape[1] - inputs["input_ids"].shape[1] == new_tokens
    return min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-hf", action="store_true", help="only time our sampler")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as path:
        build_bench_checkpoint(path)
        batch = bench_prompts(path, args.batch)
        model = from_pretrained(path)
        tokens = args.batch * args.new_tokens
        ours = time_ours(model, batch, args.new_tokens, args.repeats)
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cpus, jax {jax.__version__} "
            f"on {jax.devices()[0].platform}"
        )
        print(
            f"batch {args.batch}, {args.new_tokens} new tokens, prompt length "
            f"{batch['input_ids'].shape[1]}"
        )
        print(f"ours: {tokens / ours:9.1f} new tokens/s ({ours:.3f} s)")
        if not args.skip_hf:
            hf = time_hf(path, batch, args.new_tokens, args.repeats)
            print(f"HF generate: {tokens / hf:9.1f} new tokens/s ({hf:.3f} s)")
            print(f"ratio (ours / HF): {hf / ours:.2f}x")


if __name__ == "__main__":
    main()
