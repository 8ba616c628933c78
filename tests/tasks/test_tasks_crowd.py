"""Crowd (DIP-R1 reconstruction) task: think/look/answer prompt and answer, look reward, metrics."""

import json

import numpy as np
import pytest

from perception_rl import rewards
from perception_rl.rewards import parse
from perception_rl.tasks import FAMILIES, ImageGeometry, get_task

TASK = get_task("crowd")
GEOMETRY = ImageGeometry(original_hw=(200, 200), resized_hw=(224, 224))
# Instances 0 and 1 overlap (the ambiguous pair); 2 stands alone; one ignore region.
EXAMPLE = {
    "image_id": 4,
    "query": "red circle",
    "boxes": np.array([[10, 10, 50, 50], [30, 30, 70, 70], [120, 120, 150, 150]], np.float32),
    "ignore_boxes": np.array([[150, 0, 200, 40]], np.float32),
}


def test_prompt_asks_for_think_look_answer():
    system, user = TASK.conversation(EXAMPLE, "qwen2_5_vl")
    assert system["content"] == "You are a helpful assistant."
    text = user["content"][1]["text"]
    assert text.startswith("Detect every red circle in the image. Think about the whole scene")
    positions = [text.index(tag) for tag in ("<think>", "<look>", "<answer>")]
    assert positions == sorted(positions) and '"bbox_2d"' in text


@pytest.mark.parametrize("family", FAMILIES)
def test_answer_is_strict_and_looks_at_the_overlapping_instances(family):
    answer = TASK.answer(EXAMPLE, GEOMETRY, family)
    blocks = parse.tagged_blocks([answer], ("think", "look", "answer"), rows=1)
    assert blocks.strict[0]
    assert "3 red circle instances; 2 of them overlap" in blocks.contents["think"][0]
    boxes = TASK.target(EXAMPLE, GEOMETRY, family)["boxes"]
    look = [item["bbox_2d"] for item in json.loads(blocks.contents["look"][0])]
    assert look == boxes[:2]
    assert [item["bbox_2d"] for item in json.loads(blocks.contents["answer"][0])] == boxes
    np.testing.assert_array_equal(TASK.look_boxes(EXAMPLE["boxes"][2:]), [])


def test_look_block_pays_when_the_group_disagrees_on_an_overlapped_instance():
    target = TASK.target(EXAMPLE, GEOMETRY, "qwen2_5_vl")
    answer = TASK.answer(EXAMPLE, GEOMETRY, "qwen2_5_vl")
    full = json.dumps([{"bbox_2d": b} for b in target["boxes"]])
    missing = answer.replace(full, json.dumps([{"bbox_2d": b} for b in target["boxes"][1:]]))
    blind = answer.replace(answer[answer.index("<look>") : answer.index("</look>")], "<look>[]")
    parts = rewards.score_components(
        "dip", [answer, missing, blind], [target], group_size=3, **TASK.reward_options("qwen2_5_vl")
    )
    np.testing.assert_allclose(parts["look"], [1, 1, 0])
    np.testing.assert_allclose(parts["total"][0], rewards.value_range("dip")[1], atol=1e-6)


def test_predict_and_metrics_with_ignore_regions():
    text = (
        '<think>x</think><look>[{"bbox_2d": [112, 0, 224, 112]}]</look>'
        '<answer>[{"bbox_2d": [11, 11, 56, 56]}, {"bbox_2d": [175, 5, 215, 40]}]</answer>'
    )
    prediction = TASK.predict(text, GEOMETRY, "qwen2_5_vl")
    expected = np.array([[11, 11, 56, 56], [175, 5, 215, 40]]) * 200 / 224
    np.testing.assert_allclose(prediction["boxes"], expected, atol=1e-3)
    np.testing.assert_allclose(prediction["look"], [[100, 0, 200, 100]])
    # Metrics read annotations: the eval runner's keep the image size (boxes are clipped to it).
    metrics = TASK.metrics([prediction], [{**EXAMPLE, "image_hw": (200, 200)}])
    # The second box lies in the ignore region: neither a hit nor a false positive.
    assert metrics["precision"] == 1.0 and metrics["recall"] == pytest.approx(1 / 3)
    assert TASK.predict("<answer>[]", GEOMETRY, "qwen2_vl") == {"boxes": [], "look": []}
