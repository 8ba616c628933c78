"""Detection reward vs an independent per-sample implementation of seed_spec A7 / DESIGN §3."""

import json

import numpy as np
import pytest

from perception_rl import rewards
from perception_rl.rewards.detection import COCO_CLASSES
from perception_rl.testing import reference_rewards

BAD_ELEMENTS = [
    {"bbox_2d": [1, 2, 3], "label": "dog"},
    {"bbox_2d": [1, 2, 3, "4"], "label": "dog"},
    {"bbox_2d": [1, 2, 3, True], "label": "dog"},
    {"bbox_2d": [1, 2, 3, None], "label": "dog"},
    {"bbox_2d": [[1], 2, 3, 4], "label": "dog"},
    {"bbox_2d": [30, 2, 10, 40], "label": "dog"},  # inverted
    {"bbox_2d": [1, 2, 3, 4], "label": "unicorn"},
    {"bbox_2d": [1, 2, 3, 4], "label": ["dog"]},
    {"bbox_2d": [1, 2, 3, 4]},
    {"box": [1, 2, 3, 4], "label": "dog"},
    "dog",
    7,
    None,
    [1, 2, 3, 4],
]


def make_completion(rng, target):
    """Well-formed, near-miss, empty and malformed detection completions."""
    kind = rng.integers(12)
    items = []
    for box, label in zip(target["boxes"], target["labels"]):
        if rng.random() < 0.85:
            b = (np.array(box) + rng.normal(0, rng.choice([2.0, 15.0]), 4)).round(1)
            b[2:] = np.maximum(b[2:], b[:2])
            label = label if rng.random() < 0.85 else str(rng.choice(COCO_CLASSES))
            items.append(
                {"bbox_2d": [int(v) if rng.random() < 0.5 else float(v) for v in b], "label": label}
            )
    for _ in range(int(rng.integers(0, 3))):
        xy = rng.uniform(0, 600, 2).round(1)
        items.append({"bbox_2d": xy.tolist() + (xy + 40).tolist(), "label": "person"})
    rng.shuffle(items)
    if kind in (3, 4, 5):
        for _ in range(int(rng.integers(1, 4))):
            bad = BAD_ELEMENTS[rng.integers(len(BAD_ELEMENTS))]
            items.insert(int(rng.integers(0, len(items) + 1)), bad)
    text = json.dumps(items)
    if kind == 0:
        return "```json\n" + text + "\n```"
    if kind == 1:
        return text + "<|im_end|>"
    if kind == 6:  # NaN / Infinity literals and an int beyond float range
        return (
            text[:-1]
            + (", " if items else "")
            + rng.choice(
                [
                    '{"bbox_2d": [NaN, 1, 2, 3], "label": "cat"}]',
                    '{"bbox_2d": [1, 1, Infinity, 3], "label": "cat"}]',
                    '{"bbox_2d": [1, 1, 1' + "0" * 400 + ', 3], "label": "cat"}]',
                ]
            )
        )
    if kind == 7:  # invalid JSON: truncated, trailing prose, a dict
        a_dict = json.dumps({"bbox_2d": [1, 2, 3, 4]})
        return rng.choice([text[: len(text) // 2], text + " Done.", a_dict])
    if kind == 8:
        return rng.choice(["", "[]", "```json\n[]\n```", "null", "[[[[]]]]"])
    return text


@pytest.mark.parametrize("penalty", [True, False])
def test_matches_reference_on_generated_completions(penalty):
    rng = np.random.default_rng(4)
    num_prompts, group = 200, 8
    targets = []
    for _ in range(num_prompts):
        n = int(rng.integers(0, 15))
        xy = rng.uniform(0, 560, (n, 2)).round(1)
        boxes = np.concatenate([xy, xy + rng.uniform(10, 120, (n, 2)).round(1)], 1)
        targets.append(
            {"boxes": boxes.tolist(), "labels": [str(s) for s in rng.choice(COCO_CLASSES[-6:], n)]}
        )
    completions = [make_completion(rng, t) for t in targets for _ in range(group)]
    got = rewards.score(
        "detection", completions, targets, group_size=group, missing_penalty=penalty
    )
    want = np.array(
        [
            reference_rewards.detection_reward(c, targets[i // group], penalty=penalty)
            for i, c in enumerate(completions)
        ]
    )
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert (want == 0).mean() > 0.05 and (want > 2).mean() > 0.2
    assert ((want > 0) & (want <= 0.25)).mean() > 0.05


def test_known_values_and_fixed_bugs():
    t = [{"boxes": [[10, 10, 100, 100], [200, 200, 300, 300]], "labels": ["dog", "toothbrush"]}]
    exact = json.dumps(
        [
            {"bbox_2d": [10, 10, 100, 100], "label": "dog"},
            {"bbox_2d": [200, 200, 300, 300], "label": "toothbrush"},
        ]
    )
    assert rewards.score("detection", [exact], t, group_size=1)[0] == pytest.approx(3.0)
    # One inverted box invalidates only itself: fmt 2/3, both GT matched, no penalty.
    extra = exact[:-1] + ', {"bbox_2d": [50, 50, 40, 60], "label": "dog"}]'
    parts = rewards.score_components("detection", [extra], t, group_size=1)
    assert parts["format"][0] == pytest.approx(2 / 3)
    assert parts["total"][0] == pytest.approx(0.25 * 2 / 3 + 0.75 + 1 + 1, abs=1e-6)


def test_custom_vocabulary_and_unknown_target_label():
    vocab = ("person", "car")
    t = [{"boxes": [[0, 0, 10, 10]], "labels": ["car"]}]
    c = json.dumps(
        [{"bbox_2d": [0, 0, 10, 10], "label": "car"}, {"bbox_2d": [0, 0, 1, 1], "label": "dog"}]
    )
    assert rewards.score("detection", [c], t, group_size=1, vocabulary=vocab)[0] == pytest.approx(
        reference_rewards.detection_reward(c, t[0], vocabulary=vocab), abs=1e-6
    )
    with pytest.raises(ValueError, match="vocabulary"):
        rewards.score(
            "detection",
            [c],
            [{"boxes": [[0, 0, 1, 1]], "labels": ["dog"]}],
            group_size=1,
            vocabulary=vocab,
        )
