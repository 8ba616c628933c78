"""OCR task: the paper's prompt, text answers, end-token handling, page metrics."""

import math

import numpy as np
import pytest

from perception_rl import rewards
from perception_rl.tasks import FAMILIES, ImageGeometry, get_task

TASK = get_task("ocr")
GEOMETRY = ImageGeometry(original_hw=(100, 200), resized_hw=(112, 196))
EXAMPLE = {
    "image_id": 0,
    "query": "",
    "text": "hello world\nOslo 2024",
    "boxes": np.zeros((2, 4), np.float32),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_answer_and_target(family):
    system, user = TASK.conversation(EXAMPLE, family)
    assert system["content"] == "You are a helpful assistant."
    assert user["content"] == [{"type": "image"}, {"type": "text", "text": "OCR this image."}]
    assert TASK.answer(EXAMPLE, GEOMETRY, family) == "hello world\nOslo 2024"
    assert TASK.target(EXAMPLE, GEOMETRY, family) == {"text": "hello world\nOslo 2024"}


def test_reward_is_edit_similarity_of_the_skipped_special_token_decode():
    target = TASK.target(EXAMPLE, GEOMETRY, "qwen2_vl")
    texts = [TASK.answer(EXAMPLE, GEOMETRY, "qwen2_vl"), "hello world Oslo 2025", ""]
    np.testing.assert_allclose(
        rewards.score("ocr", texts, [target] * 3, group_size=1), [1.0, 1 - 1 / 21, 0.0], atol=1e-6
    )
    assert TASK.skip_special_tokens  # The OCR reward compares raw text, end tokens included.


def test_predict_strips_end_tokens_and_metrics():
    prediction = TASK.predict(
        "  hello world\nOslo 2024<|im_end|><|endoftext|>", GEOMETRY, "qwen2_5_vl"
    )
    assert prediction == {"text": "hello world\nOslo 2024"}
    examples = [EXAMPLE, {**EXAMPLE, "text": "a b c d e"}]
    metrics = TASK.metrics([prediction, {"text": "a b c d"}], examples)
    assert tuple(metrics) == TASK.metric_names
    assert metrics["edit_distance"] == pytest.approx((0 + 2 / 9) / 2)
    assert metrics["precision"] == 1.0 and metrics["recall"] == pytest.approx((1 + 4 / 5) / 2)
    assert metrics["bleu"] > 0.5
    assert 0 < metrics["meteor"] <= 1 or math.isnan(metrics["meteor"])  # NaN without WordNet
