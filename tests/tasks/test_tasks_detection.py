"""Detection task: PR1's prompt, JSON answers with labels, vocabulary, COCO and F1 metrics."""

import numpy as np
import pytest

from perception_rl import rewards
from perception_rl.data import synthetic
from perception_rl.rewards.detection import COCO_CLASSES
from perception_rl.tasks import ImageGeometry, get_task

TASK = get_task("detection", label_names=synthetic.LABELS)
GEOMETRY = ImageGeometry(original_hw=(200, 300), resized_hw=(224, 336))
EXAMPLE = {
    "image_id": 5,
    "query": "red circle, blue square",
    "boxes": np.array([[30, 20, 150, 100], [150, 100, 300, 200]], np.float32),
    "labels": np.array(
        [synthetic.LABELS.index("red circle"), synthetic.LABELS.index("blue square")]
    ),
}


def test_prompt_lists_the_label_set():
    _, user = TASK.conversation(EXAMPLE, "qwen2_5_vl")
    assert user["content"][1]["text"] == (
        "Please output bbox coordinates and names of red circle, blue square."
    )
    generated = synthetic.generate_example("detection", 0)
    text = TASK.conversation(generated, "qwen2_5_vl")[1]["content"][1]["text"]
    assert text == f"Please output bbox coordinates and names of {', '.join(synthetic.LABELS)}."
    coco = get_task("detection", label_names=COCO_CLASSES)
    text = coco.conversation({"query": ""}, "qwen2_5_vl")[1]["content"][1]["text"]
    assert text.startswith("Please output bbox coordinates and names of person, bicycle, car, ")
    assert text.endswith(", hair drier, toothbrush.")


def test_answer_target_and_reward_options():
    assert TASK.answer(EXAMPLE, GEOMETRY, "qwen2_5_vl") == (
        '[{"bbox_2d": [34, 22, 168, 112], "label": "red circle"}, '
        '{"bbox_2d": [168, 112, 336, 224], "label": "blue square"}]'
    )
    assert TASK.target(EXAMPLE, GEOMETRY, "qwen2_vl") == {
        "boxes": [[100, 100, 500, 500], [500, 500, 1000, 1000]],
        "labels": ["red circle", "blue square"],
    }
    assert TASK.reward_options("qwen2_vl") == {"vocabulary": synthetic.LABELS}


def test_reward_sees_labels_through_the_vocabulary():
    target = TASK.target(EXAMPLE, GEOMETRY, "qwen2_5_vl")
    answer = TASK.answer(EXAMPLE, GEOMETRY, "qwen2_5_vl")
    swapped = (
        answer.replace("red circle", "tmp")
        .replace("blue square", "red circle")
        .replace("tmp", "blue square")
    )
    parts = rewards.score_components(
        "detection",
        [answer, swapped],
        [target] * 2,
        group_size=1,
        **TASK.reward_options("qwen2_5_vl"),
    )
    np.testing.assert_allclose(parts["total"], [3.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(parts["class_accuracy"], [1.0, 0.0])


def test_predict_keeps_known_labels_in_original_pixels():
    text = (
        '```json\n[{"bbox_2d": [112, 56, 224, 112], "label": "blue square"}, '
        '{"bbox_2d": [0, 0, 5, 5], "label": "unicorn"}, {"bbox_2d": [9, 9, 1, 1], '
        '"label": "red circle"}]\n```<|im_end|>'
    )
    prediction = TASK.predict(text, GEOMETRY, "qwen2_5_vl")
    assert prediction["labels"] == ["blue square"]
    np.testing.assert_allclose(prediction["boxes"], [[100, 50, 200, 100]])


def test_metrics_are_class_aware():
    exact = {
        "boxes": [[30, 20, 150, 100], [150, 100, 300, 200]],
        "labels": ["red circle", "blue square"],
    }
    swapped = {**exact, "labels": ["blue square", "red circle"]}
    half = {"boxes": exact["boxes"][:1], "labels": exact["labels"][:1]}
    assert TASK.metrics([exact], [EXAMPLE])["F1"] == 1.0
    metrics = TASK.metrics([swapped], [EXAMPLE])
    assert metrics["F1"] == metrics["AP"] == 0.0  # right boxes, wrong classes
    metrics = TASK.metrics([half], [EXAMPLE])
    assert (metrics["precision"], metrics["recall"]) == (1.0, 0.5)
    assert metrics["F1"] == pytest.approx(2 / 3) and metrics["AR100"] == pytest.approx(0.5)


def test_coco_records_keep_iscrowd_and_area():
    example = {**EXAMPLE, "is_crowd": np.array([0, 1]), "area": np.array([500.0, 7000.0])}
    gt, _ = TASK.coco_records([{"boxes": [], "labels": []}], [example])
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 1]
    assert [a["area"] for a in gt["annotations"]] == [500.0, 7000.0]
    only_first = {"boxes": [[30, 20, 150, 100]], "labels": ["red circle"]}
    # The second box is a crowd region: finding only the first is perfect recall.
    metrics = TASK.metrics([only_first], [example])
    assert metrics["AR100"] == 1.0 and metrics["AP"] == 1.0
    assert TASK.metrics([only_first], [EXAMPLE])["AR100"] == 0.5  # without the flag
    # COCO's size buckets read `area`: 500 px² is small although the box is 120 x 80 px.
    assert metrics["APs"] == 1.0 and np.isnan(metrics["APl"]) and np.isnan(metrics["APm"])


def test_detections_scored_by_likelihood_rank_before_constant_scores():
    # A false positive first in output order, then the true box.
    prediction = {
        "boxes": [[200, 0, 290, 60], [30, 20, 150, 100]],
        "labels": ["red circle", "red circle"],
        "scores": [0.1, 0.9],
    }
    example = {**EXAMPLE, "boxes": EXAMPLE["boxes"][:1], "labels": EXAMPLE["labels"][:1]}
    ranked = get_task("detection", label_names=synthetic.LABELS, score_detections="likelihood")
    # Ranked: hit then miss: precision 1 up to recall 1, AP 1 at every IoU threshold.
    assert ranked.metrics([prediction], [example])["AP"] == 1.0
    # Constant scores keep output order: the miss first, precision 1/2 at recall 1.
    assert TASK.metrics([prediction], [example])["AP50"] == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="one score per box"):
        ranked.metrics([{**prediction, "scores": [1.0]}], [example])
