"""Counting task: PR1's prompt, multi-box answer, point targets, count accuracy."""

import numpy as np
import pytest

from perception_rl import rewards
from perception_rl.tasks import ImageGeometry, get_task

TASK = get_task("counting")
GEOMETRY = ImageGeometry(original_hw=(200, 300), resized_hw=(224, 336))
EXAMPLE = {
    "image_id": 3,
    "query": "red circle",
    "boxes": np.array([[30, 20, 150, 100], [150, 100, 300, 200]], np.float32),
    "points": np.array([[90, 60], [225, 150]], np.float32),
}


def score(texts, example=EXAMPLE, family="qwen2_vl"):
    target = TASK.target(example, GEOMETRY, family)
    return rewards.score(
        "counting", texts, [target] * len(texts), group_size=1, **TASK.reward_options(family)
    )


def test_prompt_is_the_papers_wording():
    system, user = TASK.conversation(EXAMPLE, "qwen2_5_vl")
    assert system["content"] == "You are a helpful assistant."
    assert user["content"] == [
        {"type": "image"},
        {"type": "text", "text": "Output all the bounding boxes of the red circle"},
    ]


def test_answer_and_target():
    assert TASK.answer(EXAMPLE, GEOMETRY, "qwen2_vl") == (
        "<|object_ref_start|>red circle<|object_ref_end|>"
        "<|box_start|>(100,100),(500,500)<|box_end|><|box_start|>(500,500),(1000,1000)<|box_end|>"
    )
    assert TASK.target(EXAMPLE, GEOMETRY, "qwen2_vl") == {
        "points": [[300, 300], [750, 750]],
        "frame": [1000, 1000],
    }
    assert TASK.answer(EXAMPLE, GEOMETRY, "qwen2_5_vl") == (
        "<|object_ref_start|>red circle<|object_ref_end|>"
        "<|box_start|>(34,22),(168,112)<|box_end|><|box_start|>(168,112),(336,224)<|box_end|>"
    )
    assert TASK.target(EXAMPLE, GEOMETRY, "qwen2_5_vl") == {
        "points": [[101, 67], [252, 168]],
        "frame": [336, 224],  # (W, H) of the resized image: the reward's per-axis 0-1000 map
    }


def test_reward_rewards_the_right_count_only():
    answer = TASK.answer(EXAMPLE, GEOMETRY, "qwen2_vl")
    one_box = answer[: answer.rindex("<|box_start|>")]
    totals = score([answer + "<|im_end|>", one_box + "<|im_end|>", answer])
    np.testing.assert_allclose(totals[:2], [1.0, 0.5], atol=1e-6)
    assert totals[2] == 0  # PR1's gate needs the end-of-turn token, hence skip_special_tokens.
    assert not TASK.skip_special_tokens


def test_points_only_examples_get_zero_size_boxes():
    pixmo = {"image_id": 1, "query": "bird", "points": np.array([[30, 20], [150, 100]])}
    answer = TASK.answer(pixmo, GEOMETRY, "qwen2_vl")
    assert answer.endswith(
        "<|box_start|>(100,100),(100,100)<|box_end|><|box_start|>(500,500),(500,500)<|box_end|>"
    )
    assert score([answer + "<|im_end|>"], pixmo)[0] == pytest.approx(1.0)


def test_predict_and_accuracy():
    completion = (
        "<|object_ref_start|>red circle<|object_ref_end|><|box_start|>(100,100),(500,500)"
        "<|box_end|><|box_start|>(oops)<|box_end|><|box_start|>(0,0),(10,10)<|box_end|>"
    )
    prediction = TASK.predict(completion, GEOMETRY, "qwen2_vl")
    assert prediction["count"] == 2  # the unparseable span is skipped, as PR1 does
    np.testing.assert_allclose(prediction["boxes"], [[30, 20, 150, 100], [0, 0, 3, 2]])
    predictions = [prediction, {"boxes": [], "count": 0}, {"boxes": [[0, 0, 1, 1]], "count": 1}]
    examples = [
        EXAMPLE,
        {**EXAMPLE, "boxes": np.zeros((0, 4)), "points": np.zeros((0, 2))},
        {**EXAMPLE, "boxes": EXAMPLE["boxes"][:1]},
    ]
    # An empty output is wrong even against a count of 0 (PR1's "None").
    assert TASK.metrics(predictions, examples) == {"accuracy": pytest.approx(2 / 3)}
