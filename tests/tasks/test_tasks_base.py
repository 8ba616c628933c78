"""Every registered task: answer → reward round trip, predict → original pixels; geometry."""

import dataclasses
import json

import numpy as np
import pytest

from perception_rl import rewards
from perception_rl.data import sources, synthetic
from perception_rl.errors import ConfigError
from perception_rl.processing import ImageProcessor
from perception_rl.tasks import FAMILIES, TASKS, ImageGeometry, get_task

# Default resize (synthetic sides are multiples of 28: unchanged), a downscale and an upscale.
PROCESSORS = {
    "native": ImageProcessor(),
    "down": ImageProcessor(max_pixels=84 * 84),
    "up": ImageProcessor(min_pixels=420 * 420, max_pixels=500 * 500),
}
# Image sizes that are not multiples of 28, so even the native resize moves coordinates.
ODD_SIZES = synthetic.SyntheticConfig(min_size=101, max_size=230, size_step=1)


def synthetic_task(name):
    """The task as training builds it for synthetic scenes (label names from the data)."""
    return sources.task_from_config({"task": name, "data": {"source": "synthetic"}})


def completion(task, answer: str) -> str:
    """The answer as the policy's decoded completion (end-of-turn kept with special tokens)."""
    return answer if task.skip_special_tokens else answer + "<|im_end|>"


def max_reward(task, family: str, group_size: int = 1) -> float:
    options = task.reward_options(family)
    if task.reward == "dip":  # The look reward needs variance across a group; one answer has none.
        config = rewards.make_config("dip", **options)
        return config.format_weight + config.accuracy_weight * (
            config.precision_weight + config.recall_weight
        )
    return rewards.value_range(task.reward, **options)[1]


def cases(name: str, n: int = 6):
    for index in range(n):
        example = synthetic.generate_example(name, index, split="val", config=ODD_SIZES)
        for processor in PROCESSORS.values():
            yield example, ImageGeometry.for_image(*example["image"].shape[:2], processor)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(TASKS))
def test_answer_earns_the_maximum_reward(name, family):
    task = synthetic_task(name)
    examples = list(cases(name))
    texts = [completion(task, task.answer(e, g, family)) for e, g in examples]
    targets = [task.target(e, g, family) for e, g in examples]
    total = rewards.score(task.reward, texts, targets, group_size=1, **task.reward_options(family))
    np.testing.assert_allclose(total, max_reward(task, family), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(set(TASKS) - {"ocr"}))
def test_predict_maps_the_answer_back_to_original_pixels(name, family):
    task = synthetic_task(name)
    for example, geometry in cases(name):
        prediction = task.predict(
            completion(task, task.answer(example, geometry, family)), geometry, family
        )
        (height, width), (frame_w, frame_h) = geometry.original_hw, geometry.frame_size(family)
        # One policy unit is width/frame_w original pixels; rounding moves a value by half that.
        tolerance = 0.5 * np.array([width / frame_w, height / frame_h] * 2) + 1e-3
        got = np.asarray(prediction["boxes"]).reshape(-1, 4)
        assert got.shape == example["boxes"].shape
        assert np.all(np.abs(got - example["boxes"]) < tolerance), (got, example["boxes"])
        assert json.loads(json.dumps(prediction)) == prediction  # JSONL-ready


@pytest.mark.parametrize("name", sorted(TASKS))
def test_perfect_predictions_score_perfectly(name):
    task = synthetic_task(name)
    # Sides that are multiples of 28 are not resized, so the answer is exact in pixels.
    examples = [synthetic.generate_example(name, i, split="val") for i in range(4)]
    geometries = [
        ImageGeometry.for_image(*e["image"].shape[:2], ImageProcessor()) for e in examples
    ]
    predictions = [
        task.predict(completion(task, task.answer(e, g, "qwen2_5_vl")), g, "qwen2_5_vl")
        for e, g in zip(examples, geometries)
    ]
    metrics = task.metrics(predictions, examples)
    assert tuple(metrics) == task.metric_names
    assert {key for key, _ in task.table_columns} <= set(metrics)
    # None: not 1 even when perfect (CrowdDet's AP50 has no recall-0 point, NLTK's BLEU of a
    # line under four words is ~0, mean IoU carries rounding) or absent (METEOR, size ranges).
    perfect = {
        "edit_distance": 0.0,
        "MR-2": 0.0,
        "AP50": None,
        "bleu": None,
        "mean_iou": None,
        "meteor": None,
        "APs": None,
        "APm": None,
        "APl": None,
    }
    for key, value in metrics.items():
        expected = perfect.get(key, 1.0)
        if expected is not None:
            # CrowdHuman's official JI adds 1e-6 to each image's denominator (k / (m+n-k+eps)).
            tolerance = 1e-5 if key == "JI" else 1e-9
            assert value == pytest.approx(expected, abs=tolerance), key


