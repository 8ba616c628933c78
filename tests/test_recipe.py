"""The main job: configs/synthetic.py builds for every task; the recipe runs end to end."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import synthetic
from perception_rl import recipe, report
from perception_rl.models.qwen_vl import preset

REPORT_FILES = (
    "reward_curves.png",
    "gallery.png",
    "gallery_sft.png",
    "before_after.json",
    "table.md",
)


@pytest.mark.parametrize(
    "arg, task",
    [
        (None, "counting"),
        ("", "counting"),
        ("grounding", "grounding"),
        ("task=detection", "detection"),
        ("counting", "counting"),
    ],
)
def test_config_builds_for_each_task(arg, task):
    config = synthetic.get_config(arg)
    assert config.task == task
    assert config.mode == "recipe"
    assert preset(config.model).family == "qwen2_5_vl"
    assert config.eval.split != config.data.split  # evaluated on held-out examples


def test_grounding_uses_a_tiny_model_that_can_tell_positions_apart():
    """Grounding gets the synthetic model with rope_theta 2 (README "The main job"); counting
    keeps the default preset and data."""
    grounding, counting = synthetic.get_config("grounding"), synthetic.get_config()
    assert preset(grounding.model).text.rope_theta == 2.0
    assert preset(counting.model).text.rope_theta == 1e6
    assert preset(grounding.model).replace(text=preset(counting.model).text) == preset(
        counting.model
    )
    assert counting.sft.num_steps == 800 and tuple(counting.data.synthetic.object_scale) == (
        0.2,
        0.3,
    )


# What perception_rl.main does with its flags: app.run parses them, the config section `reward`
# becomes the reward's options.
_PRINT_REWARD_OPTIONS = """
from absl import app, flags
from ml_collections import config_flags
from perception_rl.tasks import get_task, reward_options
CONFIG = config_flags.DEFINE_config_file("config")
app.run(lambda _: print(reward_options(get_task("counting"), "qwen2_5_vl",
                                       CONFIG.value.reward.to_dict())))
