"""Grounding task: PR1's prompt, both families' answer syntax, parsing back, Acc@τ metrics."""

import numpy as np
import pytest

from perception_rl import rewards
from perception_rl.tasks import ImageGeometry, get_task

TASK = get_task("grounding")
# 200×300 resized to 224×336: pixels scale by 1.12; the 0–1000 frame by 1000/300 and 1000/200.
GEOMETRY = ImageGeometry(original_hw=(200, 300), resized_hw=(224, 336))
EXAMPLE = {
    "image_id": 7,
    "query": "the blue square left of the green triangle",
    "boxes": np.array([[30, 20, 150, 100]], np.float32),
}


def test_prompt_is_the_papers_wording():
    system, user = TASK.conversation(EXAMPLE, "qwen2_vl")
    assert system == {"role": "system", "content": "You are a helpful assistant."}
    assert user["role"] == "user" and user["content"][0] == {"type": "image"}
    assert user["content"][1]["text"] == (
        "Output the bounding box of the blue square left of the green triangle in the image."
    )
    refcoco = {**EXAMPLE, "query": "man in red shirt"}
    assert TASK.conversation(refcoco, "qwen2_5_vl")[1]["content"][1]["text"] == (
        "Output the bounding box of the man in red shirt in the image."
    )


def test_answer_and_target_per_family():
    assert TASK.answer(EXAMPLE, GEOMETRY, "qwen2_vl") == (
        "<|object_ref_start|>blue square left of the green triangle<|object_ref_end|>"
        "<|box_start|>(100,100),(500,500)<|box_end|>"
    )
    assert TASK.target(EXAMPLE, GEOMETRY, "qwen2_vl") == {"box": [100, 100, 500, 500]}
    assert TASK.answer(EXAMPLE, GEOMETRY, "qwen2_5_vl") == (
        '[{"bbox_2d": [34, 22, 168, 112], "label": "blue square left of the green triangle"}]'
    )
    assert TASK.target(EXAMPLE, GEOMETRY, "qwen2_5_vl") == {"box": [34, 22, 168, 112]}
    with pytest.raises(ValueError, match="exactly one box"):
        TASK.target({**EXAMPLE, "boxes": np.zeros((2, 4))}, GEOMETRY, "qwen2_vl")


def test_reward_options_pick_the_familys_format_check():
    def reward(text, family, **options):
        target = TASK.target(EXAMPLE, GEOMETRY, family)
        return rewards.score_components("grounding", [text], [target], group_size=1, **options)

    qwen2 = TASK.answer(EXAMPLE, GEOMETRY, "qwen2_vl") + "<|im_end|>"
    qwen25 = TASK.answer(EXAMPLE, GEOMETRY, "qwen2_5_vl")
    assert reward(qwen2, "qwen2_vl", **TASK.reward_options("qwen2_vl"))["format"][0] == 1
    assert reward(qwen25, "qwen2_5_vl", **TASK.reward_options("qwen2_5_vl"))["format"][0] == 1
    # The other family's check would reject each answer: the options are what make it pass.
    assert reward(qwen2, "qwen2_vl", **TASK.reward_options("qwen2_5_vl"))["format"][0] == 0
    assert reward(qwen25, "qwen2_5_vl", **TASK.reward_options("qwen2_vl"))["format"][0] == 0


def test_predict_maps_to_original_pixels():
    text = "<|object_ref_start|>x<|object_ref_end|><|box_start|>(50,250),(500,750)<|box_end|>"
    np.testing.assert_allclose(
        TASK.predict(text, GEOMETRY, "qwen2_vl")["boxes"], [[15, 50, 150, 150]]
    )
    # PR1's parser takes the first box in any of its forms, e.g. a plain list in prose.
    text = "The box is [112, 56, 224, 112] and not [0, 0, 1, 1]."
    np.testing.assert_allclose(
        TASK.predict(text, GEOMETRY, "qwen2_5_vl")["boxes"], [[100, 50, 200, 100]]
    )
    assert TASK.predict("no box here", GEOMETRY, "qwen2_5_vl") == {"boxes": []}


def test_metrics_count_wrong_and_unparsed_expressions():
    examples = [EXAMPLE, {**EXAMPLE, "image_id": 8}, {**EXAMPLE, "image_id": 9}]
    predictions = [
        {"boxes": [[30, 20, 150, 100]]},  # exact
        {"boxes": [[30, 20, 150, 70]]},  # IoU 0.625
        {"boxes": []},
    ]  # nothing parsed
    metrics = TASK.metrics(predictions, examples)
    assert metrics["acc@0.5"] == pytest.approx(2 / 3)
    assert metrics["acc@0.75"] == metrics["acc@0.95"] == pytest.approx(1 / 3)
    assert metrics["acc_mean"] == pytest.approx(4 / 9)
    assert metrics["mean_iou"] == pytest.approx((1 + 0.625) / 3, abs=1e-9)
