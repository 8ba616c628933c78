"""The detection benchmark's baselines agree with the library on a small batch (keeps the
benchmark honest and cross-checks the reward against two more per-sample implementations)."""

import importlib.util
import pathlib

import numpy as np

from perception_rl import rewards

_PATH = pathlib.Path(__file__).parents[2] / "benchmarks" / "rewards.py"
_spec = importlib.util.spec_from_file_location("rewards_benchmark", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_baselines_match_the_batched_reward():
    completions, targets = bench.make_batch(num_prompts=16, group_size=4, boxes=8, seed=1)
    per_completion = [t for t in targets for _ in range(4)]
    ours = rewards.score("detection", completions, targets, group_size=4)
    python = [bench.detection_reward(c, t) for c, t in zip(completions, per_completion)]
    numpy = [bench.numpy_detection_reward(c, t) for c, t in zip(completions, per_completion)]
    np.testing.assert_allclose(ours, python, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ours, numpy, atol=1e-6, rtol=0)
    assert len(set(np.round(ours, 3))) > 10  # varied rewards, not a constant
