"""Rollout throughput: our jitted sampler vs HF `generate`, same weights, prompts, settings.

  python benchmarks/sampling.py [--batch 16] [--new-tokens 128] [--repeats 3] [--rounds 3]
                                [--threads N] [--strict] [--skip-hf]

Both sample with temperature 1.0, top-k 50, top-p 0.9 and generate exactly `--new-tokens`
tokens per row (HF: min_new_tokens = max_new_tokens; ours: no EOS), so the counts match.
Each side runs in its own worker process (`benchmarks/harness.py`): alternately, `--rounds`
rounds, pinned to the same `--threads` CPUs, each worker warming up once (compilation excluded)
and timing `--repeats` runs. Prints min / median / max new tokens/s per side, the ratio of
medians, whether other work shared the machine (CONTENDED figures are not measurements), and a
roofline of our prefill and decode: achieved FLOP/s and bytes/s against the matmul peak and
copy bandwidth measured in the same worker (prefill: XLA's cost analysis of the compiled
program; decode: counted from the model's sizes and the cache slots each step reads,
`decode_work`, since its loops grow the cache and XLA counts each loop body once). Last, a
ceiling: the throughput if a generation cost only its prefill's FLOPs at the matmul peak plus
the decode's text matmuls and attention each timed alone (`decode_kernels`), as a multiple of
HF's median: what this machine's XLA kernels allow the sampler, whatever else it did better.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# This tree's perception_rl (over an editable install of another checkout); appended, so an A/B
# worker's PYTHONPATH (another revision's perception_rl) still comes first.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import harness
from bench_models import bench_prompts, build_bench_checkpoint

SETTINGS = {"temperature": 1.0, "top_k": 50, "top_p": 0.9}


def sampler_prompts(processor_batch: dict, config) -> tuple[dict, dict]:
    """(what `generate` takes, what its `_prefill` takes) for the revision on the path.

    Since the one prompt layout both are the train step's batch-major prompts, converted once
    here (untimed), as rollouts hand them over; `--against` an older revision gets the
    processor batch that its `generate` padded itself.
    """
    try:
        from perception_rl.models.qwen_vl import prompts
    except ImportError:  # a revision before models/qwen_vl/prompts.py
        from perception_rl.sampling import sampler

        return processor_batch, sampler.pad_prompt_batch(processor_batch, config)
    prompt = prompts.prompt_batch(processor_batch, config, pad_id=0)
    return prompt, prompt


def worker_ours(path: str, batch_size: int, new_tokens: int, repeats: int) -> None:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from perception_rl.models import from_pretrained
    from perception_rl.sampling import generate, sampler

    harness.set_torch_threads()
    model = from_pretrained(path)
    batch, prompt = sampler_prompts(bench_prompts(path, batch_size), model.config)
    run = lambda seed: generate(
        model, batch, max_new_tokens=new_tokens, key=jax.random.key(seed), eos_ids=(), **SETTINGS
    )
    run(0)  # compile
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        out = run(r + 1)
        times.append(time.perf_counter() - start)
    assert out.tokens.shape[1] == new_tokens and (out.lengths == new_tokens).all()

    # Roofline: prefill and decode programs timed apart, costed by XLA.
    graphdef, state = nnx.split(model)
    length = prompt["input_ids"].shape[1]
    prefill_kw = {"cache_size": length + new_tokens, "num_samples": 1}
    decode_kw = {
        "prompt_length": length,
        "max_new_tokens": new_tokens,
        "eos_ids": (),
        "pad_id": 0,
        "repetition_penalty": 1.0,
        "temperature": SETTINGS["temperature"],
        "top_k": SETTINGS["top_k"],
    }
    top_p = jnp.float32(SETTINGS["top_p"])
    prefill_cost = harness.cost(
        sampler._prefill.lower(graphdef, state, prompt, **prefill_kw).compile()
    )
    prefill_s, decode_s = [], []
    for r in range(repeats + 1):
        start = time.perf_counter()
        carry = jax.block_until_ready(sampler._prefill(graphdef, state, prompt, **prefill_kw))
        middle = time.perf_counter()
        args = (graphdef, state, *carry, jax.random.key(r), top_p, None)
        jax.block_until_ready(sampler._decode(*args, **decode_kw))
        if r:  # the first round compiles
            prefill_s.append(middle - start)
            decode_s.append(time.perf_counter() - middle)
    decode_cost = decode_work(model, state, batch_size, int(length), new_tokens, sampler)
    kernels = decode_kernels(model, batch_size, int(length), new_tokens, repeats, attention=True)
    harness.emit(
        times,
        work=batch_size * new_tokens,
        unit="new tok",
        prompt_length=int(length),
        prefill_s=statistics.median(prefill_s),
        decode_s=statistics.median(decode_s),
        prefill_cost=prefill_cost,
        decode_cost=decode_cost,
        kernels=kernels,
        matmul_peak=harness.matmul_peak(),
        bandwidth=harness.memory_bandwidth(),
        jax=jax.__version__,
    )


def decode_work(model, state, rows: int, prompt_length: int, new_tokens: int, sampler) -> dict:
    """Analytic FLOPs and least bytes of decoding `new_tokens` tokens for `rows` rows (one
    sample per prompt): every step multiplies the text weights (and the tied or untied head)
    and reads them once, and attends over, reading once, the cache slots it can see: the
    prompt's and, since the growing completion cache (`sampler._segment_ends`), the
    completion's current segment; before it, all `new_tokens` slots."""
    import jax
    import numpy as np

    c = model.config.text
    text = jax.tree.leaves(state["model"])  # the decoder and the embedding table
    text_bytes = sum(x.nbytes for x in text)
    # The table's lookup is no matmul; the head is the table when tied, its own matrix if not.
    matmul_params = sum(x.size for x in text)
    if not model.head()[1]:
        text_bytes += c.vocab_size * c.hidden_size * text[0].dtype.itemsize
    ends = getattr(sampler, "_segment_ends", lambda n: [n])(new_tokens)
    steps = np.diff([0, *ends])
    visible = float(np.sum(steps * (prompt_length + np.asarray(ends))))  # slots, all steps
    per_slot = rows * c.num_layers * c.num_kv_heads * c.head_dim
    heads_per_kv = c.num_heads // c.num_kv_heads
    return {
        "flops": 2.0 * rows * matmul_params * new_tokens + 4.0 * per_slot * heads_per_kv * visible,
        "bytes": float(text_bytes * new_tokens + 2 * per_slot * visible * text[0].dtype.itemsize),
    }


