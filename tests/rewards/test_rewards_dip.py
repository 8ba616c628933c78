"""DIP-R1 reward (the seed_spec B3 reconstruction) vs an independent per-group implementation."""

import json
import re

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from perception_rl import rewards

STRUCTURE = r"<think>(.*?)</think>\s*<look>(.*?)</look>\s*<answer>(.*?)</answer>"
TAGS = ("think", "look", "answer")


def overlap(a, b):
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def area(b):
    return (b[2] - b[0]) * (b[3] - b[1])


def iou(a, b):
    union = area(a) + area(b) - overlap(a, b)
    return overlap(a, b) / union if union > 0 else 0.0


def box_list(block):
    """(parsed, valid boxes, all elements valid) of a JSON bbox_2d list block."""
    try:
        items = json.loads(block) if block is not None else None
    except (ValueError, RecursionError):
        items = None
    if not isinstance(items, list):
        return False, [], False
    good = []
    for x in items:
        b = x.get("bbox_2d") if isinstance(x, dict) else None
        if (
            isinstance(b, list)
            and len(b) == 4
            and all(type(v) in (int, float) for v in b)
            and all(abs(v) <= 1e6 for v in b)
            and b[2] >= b[0]
            and b[3] >= b[1]
        ):
            good.append([float(np.float32(v)) for v in b])
    return True, good, len(good) == len(items)


def block(text, tag):
    start = text.find(f"<{tag}>")
    end = text.find(f"</{tag}>", start + len(tag) + 2) if start >= 0 else -1
    return text[start + len(tag) + 2 : end] if end >= 0 else None


def reference_group(texts, target, w_p=0.4, w_r=0.6, max_look=8):
    """Rewards of one prompt's G rollouts, written from the reconstruction's prose."""
    gt = [[float(np.float32(v)) for v in b] for b in target["boxes"]]
    ignore = target.get("ignore", [])
    rollouts = []
    for text in texts:
        body = text.rstrip()
        while body.endswith(("<|im_end|>", "<|endoftext|>")):
            body = body[: body.rindex("<|")].rstrip()
        answer_ok, answers, answer_all = box_list(block(body, "answer"))
        _, looks, look_all = box_list(block(body, "look"))
        once = all(body.count(f"<{t}>") == 1 and body.count(f"</{t}>") == 1 for t in TAGS)
        fmt = bool(once and re.fullmatch(STRUCTURE, body, re.DOTALL) and answer_all and look_all)
        rollouts.append((fmt, answer_ok, answers, looks[:max_look]))
    hits = np.array([[any(iou(a, g) >= 0.5 for a in r[2]) for g in gt] for r in rollouts], float)
    rate = hits.mean(0) if gt else np.zeros(0)
    u = rate * (1 - rate)
    out = []
    for fmt, answer_ok, answers, looks in rollouts:
        covered = np.array([any(iou(b, g) >= 0.5 for b in looks) for g in gt], float)
        look = float((u * covered).sum() / u.sum()) if u.sum() > 0 else 0.0
        counted = [
            a
            for a in answers
            if any(iou(a, g) >= 0.5 for g in gt)
            or not any(area(a) > 0 and overlap(a, z) / area(a) >= 0.5 for z in ignore)
        ]
        adjacency = np.array([[iou(a, g) >= 0.5 for g in gt] for a in answers], float)
        adjacency = adjacency.reshape(len(answers), len(gt))
        rows, cols = linear_sum_assignment(-adjacency) if adjacency.size else ([], [])
        m = adjacency[rows, cols].sum() if adjacency.size else 0
        if not answer_ok:
            p = r = 0.0
        elif not counted and not gt:
            p = r = 1.0
        else:
            p = m / len(counted) if counted else 0.0
            r = m / len(gt) if gt else 0.0
        out.append(float(fmt) + look + w_p * p + w_r * r)
    return out


