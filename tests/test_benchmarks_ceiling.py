"""The benchmarks' ceilings: the kernels timed alone do the decode's work, no less (a ceiling
built on less work would promise more than the code can reach), and the printed bound is the
arithmetic of its parts. No timing assertions."""

import dataclasses
import importlib.util
import pathlib
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from perception_rl.models.qwen_vl.config import tiny
from perception_rl.models.qwen_vl.model import QwenVL

_BENCH = pathlib.Path(__file__).parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", _BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sampling = _load("sampling")
harness = sys.modules["harness"]  # the one sampling.py imported


@pytest.fixture(scope="module")
def model():
    return QwenVL(tiny("qwen2_5_vl", vocab_size=96), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("tied", [True, False])
def test_weights_loop_multiplies_every_text_weight_once_per_step(tied):
    config = dataclasses.replace(tiny("qwen2_5_vl", vocab_size=96), tie_word_embeddings=tied)
    model = QwenVL(config, rngs=nnx.Rngs(0))
    rows = 4
    run, args = sampling._weights_loop(model, rows, steps=1)  # one step, however XLA counts loops
    kernels = [
        x.size
        for path, x in jax.tree_util.tree_leaves_with_path(nnx.state(model.model.layers))
        if "kernel" in jax.tree_util.keystr(path)
    ]
    head, _ = model.head()
    matmuls = 2.0 * rows * (sum(kernels) + head.size)
    flops = harness.cost(run.lower(*args).compile())["flops"]
    assert len(kernels) == 7 * config.text.num_layers
    assert matmuls <= flops <= 1.1 * matmuls  # the rest: norms, silu, means


def test_attention_loop_reads_the_prompt_and_each_segments_slots(model):
    c = model.config.text
    run, (prefix, own, q, visible) = sampling._attention_loop(c, 3, prompt_length=5, ends=[4, 8])
    assert [layer["k"].shape[-1] for layer in prefix] == [5] * c.num_layers
    assert [layer["k"].shape[-1] for layer in own[0]] == [4] * c.num_layers
    assert [layer["v"].shape[-2] for layer in own[1]] == [8] * c.num_layers
    out = run(prefix, own, q, visible)
    assert out.shape == q.shape and bool(np.isfinite(np.asarray(out)).all())


def test_decode_kernels_times_what_it_is_asked(model):
    both = sampling.decode_kernels(model, 2, 5, 8, repeats=1, attention=True)
    weights = sampling.decode_kernels(model, 2, 5, 8, repeats=1, attention=False)
    assert set(both) == {"weights", "attention"} and set(weights) == {"weights"}
    assert all(s > 0 for s in [*both.values(), *weights.values()])


def _report(ours: dict, peer_name: str, peer_seconds: float):
    side = lambda name, runs: harness.SideResult(name, runs)
    peer = {"work": 1000, "seconds": [peer_seconds], "unit": "new tok"}
    return harness.Report(
        command="",
        sides=[side("ours", [ours]), side(peer_name, [peer])],
        loads=[],
        threads=2,
        reasons=[],
        order=[],
    )


def test_sampler_ceiling_adds_prefill_at_peak_and_the_two_kernels():
    ours = {
        "work": 1000,
        "seconds": [1.0],
        "prefill_cost": {"flops": 1e9},
        "matmul_peak": 1e10,  # prefill 0.1 s at the peak
        "kernels": {"weights": 0.25, "attention": 0.15},
        "decode_s": 0.8,
        "decode_cost": {"flops": 1e9},  # 0.1 s at the peak, a quarter of the kernels' 0.4 s
    }
    (line,) = sampling.ceiling(_report(ours, "hf", 2.0))  # hf: 500 tok/s
    assert "at most 2000 new tok/s = 4.00x hf's median" in line
    assert "at its kernels' time, 25% of the matmul peak" in line
    assert sampling.ceiling(_report({**ours, "kernels": None}, "hf", 2.0)) == []


def test_grpo_ceiling_adds_the_rollouts_matmuls_and_the_programs_at_peak():
    grpo_step = _load("grpo_step")
    ours = {
        "work": 8,
        "seconds": [1.0],
        "costs": {"ref_logps": {"flops": 1e9}, "update": {"flops": 3e9}},  # 0.1 + 0.3 s
        "matmul_peak": 1e10,
        "kernels": {"weights": 0.4},
    }
    report = _report(ours, "trl", 4.0)
    report.sides[1].runs[0]["work"] = 8  # trl: 8 completions in 4 s; ours at most 8 in 0.8 s
    (line,) = grpo_step.ceiling(report)
    assert "at most 10.00 completions/s = 5.00x trl's median" in line