def decode_kernels(
    model, rows: int, prompt_length: int, new_tokens: int, repeats: int, *, attention: bool
) -> dict | None:
    """Best seconds of the decode's two kernels alone, each a jitted loop of `new_tokens` steps
    at `rows` rows: "weights", every text matmul of a step through the model's own weights
    (`_weights_loop`); with `attention`, "attention", every layer's `layers.cached_attention`
    over the prompt's and the completion's slots the sampler's steps read (`_attention_loop`).
    A decode step also samples, rotates, normalises and writes its cache, so `rows ·
    new_tokens / (prefill + weights + attention)` bounds its throughput from above on this
    machine's XLA. None on a revision without the growing cache (`--against` an older one)."""
    from perception_rl.sampling import sampler

    if not hasattr(sampler, "_segment_ends"):
        return None
    loops = {"weights": _weights_loop(model, rows, new_tokens)}
    if attention:
        ends = sampler._segment_ends(new_tokens)
        loops["attention"] = _attention_loop(model.config.text, rows, prompt_length, ends)
    calls = {name: functools.partial(run, *args) for name, (run, args) in loops.items()}
    for call in calls.values():
        call().block_until_ready()  # compile
    timed = lambda call: harness.best_seconds(lambda: call().block_until_ready(), repeats)
    return {name: timed(call) for name, call in calls.items()}