def make_completion(rng, target):
    gt = target["boxes"]

    def boxes(p, jitter):
        chosen = [b for b in gt if rng.random() < p]
        chosen += [[5, 5, 30, 40]] * int(rng.random() < 0.2)  # a false positive
        moved = [(np.array(b) + rng.normal(0, jitter, 4)).round(1).tolist() for b in chosen]
        return [{"bbox_2d": b, "label": "person"} for b in moved]

    look = json.dumps(boxes(0.4, 3.0))
    answer = json.dumps(boxes(rng.choice([0.5, 0.9]), rng.choice([2.0, 25.0])))
    kind = rng.integers(12)
    text = (
        f"<think>Crowded, some people overlap.</think>\n<look>{look}</look>\n"
        f"<answer>{answer}</answer>"
    )
    if kind == 0:
        return text + "<|im_end|>"
    if kind == 1:  # tags out of order / duplicated / missing
        return rng.choice(
            [
                text.replace("<think>", "<look>", 1),
                text + "<answer>[]</answer>",
                text.replace("<look>", "").replace("</look>", ""),
            ]
        )
    if kind == 2:  # prose outside the blocks
        return rng.choice(["Sure! " + text, text + " Done."])
    if kind == 3:  # invalid JSON or an invalid element in the look block
        return text.replace(look, rng.choice(["[{", '[{"bbox_2d": [9, 9, 1, 1]}]', "{}"]), 1)
    if kind == 4:
        return text.replace(answer, rng.choice(["[]", "nothing", '[{"bbox_2d": [1, 2, 3]}]']), 1)
    if kind == 5:
        return ""
    return text


@pytest.mark.slow
def test_matches_reference_on_generated_groups():
    rng = np.random.default_rng(5)
    num_prompts, group = 256, 8
    targets = []
    for _ in range(num_prompts):
        n = int(rng.integers(0, 10))
        xy = rng.uniform(40, 500, (n, 2)).round(1)
        wh = rng.uniform(15, 90, (n, 2)).round(1)
        target = {"boxes": np.concatenate([xy, xy + wh], 1).tolist()}
        if rng.random() < 0.5:
            target["ignore"] = [[0, 0, 60, 60]]
        targets.append(target)
    completions = [make_completion(rng, t) for t in targets for _ in range(group)]
    got = rewards.score_components("dip", completions, targets, group_size=group)
    want = np.concatenate(
        [
            reference_group(completions[i * group : (i + 1) * group], t)
            for i, t in enumerate(targets)
        ]
    )
    np.testing.assert_allclose(got["total"], want, atol=1e-6, rtol=0)
    assert 0.2 < got["format"].mean() < 0.9 and (got["look"] > 0).mean() > 0.1
    assert ((got["accuracy"] > 0) & (got["accuracy"] < 1)).mean() > 0.2


def test_look_rewards_covering_the_uncertain_instance():
    gt = [[0, 0, 10, 10], [100, 100, 120, 120]]

    def completion(look, answer):
        look, answer = ([{"bbox_2d": b} for b in x] for x in (look, answer))
        return (
            f"<think>t</think><look>{json.dumps(look)}</look><answer>{json.dumps(answer)}</answer>"
        )

    # Instance 0 is found by every rollout (variance 0); instance 1 by half (variance 0.25).
    texts = [
        completion([gt[1]], gt),
        completion([gt[0]], gt),
        completion([gt[1]], gt[:1]),
        completion([], gt[:1]),
    ]
    parts = rewards.score_components("dip", texts, [{"boxes": gt}], group_size=4)
    np.testing.assert_allclose(parts["look"], [1, 0, 1, 0])
    np.testing.assert_allclose(parts["recall"], [1, 1, 0.5, 0.5])
    np.testing.assert_allclose(parts["format"], [1, 1, 1, 1])


def test_empty_sets_and_ignore_regions():
    t = [{"boxes": [], "ignore": [[0, 0, 50, 50]]}]
    ok = "<think></think><look>[]</look><answer>{}</answer>"
    texts = [
        ok.format("[]"),
        ok.format('[{"bbox_2d": [10, 10, 20, 20]}]'),
        ok.format('[{"bbox_2d": [100, 100, 120, 120]}]'),
        "<answer>oops</answer>",
    ]
    parts = rewards.score_components("dip", texts, t * 4, group_size=1)
    # The 2nd completion's box lies in the ignore region, so it is not a false positive.
    np.testing.assert_allclose(parts["accuracy"], [1, 1, 0, 0])
    np.testing.assert_allclose(parts["format"], [1, 1, 1, 0])
