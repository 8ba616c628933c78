"""Counting reward vs an independent per-sample implementation of seed_spec A5 / DESIGN §3."""

import math
import re

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from perception_rl import rewards

NUM = r"-?\d+(?:\.\d+)?"
INSIDE = rf"\s*\(\s*({NUM})\s*,\s*({NUM})\s*\)\s*,\s*\(\s*({NUM})\s*,\s*({NUM})\s*\)\s*"
GATE = (
    r"<\|object_ref_start\|>[^<]*<\|object_ref_end\|>"
    r"(?:<\|box_start\|>[^<]*<\|box_end\|>)+<\|im_end\|>"
)


def centres(text):
    """Centres of every box_start chunk that is exactly a (x1,y1),(x2,y2) literal."""
    out = []
    for chunk in text.split("<|box_start|>")[1:]:
        if "<|box_end|>" not in chunk:
            continue
        match = re.fullmatch(INSIDE, chunk.split("<|box_end|>")[0])
        if match:
            x1, y1, x2, y2 = (float(v) for v in match.groups())
            if all(math.isfinite(v) and abs(v) <= 1e6 for v in (x1, y1, x2, y2)):
                out.append(((x1 + x2) / 2, (y1 + y2) / 2))
    return out


def reference(text, points, matching="hungarian", frame=(1000, 1000), kind="pr1"):
    """Per-sample counting reward, written from the spec (float64): distances between points
    mapped to 0-1000 per axis (x*1000/W, y*1000/H of the `frame` (W, H)), DESIGN §3."""
    if re.match(GATE, text) is None:
        return 0.0
    pred = centres(text)
    if not pred or not points:
        return 0.0
    if kind == "exact_count":
        return float(len(pred) == len(points))
    width, height = frame

    def normalised(p):
        return (p[0] * 1000 / width, p[1] * 1000 / height)

    cost = np.array([[math.dist(normalised(p), normalised(z)) for z in points] for p in pred])
    if matching == "hungarian":
        rows, cols = linear_sum_assignment(cost)
    else:
        rows = cols = np.arange(min(len(pred), len(points)))
    mean = cost[rows, cols].mean()
    ratio = min(len(pred), len(points)) / max(len(pred), len(points))
    return ratio * max(0.0, 1 - mean / (1000 * math.sqrt(2)))


def make_completion(rng, points):
    """Well-formed, near-miss, empty and malformed counting completions."""
    kind = rng.integers(10)
    n = max(0, len(points) + int(rng.integers(-2, 3)))
    picks = [points[i % len(points)] if points else (500, 500) for i in rng.permutation(n)]
    spans = []
    for x, y in picks:
        x, y = x + int(rng.integers(-30, 31)), y + int(rng.integers(-30, 31))
        w, h = int(rng.integers(1, 60)), int(rng.integers(1, 60))
        spans.append(f"<|box_start|>({x - w},{y - h}),({x + w},{y + h})<|box_end|>")
    head = "<|object_ref_start|>birds<|object_ref_end|>"
    body = "".join(spans)
    if kind <= 2:
        return head + body + "<|im_end|>"
    if kind == 3:  # decimals, spaces, an unparseable span, trailing tokens
        broken = "<|box_start|>(1,2)<|box_end|>"
        return head + body.replace(",", " , ", 2) + broken + "<|im_end|><|endoftext|>"
    if kind == 4:  # the gate fails but spans parse
        return "Here: " + head + body + "<|im_end|>"
    if kind == 5:  # no im_end / no spans
        return head + body if rng.random() < 0.5 else head + "<|im_end|>"
    if kind == 6:
        return ""
    if kind == 7:  # out-of-frame, negative and overflowing coordinates
        return (
            head
            + "<|box_start|>(-3000,5),(9000,7.5)<|box_end|>"
            + body.replace("(", "(" + "9" * 400, 1)
            + "<|im_end|>"
        )
    if kind == 8:  # nested box_start
        return head + "<|box_start|>" + body + "<|im_end|>"
    return "".join(rng.choice(list("<|>()[],0123456789 -.box_startend"), int(rng.integers(0, 60))))