def _weights_loop(model, rows: int, steps: int):
    """(jitted fn, its args): `steps` steps of q, k, v, o, gate, up, down per layer, then the
    head, chained through the model's weights with nothing else (a norm keeps it finite)."""
    import jax
    import jax.numpy as jnp

    names = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
             "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
             "down": "mlp.down_proj"}  # fmt: skip
    module = lambda layer, path: functools.reduce(getattr, path.split("."), layer)
    weights = [
        {k: module(layer, path).kernel[...] for k, path in names.items()}
        for layer in model.model.layers
    ]
    head, tied = model.head()

    @jax.jit
    def run(weights, head, x):
        def step(_, x):
            for w in weights:
                q, k, v = x @ w["q"], x @ w["k"], x @ w["v"]
                q = q * (1.0 + k.mean(-1, keepdims=True) + v.mean(-1, keepdims=True))
                x = x + q @ w["o"]
                x = x + (jax.nn.silu(x @ w["gate"]) * (x @ w["up"])) @ w["down"]
                x = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6)
            logits = x @ (head.T if tied else head)
            return x + 1e-3 * logits.mean(-1, keepdims=True)

        return jax.lax.fori_loop(0, steps, step, x)

    x = jax.random.normal(jax.random.key(0), (rows, model.config.text.hidden_size))
    return run, (weights, head, x)


