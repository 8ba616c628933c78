"""Where a decode step's time goes: a `jax.profiler` trace of the sampler's decode program,
summed by XLA op kind and by the shape and origin of the library fusions.

  python benchmarks/profile_decode.py [--batch 16] [--samples 1] [--new-tokens 128] [--top 12]

Runs prefill, then traces one call of the compiled decode loops (after a warm-up call), and
prints the time of each XLA op kind (fusion names without their numeric suffix: `ynn_fusion`
holds the matmuls and some reductions, `transpose_copy_fusion` materialised transposes, ...)
per decode step, and the library fusions grouped by output shape and the JAX operation they
come from (`dot_general`, `reduce_max`, ...). `--samples G` decodes G rows per prompt, sharing
its cached keys/values, as GRPO's rollouts do. Times are thread time inside XLA's executor, read
from the trace's events; beside other work they include time the thread waited for a core, so
compare kinds within one trace, not figures across machines or runs.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_models import bench_prompts, build_bench_checkpoint

SKIP = ("ThunkExecutor", "$", "SlinkyThreadPool", "PjitFunction", "end:")


def _decode_call(model, batch, new_tokens, num_samples=1):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from perception_rl.models.qwen_vl import prompts
    from perception_rl.sampling import sampler

    graphdef, state = nnx.split(model)
    prompt = prompts.prompt_batch(batch, model.config, pad_id=0)
    length = prompt["input_ids"].shape[1]
    kw = {
        "prompt_length": length,
        "max_new_tokens": new_tokens,
        "eos_ids": (),
        "pad_id": 0,
        "repetition_penalty": 1.0,
        "temperature": 1.0,
        "top_k": 50,
    }

    def run(seed):
        carry = sampler._prefill(
            graphdef,
            state,
            prompt,
            cache_size=length + new_tokens,
            num_samples=num_samples,
        )
        carry = jax.block_until_ready(carry)
        args = (graphdef, state, *carry, jax.random.key(seed), jnp.float32(0.9), None)
        return args, kw

    return run, sampler._decode


def summarize(trace_file: str, hlo_text: str, steps: int, top: int) -> list[str]:
    """Per-step milliseconds by op kind, and the library fusions (`ynn_fusion`, which hold the
    matmuls but also reductions such as the softmax's, and plain `dot`s) by output shape and
    the JAX operation they come from."""
    with gzip.open(trace_file) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    kinds, fusions = collections.Counter(), collections.Counter()
    for e in events:
        if e["name"].startswith(SKIP):
            continue
        kinds[re.sub(r"\.\d+$", "", e["name"])] += e["dur"]
        if e["name"].startswith(("ynn_fusion", "dot")):
            fusions[e["name"]] += e["dur"]
    total = sum(kinds.values())
    lines = [f"decode, per step ({steps} steps traced): {total / 1e3 / steps:.2f} ms in XLA ops"]
    for name, us in kinds.most_common(top):
        lines.append(f"  {us / 1e3 / steps:7.3f} ms  {us / total:6.1%}  {name}")
    origins = collections.Counter()
    for name, us in fusions.items():
        line = re.search(r"^\s+%" + re.escape(name) + r" = (\S+) .*$", hlo_text, re.MULTILINE)
        op = re.search(r'op_name="([^"]*)"', line.group(0)) if line else None
        shape, op = (line.group(1) if line else "?"), (op.group(1) if op else "")
        origins[shape, re.sub(r"^jit\(_decode\)/(while/body/)?", "", op)] += us
    lines.append("library fusions by output shape and origin (per step):")
    for (shape, op), us in origins.most_common(top):
        lines.append(f"  {us / 1e3 / steps:7.3f} ms  {shape:28s} {op}")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--samples", type=int, default=1, help="rows per prompt (GRPO's G)")
    args = parser.parse_args()
    import jax

    from perception_rl.models import from_pretrained

    with tempfile.TemporaryDirectory() as path:
        build_bench_checkpoint(path)
        model = from_pretrained(path)
        run, decode = _decode_call(
            model, bench_prompts(path, args.batch), args.new_tokens, args.samples
        )
        args_, kw = run(0)
        hlo = decode.lower(*args_, **kw).compile().as_text()
        jax.block_until_ready(decode(*args_, **kw))  # compile + warm up
        args_, kw = run(1)
        trace_dir = os.path.join(path, "trace")
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        jax.block_until_ready(decode(*args_, **kw))
        jax.profiler.stop_trace()
        trace = sorted(glob.glob(os.path.join(trace_dir, "plugins/profile/*/*.trace.json.gz")))
        print(
            f"batch {args.batch} x {args.samples} samples, {args.new_tokens} new tokens,"
            f" jax {jax.__version__}"
        )
        print("\n".join(summarize(trace[-1], hlo, args.new_tokens, args.top)))


if __name__ == "__main__":
    main()
