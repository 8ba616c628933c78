"""Grounding reward vs an independent per-sample implementation of seed_spec A4 / DESIGN §3."""

import math
import re

import numpy as np
import pytest

from perception_rl import rewards

NUM = r"-?\d+(?:\.\d+)?"
BOX_PATTERNS = (
    rf"\[\s*({NUM})\s*,\s*({NUM})\s*,\s*({NUM})\s*,\s*({NUM})\s*\]",
    rf"\(\s*({NUM})\s*,\s*({NUM})\s*,\s*({NUM})\s*,\s*({NUM})\s*\)",
    rf"\(\s*({NUM})\s*,\s*({NUM})\s*\)\s*,\s*\(\s*({NUM})\s*,\s*({NUM})\s*\)",
)
TEMPLATE = (
    r"<\|object_ref_start\|>[^<]*<\|object_ref_end\|><\|box_start\|>\s*"
    rf"\(\s*{NUM}\s*,\s*{NUM}\s*\)\s*,\s*\(\s*{NUM}\s*,\s*{NUM}\s*\)\s*<\|box_end\|><\|im_end\|>"
)
LENIENT = ("<", ">", "object_ref_start", "object_ref_end", "box_start", "box_end", "im_end")


def reference(text, gt, *, iou_power=2.0, format_check="strict"):
    """Per-sample grounding reward, written from the spec (float64)."""
    text = text.replace("<|endoftext|>", "")
    box = None
    for pattern in BOX_PATTERNS:
        match = re.search(pattern, text)
        if match:
            box = [float(v) for v in match.groups()]
            break
    iou = 0.0
    if (
        box is not None
        and all(math.isfinite(v) and abs(v) <= 1e6 for v in box)
        and box[2] >= box[0]
        and box[3] >= box[1]
    ):
        inter = max(0.0, min(box[2], gt[2]) - max(box[0], gt[0])) * max(
            0.0, min(box[3], gt[3]) - max(box[1], gt[1])
        )
        union = (box[2] - box[0]) * (box[3] - box[1]) + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter
        iou = inter / union if union > 0 else 0.0
    if format_check == "strict":
        fmt = float(re.match(TEMPLATE, text) is not None)
    else:
        fmt = float(text.startswith(LENIENT))
    return iou**iou_power + fmt, iou, fmt


def make_completion(rng, gt):
    """Well-formed, near-miss, empty and malformed grounding completions."""
    kind = rng.integers(12)
    x1, y1, x2, y2 = (np.asarray(gt) + rng.integers(-40, 41, 4) * (rng.random() < 0.8)).tolist()
    box = f"({x1},{y1}),({x2},{y2})"
    good = f"<|object_ref_start|>the dog<|object_ref_end|><|box_start|>{box}<|box_end|><|im_end|>"
    if kind == 0:
        return good
    if kind == 1:
        return good + "<|endoftext|>" * int(rng.integers(1, 3))
    if kind == 2:  # spaces and decimals inside the box
        return good.replace(box, f"( {x1}.5 , {y1} ), ({x2}, {y2}.25 )")
    if kind == 3:  # missing end token / missing reference
        if rng.random() < 0.5:
            return good.replace("<|im_end|>", "")
        return good[good.index("<|box_start|>") :]
    if kind == 4:  # inverted or negative box
        inverted, negative = f"({x2},{y2}),({x1},{y1})", f"(-{x1},{y1}),({x2},{y2})"
        return good.replace(box, inverted if rng.random() < 0.5 else negative)
    if kind == 5:
        return f"The box is [{x1}, {y1}, {x2}, {y2}] and (1,2),(3,4)."
    if kind == 6:
        return f"<box>({x1}, {y1}, {x2}, {y2})</box> then [{x1},{y1},{x2}]"
    if kind == 7:
        return ""
    if kind == 8:  # format fragments PR1's lenient regex accepts
        return rng.choice(["box_start", ">", "im_end", "<junk"]) + f" {box}"
    if kind == 9:  # numbers that overflow or are out of range
        return good.replace(str(x1), "9" * int(rng.choice([8, 400])), 1)
    if kind == 10:  # inserted endoftext in the middle
        return good.replace("<|box_end|>", "<|endoftext|><|box_end|>")
    return "".join(rng.choice(list("<|>()[],0123456789 -.abc"), int(rng.integers(0, 40))))


@pytest.mark.parametrize("format_check", ["strict", "pr1_lenient"])
def test_matches_reference_on_generated_completions(format_check):
    rng = np.random.default_rng(0)
    num_prompts, group = 256, 8
    targets = []
    for _ in range(num_prompts):
        xy = rng.integers(0, 800, 2)
        targets.append({"box": np.concatenate([xy, xy + rng.integers(1, 200, 2)]).tolist()})
    completions = [make_completion(rng, t["box"]) for t in targets for _ in range(group)]
    got = rewards.score_components(
        "grounding", completions, targets, group_size=group, format_check=format_check
    )
    want = np.array(
        [
            reference(c, targets[i // group]["box"], format_check=format_check)
            for i, c in enumerate(completions)
        ]
    )
    np.testing.assert_allclose(got["total"], want[:, 0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(got["iou"], want[:, 1], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got["format"], want[:, 2])
    # The generator must exercise every branch, or the comparison proves little.
    assert 0.05 < want[:, 2].mean() < 0.95 and (want[:, 1] == 0).mean() > 0.05
    assert ((want[:, 1] > 0) & (want[:, 1] < 1)).mean() > 0.2


def test_values_and_options():
    c = "<|object_ref_start|>a<|object_ref_end|><|box_start|>(0,0),(10,10)<|box_end|><|im_end|>"
    t = [{"box": [0, 0, 10, 20]}]
    assert rewards.score("grounding", [c], t, group_size=1)[0] == pytest.approx(1.25)
    assert rewards.score("grounding", [c], t, group_size=1, iou_power=1.0)[0] == pytest.approx(1.5)
    assert rewards.score("grounding", [c[:-10]], t, group_size=1)[0] == pytest.approx(0.25)
    assert rewards.score("grounding", ["<" + c[2:]], t, group_size=1, format_check="pr1_lenient")[
        0
    ] == pytest.approx(1.25)


def test_json_format_for_qwen25():
    t = [{"box": [10, 10, 50, 50]}]
    good = '```json\n[{"bbox_2d": [10, 10, 50, 50], "label": "cat"}]\n```'
    bad = '[{"bbox_2d": [50, 10, 10, 50], "label": "cat"}]'
    got = rewards.score_components(
        "grounding", [good, bad, "[1, 2"], t * 3, group_size=1, format_check="json"
    )
    np.testing.assert_array_equal(got["format"], [1, 0, 0])
    np.testing.assert_allclose(got["iou"], [1, 0, 0])


def test_unknown_format_check_raises():
    with pytest.raises(ValueError, match="format_check"):
        rewards.score("grounding", ["x"], [{"box": [0, 0, 1, 1]}], group_size=1, format_check="?")
