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


def reference(text, points, matching="hungarian"):
    """Per-sample counting reward, written from the spec (float64)."""
    if re.match(GATE, text) is None:
        return 0.0
    pred = centres(text)
    if not pred or not points:
        return 0.0
    cost = np.array([[math.dist(p, z) for z in points] for p in pred])
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
