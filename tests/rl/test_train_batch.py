"""Host-side batches of the trainer: SFT answers and the assembly of a dynamic-sampling batch
from several draws (the prompt layout itself: tests/models/test_prompts.py)."""

import numpy as np

from perception_rl.models.qwen_vl import prompts as prompts_lib
from perception_rl.models.qwen_vl import tiny
from perception_rl.processing import TINY_TOKEN_IDS
from perception_rl.rl import batch as batch_lib
from perception_rl.rl import grpo
from perception_rl.rl.rollouts import Draw, RolloutCollector, RolloutConfig
from perception_rl.tasks import get_task

VISION = tiny("qwen2_5_vl", **TINY_TOKEN_IDS).vision


def records(processor, examples, with_answer=False):
    formatter = batch_lib.PromptFormatter(
        get_task("counting"), processor, "qwen2_5_vl", VISION, with_answer=with_answer
    )
    return [formatter(e) for e in examples]


def test_sft_answers_end_with_eos_and_score_full_reward(processor, examples):
    recs = records(processor, examples, with_answer=True)
    tokens, mask = batch_lib.pad_answers(recs)
    lengths = mask.sum(1).astype(int)
    assert (tokens[np.arange(len(recs)), lengths - 1] == TINY_TOKEN_IDS["eos_token_id"]).all()
    assert (tokens * (1 - mask) == 0).all()
    texts = processor.tokenizer.batch_decode(
        [t[:n].tolist() for t, n in zip(tokens, lengths)], skip_special_tokens=False
    )
    from perception_rl import rewards

    scores = rewards.score("counting", texts, [r["target"] for r in recs], group_size=1)
    np.testing.assert_allclose(scores, 1.0, atol=1e-6)


class _Policy:
    pad_id = 0


def _draw(seed, num_prompts, length, patches, group=2, steps=4):
    """A fake draw: prompts padded to (length, patches), rewards chosen per group."""
    rng = np.random.default_rng(seed)
    prompts = {
        "input_ids": rng.integers(14, 999, (num_prompts, length)),
        "attention_mask": np.ones((num_prompts, length), np.int32),
        "position_ids": rng.integers(0, 50, (num_prompts, 3, length)),
        "pixel_values": rng.normal(size=(num_prompts, patches, 6)).astype(np.float32),
        "image_grid_thw": np.tile([[1, 2, 2]], (num_prompts, 1, 1)),
        **{k: np.zeros((num_prompts, patches), np.int32) for k in prompts_lib.LAYOUT_KEYS},
    }
    tokens = rng.integers(14, 999, (num_prompts * group, steps))
    lengths = rng.integers(1, steps + 1, num_prompts * group)
    return prompts, tokens, lengths


def test_dynamic_sampling_batch_takes_the_picked_groups_of_every_draw():
    group = 2
    p0, t0, l0 = _draw(0, 2, 16, 8)
    p1, t1, l1 = _draw(1, 2, 32, 16)
    # Draw 0: group 0 constant (no signal), group 1 informative; draw 1: both informative.
    draws = [
        Draw(p0, t0, l0, {"total": np.asarray([1.0, 1.0, 0.0, 1.0], np.float32)}),
        Draw(p1, t1, l1, {"total": np.asarray([0.0, 2.0, 3.0, 1.0], np.float32)}),
    ]
    collector = RolloutCollector(
        _Policy(), iter(()), RolloutConfig(group_size=group, max_new_tokens=4)
    )
    picks = np.asarray([[0, 1], [1, 0]])
    batch, rewards = collector._assemble(draws, picks)
    prompts, completions = batch["prompts"], batch["completions"]
    assert prompts["input_ids"].shape == (2, 32) and prompts["pixel_values"].shape == (2, 16, 6)
    np.testing.assert_array_equal(prompts["input_ids"][0, 16:], p0["input_ids"][1])
    assert (prompts["attention_mask"][0, :16] == 0).all()  # left-padded to the longer bucket
    np.testing.assert_array_equal(prompts["pixel_values"][1], p1["pixel_values"][0])
    np.testing.assert_array_equal(completions["tokens"], np.concatenate([t0[2:4], t1[0:2]]))
    np.testing.assert_array_equal(completions["mask"].sum(1), np.concatenate([l0[2:4], l1[:2]]))
    np.testing.assert_array_equal(rewards["total"], [0.0, 1.0, 0.0, 2.0])
    np.testing.assert_allclose(
        completions["advantages"], grpo.advantages(rewards["total"], group), rtol=1e-6
    )