@pytest.mark.parametrize("matching", ["hungarian", "sequential"])
def test_matches_reference_on_generated_completions(matching):
    rng = np.random.default_rng(1)
    num_prompts, group = 256, 8
    targets = [
        {"points": rng.integers(0, 1000, (int(rng.integers(0, 12)), 2)).tolist()}
        for _ in range(num_prompts)
    ]
    completions = [make_completion(rng, t["points"]) for t in targets for _ in range(group)]
    got = rewards.score("counting", completions, targets, group_size=group, matching=matching)
    want = np.array(
        [reference(c, targets[i // group]["points"], matching) for i, c in enumerate(completions)]
    )
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert (want == 0).mean() > 0.2 and (want > 0.5).mean() > 0.2


def test_known_value():
    c = (
        "<|object_ref_start|>x<|object_ref_end|><|box_start|>(0,0),(20,20)<|box_end|>"
        "<|box_start|>(100,100),(120,120)<|box_end|><|im_end|>"
    )
    t = [{"points": [[10, 10], [110, 113], [500, 500]]}]
    want = 2 / 3 * (1 - 1.5 / (1000 * math.sqrt(2)))
    assert rewards.score("counting", [c], t, group_size=1)[0] == pytest.approx(want, abs=1e-6)
    assert rewards.score("counting", [c], [{"points": []}], group_size=1)[0] == 0


# (W, H) of smart-resized frames: square, wide, tall, tiny and large (Qwen2.5-VL pixels).
FRAMES = [(112, 112), (336, 224), (224, 448), (56, 28), (1148, 868)]


@pytest.mark.parametrize("matching", ["hungarian", "sequential"])
def test_pixel_frame_targets_on_images_of_different_sizes(matching):
    rng = np.random.default_rng(7)
    num_prompts, group = 96, 4
    targets = []
    for i in range(num_prompts):
        width, height = FRAMES[i % len(FRAMES)]
        n = int(rng.integers(0, 6))
        points = np.stack([rng.integers(0, width + 1, n), rng.integers(0, height + 1, n)], 1)
        targets.append({"points": points.tolist(), "frame": [width, height]})
    completions = [make_completion(rng, t["points"]) for t in targets for _ in range(group)]
    got = rewards.score("counting", completions, targets, group_size=group, matching=matching)
    want = np.array(
        [
            reference(c, targets[i // group]["points"], matching, targets[i // group]["frame"])
            for i, c in enumerate(completions)
        ]
    )
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
    assert (want == 0).mean() > 0.2 and (want > 0.3).mean() > 0.2


def test_closeness_is_measured_per_axis_on_0_1000():
    # One point 28 px off along x on a 112x56 image: 250 of 1000 along x, so closeness
    # 1 - 250/(1000√2); the old fixed scale gave 1 - 28/(1000√2) ≈ 0.98 whatever the image.
    c = "<|object_ref_start|>x<|object_ref_end|><|box_start|>(40,20),(40,20)<|box_end|><|im_end|>"
    target = {"points": [[12, 20]], "frame": [112, 56]}
    parts = rewards.score_components("counting", [c], [target], group_size=1)
    assert parts["closeness"][0] == pytest.approx(1 - 250 / (1000 * math.sqrt(2)), abs=1e-6)
    # Along y the same 28 px are 500 of 1000 on a 56-px-high image.
    c = c.replace("(40,20),(40,20)", "(12,48),(12,48)")
    parts = rewards.score_components("counting", [c], [target], group_size=1)
    assert parts["closeness"][0] == pytest.approx(1 - 500 / (1000 * math.sqrt(2)), abs=1e-6)


def test_a_1000_frame_is_perception_r1s_reward():
    rng = np.random.default_rng(3)
    points = rng.integers(0, 1000, (4, 2)).tolist()
    completions = [make_completion(rng, points) for _ in range(16)]
    default = rewards.score("counting", completions, [{"points": points}], group_size=16)
    framed = [{"points": points, "frame": [1000, 1000]}]
    np.testing.assert_array_equal(
        rewards.score("counting", completions, framed, group_size=16), default
    )


def test_the_hungarian_match_is_taken_in_the_normalised_frame():
    # On a 1000x100 frame y counts ten times: in pixels A=(0,0), B=(100,20) pair with
    # Q=(0,20), P=(100,0) (20 px each); on 0-1000 they pair with P and Q (100 each, against 200).
    c = (
        "<|object_ref_start|>x<|object_ref_end|><|box_start|>(0,0),(0,0)<|box_end|>"
        "<|box_start|>(100,20),(100,20)<|box_end|><|im_end|>"
    )
    points = [[100, 0], [0, 20]]
    target = {"points": points, "frame": [1000, 100]}
    got = rewards.score("counting", [c], [target], group_size=1)[0]
    assert got == pytest.approx(reference(c, points, frame=(1000, 100)), abs=1e-6)
    assert got == pytest.approx(1 - 100 / (1000 * math.sqrt(2)), abs=1e-6)


@pytest.mark.parametrize("frame", [[0, 100], [100], [float("nan"), 5], [-1, 10]])
def test_a_bad_frame_is_refused(frame):
    with pytest.raises(ValueError, match="frame"):
        rewards.score("counting", ["x"], [{"points": [[1, 1]], "frame": frame}], group_size=1)


def test_exact_count_variant_is_r1vs_binary_reward_behind_the_same_gate():
    rng = np.random.default_rng(11)
    num_prompts, group = 128, 8
    targets = [
        {"points": rng.integers(0, 112, (int(rng.integers(0, 6)), 2)).tolist(), "frame": [112, 112]}
        for _ in range(num_prompts)
    ]
    completions = [make_completion(rng, t["points"]) for t in targets for _ in range(group)]
    parts = rewards.score_components(
        "counting", completions, targets, group_size=group, kind="exact_count"
    )
    want = np.array(
        [
            reference(c, targets[i // group]["points"], kind="exact_count")
            for i, c in enumerate(completions)
        ]
    )
    np.testing.assert_array_equal(parts["total"], want)
    assert 0.03 < want.mean() < 0.6  # both outcomes occur
    # The indicator is logged under either kind; the default total stays Perception-R1's.
    default = rewards.score_components("counting", completions, targets, group_size=group)
    np.testing.assert_array_equal(default["exact_count"], want)
    assert not np.array_equal(default["total"], want)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind"):
        rewards.score("counting", ["x"], [{"points": [[1, 1]]}], group_size=1, kind="binary")