@pytest.mark.parametrize("name", sorted(TASKS))
def test_predict_never_raises_and_garbage_predicts_nothing(name):
    task = synthetic_task(name)
    geometry = ImageGeometry((100, 120), (112, 112))
    garbage = [
        "",
        "<|im_end|>",
        "[{",
        '[{"bbox_2d": [1, 2]}]',
        "(1,2),(3",
        "\ud800" * 3,
        "<answer>[</answer>",
        "9" * 5000,
        "<|box_start|>(a,b),(c,d)<|box_end|>",
    ]
    for family in FAMILIES:
        for text in garbage:
            prediction = task.predict(text, geometry, family)
            assert prediction.get("boxes", []) == [], text


def test_registry():
    assert set(TASKS) == {"counting", "grounding", "detection", "ocr", "crowd"}
    for name in TASKS:
        task = synthetic_task(name)
        assert task.name == name and task.reward in rewards.REWARDS
        assert dataclasses.is_dataclass(task) and task.metric_names
    assert get_task("detection", label_names=("cat", "dog")).label_names == ("cat", "dog")
    with pytest.raises(KeyError, match="registered"):
        get_task("segmentation")
    with pytest.raises(ValueError, match="label_nams"):
        get_task("detection", label_nams=())
    with pytest.raises(ValueError, match="qwen3_vl"):
        get_task("counting").conversation({"query": "x"}, "qwen3_vl")


def test_geometry_conversions():
    geometry = ImageGeometry(original_hw=(200, 300), resized_hw=(224, 336))
    boxes = np.array([[0, 0, 300, 200], [30, 20, 150.4, 100]])
    np.testing.assert_array_equal(
        geometry.to_policy(boxes, "qwen2_vl"), [[0, 0, 1000, 1000], [100, 100, 501, 500]]
    )
    np.testing.assert_array_equal(
        geometry.to_policy(boxes, "qwen2_5_vl"), [[0, 0, 336, 224], [34, 22, 168, 112]]
    )
    np.testing.assert_allclose(
        geometry.from_policy([[100, 100, 501, 500]], "qwen2_vl"), [[30, 20, 150.3, 100]]
    )
    np.testing.assert_allclose(
        geometry.from_policy([[34, 22, 168, 112]], "qwen2_5_vl"),
        [[34 * 300 / 336, 22 * 200 / 224, 150, 100]],
    )
    np.testing.assert_array_equal(
        geometry.to_policy([[-5, 3], [400, 250]], "qwen2_vl"), [[0, 15], [1000, 1000]]
    )  # points, clipped to the frame
    assert geometry.frame_size("qwen2_vl") == (1000, 1000)
    assert geometry.frame_size("qwen2_5_vl") == (336, 224)
    assert ImageGeometry.for_image(200, 300, ImageProcessor()).resized_hw == (196, 308)
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        geometry.to_policy([1, 2, 3], "qwen2_vl")


def test_label_names_come_from_the_data():
    assert synthetic_task("detection").label_names == synthetic.LABELS
    config = {"task": "detection", "data": {"source": "jsonl", "source_dir": "/gt"}}
    with pytest.raises(ConfigError, match="task_options.label_names"):
        sources.task_from_config(config)
    config["task_options"] = {"label_names": ("cat", "dog")}
    assert sources.task_from_config(config).label_names == ("cat", "dog")
    with pytest.raises(ConfigError, match="registered"):
        sources.task_from_config({"task": "segmentation"})