"""


def test_counting_reward_kind_is_set_from_the_command_line():
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for extra, want in (
        ([], "{}"),
        (["--config.reward.kind=exact_count"], "{'kind': 'exact_count'}"),
    ):
        out = subprocess.run(
            [sys.executable, "-c", _PRINT_REWARD_OPTIONS, "--config=configs/synthetic.py", *extra],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out.strip().splitlines()[-1] == want


def test_config_rejects_unknown_task():
    with pytest.raises(ValueError, match="ocr"):
        synthetic.get_config("task=ocr")


def test_moving_average_and_reward_window():
    np.testing.assert_allclose(
        report.moving_average(np.array([1.0, 2, 3, 4]), 2), [1.0, 1.5, 2.5, 3.5]
    )
    records = [{"step": i + 1, "reward/total/mean": float(i)} for i in range(12)]
    window = recipe.reward_window(records)
    assert (window["first"], window["last"], window["steps"]) == (2.0, 9.0, 12)


def test_report_prints_the_interval_and_the_headroom_table():
    summary = {
        "task": "counting",
        "interval": {
            "delta": 0.062,
            "low": 0.031,
            "high": 0.094,
            "confidence": 0.95,
            "resamples": 2000,
            "num_examples": 1000,
        },
        "headroom": {
            phase: {
                "key": "accuracy",
                "num_examples": 100,
                "num_samples": 8,
                "temperature": 1.0,
                "top_k": 50,
                "top_p": 0.9,
                "greedy": greedy,
                "pass@k": {"1": p1, "4": 0.8, "8": 0.875},
            }
            for phase, greedy, p1 in (("sft", 0.6, 0.55), ("grpo", 0.66, None))
        },
    }
    assert report.format_interval(summary) == (
        "Acc GRPO − SFT: +6.2 points, paired bootstrap 95% interval [+3.1, +9.4] "
        "over 1000 held-out examples (2000 resamples)"
    )
    assert report.format_headroom(summary).splitlines() == [
        (
            "Headroom on the first 100 held-out examples, 8 samples each at temperature 1 "
            "(top-k 50, top-p 0.9), accuracy:"
        ),
        "",
        "| policy | greedy | pass@1 | pass@4 | pass@8 |",
        "|---|---|---|---|---|",
        "| SFT | 60.0 | 55.0 | 80.0 | 87.5 |",
        "| GRPO | 66.0 | – | 80.0 | 87.5 |",
    ]
    assert report.format_interval({"task": "counting"}) is None
    assert report.format_headroom({"headroom": None}) is None


def _shrunk_config():
    """The default config cut to seconds: tiny model, a few steps, a handful of examples."""
    config = synthetic.get_config()
    overrides = {
        "model": "qwen2p5_vl_tiny",
        "data.num_examples": 16,
        "sft.batch_size": 8,
        "sft.num_steps": 2,
        "sft.checkpoint_every": 2,
        "rl.prompts_per_step": 8,
        "rl.num_generations": 2,
        "rl.max_new_tokens": 8,
        "train.num_steps": 2,
        "train.checkpoint_every": 2,
        "train.logprob_chunk": 16,
        "eval.num_examples": 4,
        "eval.batch_size": 4,
        "eval.max_new_tokens": 8,
        "eval.gallery_size": 2,
        "diagnostics.pass_k": (1, 2),
        "diagnostics.pass_k_examples": 3,
        "diagnostics.pass_k_prompts": 2,
    }
    return recipe.phase_config(config, **overrides)


@pytest.mark.slow
def test_recipe_end_to_end_and_resume(tmp_path, capsys):
    config = _shrunk_config()
    summary = recipe.run(config, str(tmp_path))
    for phase in recipe.PHASES:
        assert os.path.isfile(tmp_path / phase / "policy" / "config.json")
        assert os.path.isfile(tmp_path / phase / "metrics.jsonl")
        assert os.path.isfile(tmp_path / "eval" / phase / "metrics.json")
    for name in REPORT_FILES:
        assert os.path.getsize(tmp_path / "report" / name) > 0, name
    saved = json.loads((tmp_path / "report" / "before_after.json").read_text())
    assert saved["task"] == "counting" and saved["num_examples"] == 4
    assert set(saved["metrics"]) == {"sft", "grpo"}
    assert saved["delta"]["accuracy"] == pytest.approx(
        saved["metrics"]["grpo"]["accuracy"] - saved["metrics"]["sft"]["accuracy"]
    )
    assert saved["train_reward"]["steps"] == 2
    # The interval pairs the 4 held-out examples; its centre is the table's difference.
    assert saved["interval"]["num_examples"] == 4
    assert saved["interval"]["delta"] == pytest.approx(saved["delta"]["accuracy"])
    assert saved["interval"]["low"] <= saved["interval"]["delta"] <= saved["interval"]["high"]
    for phase in recipe.PHASES:
        found = json.loads((tmp_path / "eval" / phase / "headroom.json").read_text())
        scores = np.array(found["scores"])
        assert scores.shape == (3, 2) and set(np.unique(scores)) <= {0.0, 1.0}
        # pass@1 is the mean sample; pass@2 of two samples: either is right.
        assert found["pass@k"]["1"] == pytest.approx(scores.mean())
        assert found["pass@k"]["2"] == pytest.approx(scores.max(1).mean())
        assert saved["headroom"][phase]["pass@k"] == found["pass@k"]
        assert saved["headroom"][phase]["greedy"] is not None
    printed = capsys.readouterr().out
    assert "| SFT | validation |" in printed and "| GRPO | validation |" in printed
    assert "Δ GRPO − SFT" in printed
    assert "paired bootstrap 95% interval" in printed and "| pass@1 | pass@2 |" in printed

    # A second run finds every phase done: nothing is retrained or re-evaluated.
    exported = os.path.getmtime(tmp_path / "grpo" / "policy" / "config.json")
    evaluated = os.path.getmtime(tmp_path / "eval" / "grpo" / "predictions.jsonl")
    again = recipe.run(config, str(tmp_path))
    assert os.path.getmtime(tmp_path / "grpo" / "policy" / "config.json") == exported
    assert os.path.getmtime(tmp_path / "eval" / "grpo" / "predictions.jsonl") == evaluated
    assert again["metrics"] == summary["metrics"]
