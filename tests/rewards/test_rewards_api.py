"""Registry entry points, batch layout, and the jitted array parts compiling once per shape."""

import json

import numpy as np
import pytest

from perception_rl import rewards
from perception_rl.rewards import counting, detection, dip, grounding, ocr

BOX = "<|object_ref_start|>a<|object_ref_end|><|box_start|>({},{}),({},{})<|box_end|><|im_end|>"


def batch(name, seed, num_prompts=3, group=4):
    """A small batch for reward ``name``; sizes vary with ``seed`` but stay in one bucket."""
    rng = np.random.default_rng(seed)
    completions, targets = [], []
    for _ in range(num_prompts):
        n = int(rng.integers(1, 7))
        xy = rng.integers(0, 400, (n, 2))
        boxes = np.concatenate([xy, xy + rng.integers(5, 90, (n, 2))], 1)
        if name == "grounding":
            targets.append({"box": boxes[0].tolist()})
            completions += [BOX.format(*(boxes[0] + rng.integers(-9, 9, 4))) for _ in range(group)]
        elif name == "counting":
            targets.append({"points": xy.tolist()})
            spans = [f"<|box_start|>({x},{y}),({x + 4},{y + 2})<|box_end|>" for x, y in xy]
            completions += [
                "<|object_ref_start|>a<|object_ref_end|>"
                + "".join(spans[: rng.integers(1, n + 1)])
                + "<|im_end|>"
                for _ in range(group)
            ]
        elif name == "ocr":
            text = "".join(rng.choice(list("abc d"), int(rng.integers(1, 16))))
            targets.append({"text": text})
            completions += [text[: rng.integers(0, len(text) + 1)] for _ in range(group)]
        elif name == "detection":
            targets.append({"boxes": boxes.tolist(), "labels": ["person"] * n})
            items = [{"bbox_2d": b.tolist(), "label": "person"} for b in boxes]
            completions += [json.dumps(items[: rng.integers(0, n + 1)]) for _ in range(group)]
        else:
            targets.append({"boxes": boxes.tolist()})
            completions += [
                "<think>.</think><look>[]</look><answer>"
                + json.dumps([{"bbox_2d": b.tolist()} for b in boxes[: rng.integers(0, n + 1)]])
                + "</answer>"
                for _ in range(group)
            ]
    return completions, targets


JITTED = {
    "grounding": [grounding.grounding_terms],
    "counting": [counting.distance_matrix, counting.counting_terms],
    "ocr": [ocr.ocr_terms],
    "detection": [detection.matching_cost, detection.detection_terms],
    "dip": [dip.hit_matrix, dip.dip_terms],
}


@pytest.mark.parametrize("name", sorted(JITTED))
def test_array_part_traces_once_per_padded_shape(name):
    for fn in JITTED[name]:
        fn.clear_cache()
    # Different content and a different prompt count (3 -> 4), in the same buckets.
    first, second = batch(name, seed=0), batch(name, seed=1, num_prompts=4)
    assert first[0] != second[0][:12]
    a = rewards.score(name, *first, group_size=4)
    assert [fn._cache_size() for fn in JITTED[name]] == [1] * len(JITTED[name])
    b = rewards.score(name, *second, group_size=4)
    assert [fn._cache_size() for fn in JITTED[name]] == [1] * len(JITTED[name])
    assert a.shape == (12,) and b.shape == (16,)


@pytest.mark.parametrize("name", sorted(JITTED))
def test_score_is_the_total_component_and_padding_does_not_leak(name):
    completions, targets = batch(name, seed=2, num_prompts=5)
    parts = rewards.score_components(name, completions, targets, group_size=4)
    assert parts["total"].dtype == np.float32 and parts["total"].shape == (20,)
    np.testing.assert_array_equal(
        rewards.score(name, completions, targets, group_size=4), parts["total"]
    )
    # Scoring prompts one at a time (different padding) gives the same values.
    alone = np.concatenate(
        [
            rewards.score(name, completions[4 * i : 4 * i + 4], [t], group_size=4)
            for i, t in enumerate(targets)
        ]
    )
    np.testing.assert_allclose(alone, parts["total"], atol=1e-6)


def test_errors_are_reported_clearly():
    with pytest.raises(KeyError, match="registered"):
        rewards.score("nope", ["x"], [{}], group_size=1)
    with pytest.raises(ValueError, match="valid:"):
        rewards.score("ocr", ["x"], [{"text": "x"}], group_size=1, iou_power=3)
    with pytest.raises(ValueError, match="group_size"):
        rewards.score("ocr", ["x", "y", "z"], [{"text": "x"}], group_size=2)
    with pytest.raises(ValueError, match="4-number"):
        rewards.score(
            "detection", ["[]"], [{"boxes": [[1, 2, 3]], "labels": ["dog"]}], group_size=1
        )


def test_value_ranges_follow_the_config():
    assert rewards.value_range("grounding") == (0.0, 2.0)
    assert rewards.value_range("detection") == (0.0, 3.0)
    assert rewards.value_range("dip") == pytest.approx((0.0, 3.0))
    assert rewards.value_range("dip", look_weight=0.5) == pytest.approx((0.0, 2.5))
    assert rewards.make_config("counting", matching="sequential").matching == "sequential"