def _attention_loop(c, rows: int, prompt_length: int, ends: list[int]):
    """(jitted fn, its args): `layers.cached_attention` of every layer at each step, as the
    sampler's decode calls it (one sample per prompt): the prompt's keys/values as the prefix,
    beside the rows' own cache of each segment's slots (`sampler._segment_ends`); random."""
    import jax
    import jax.numpy as jnp

    from perception_rl.models.qwen_vl import layers

    keys = iter(jax.random.split(jax.random.key(0), 2 * c.num_layers * (len(ends) + 1) + 1))
    normal = lambda *shape: jax.random.normal(next(keys), shape)
    kv = lambda slots: {
        "k": normal(rows, c.num_kv_heads, c.head_dim, slots),
        "v": normal(rows, c.num_kv_heads, slots, c.head_dim),
    }
    prefix = [kv(prompt_length) for _ in range(c.num_layers)]
    own = [[kv(end) for _ in range(c.num_layers)] for end in ends]

    @jax.jit
    def run(prefix, own, q, visible):
        start = 0
        for end, layer_caches in zip(ends, own):

            def step(i, q, layer_caches=layer_caches, end=end):
                # The prompt's slots and the row's own up to this step's, as the sampler's mask.
                slots = jnp.arange(prompt_length + end)
                mask = (slots <= prompt_length + i) & visible[:, : prompt_length + end]
                for cache, shared in zip(layer_caches, prefix):
                    q = layers.cached_attention(
                        q, cache["k"], cache["v"], mask[:, None, None, None], shared
                    )
                return q

            q, start = jax.lax.fori_loop(start, end, step, q), end
        return q

    q = normal(rows, 1, c.num_kv_heads, c.num_heads // c.num_kv_heads, c.head_dim)
    visible = jnp.ones((rows, prompt_length + ends[-1]), bool)
    return run, (prefix, own, q, visible)


def worker_hf(path: str, batch_size: int, new_tokens: int, repeats: int) -> None:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    harness.set_torch_threads()
    batch = bench_prompts(path, batch_size)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    inputs = {
        k: torch.as_tensor(batch[k])
        for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
    }
    for k in ("input_ids", "attention_mask", "image_grid_thw"):  # HF wants int64 ids
        inputs[k] = inputs[k].long()
    inputs["mm_token_type_ids"] = (inputs["input_ids"] == model.config.image_token_id).long()
    kw = dict(do_sample=True, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **SETTINGS)
    times = []
    with torch.no_grad():
        model.generate(**inputs, **kw)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            out = model.generate(**inputs, **kw)
            times.append(time.perf_counter() - start)
    assert out.shape[1] - inputs["input_ids"].shape[1] == new_tokens
    harness.emit(times, work=batch_size * new_tokens, unit="new tok", torch=torch.__version__)


def roofline(result: list[dict]) -> list[str]:
    """Our prefill and decode against the matmul peak and bandwidth (medians over rounds)."""
    med = lambda key: statistics.median(r[key] for r in result)
    peak, bandwidth = med("matmul_peak"), med("bandwidth")
    lines = [
        (
            "roofline of ours (prefill: FLOPs and bytes from XLA's cost analysis of the compiled"
            " program, whose bytes count every op's operands, cache hits included; decode: analytic,"
            " the text matmuls and attention over the visible cache slots, with the least bytes:"
            " the text weights and the visible KV cache read once per token):"
        )
    ]
    for stage in ("prefill", "decode"):
        cost = result[0][f"{stage}_cost"]
        lines.append(
            harness.roofline_line(
                stage, cost["flops"], cost["bytes"], med(f"{stage}_s"), peak, bandwidth
            )
        )
    return lines


def ceiling(report: harness.Report) -> list[str]:
    """Our throughput if a generation cost only its prefill's FLOPs at the matmul peak plus
    the decode's two kernels alone (`decode_kernels`), against hf's median when it ran."""
    ours = report.sides[0].runs
    if ours[0].get("kernels") is None:
        return []
    med = lambda get: statistics.median(get(r) for r in ours)
    prefill = med(lambda r: r["prefill_cost"]["flops"] / r["matmul_peak"])
    weights, attention = (med(lambda r, k=k: r["kernels"][k]) for k in ("weights", "attention"))
    best = ours[0]["work"] / (prefill + weights + attention)
    floor_share = med(lambda r: r["decode_cost"]["flops"] / r["matmul_peak"]) / (
        weights + attention
    )
    line = (
        f"ceiling of ours on this machine's XLA: prefill at the matmul peak {prefill * 1e3:.0f} ms"
        f" + the decode's text matmuls alone {weights * 1e3:.0f} ms + its attention alone"
        f" {attention * 1e3:.0f} ms (decode measured: {med(lambda r: r['decode_s']) * 1e3:.0f}"
        f" ms; at its kernels' time, {floor_share:.0%} of the matmul peak)"
        f" = at most {best:.0f} new tok/s"
    )
    return [line + harness.against_side(report, "hf", best)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per worker")
    parser.add_argument("--skip-hf", action="store_true", help="only time our sampler")
    parser.add_argument(
        "--against",
        default=None,
        metavar="REV",
        help="A/B: time our sampler at git revision REV (its perception_rl/ exported to a temp "
        "dir) against the working tree, instead of HF generate",
    )
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    harness.add_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        worker = {"ours": worker_ours, "hf": worker_hf}[args.worker]
        return worker(args.checkpoint, args.batch, args.new_tokens, args.repeats)
    with tempfile.TemporaryDirectory() as path:
        build_bench_checkpoint(path)
        common = [
            *("--checkpoint", path, "--batch", str(args.batch)),
            *("--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)),
        ]
        me = (sys.executable, os.path.abspath(__file__))
        ours_env = (("PYTHONPATH", harness.snapshot_tree(path)),) if args.against else ()
        sides = [harness.Side("ours", (*me, "--worker", "ours", *common), ours_env)]
        if args.against:
            tree = harness.export_revision(args.against, path)
            env = (("PYTHONPATH", tree),)
            sides.append(harness.Side(args.against, (*me, "--worker", "ours", *common), env))
        elif not args.skip_hf:
            sides.append(harness.Side("hf", (*me, "--worker", "hf", *common)))
        report = harness.compare(
            sides, rounds=args.rounds, threads=args.threads, max_other_cores=args.max_other_cores
        )
    ours = report.sides[0].runs
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, jax {ours[0]['jax']}; "
        f"batch {args.batch}, {args.new_tokens} new tokens, prompt length "
        f"{ours[0]['prompt_length']}, temperature 1.0, top-k 50, top-p 0.9"
    )
    baseline = args.against or (None if args.skip_hf else "hf")
    extra = [f"  {side.name}: perception_rl from {side.runs[0]['source']}" for side in report.sides]
    extra += roofline(ours) + ceiling(report)
    harness.finish(report, baseline=baseline, strict=args.strict, extra=extra)


if __name__ == "__main__":
    main()
