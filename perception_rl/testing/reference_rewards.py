"""Perception-R1's detection reward for one completion, written out in plain Python floats
from seed_spec A7 and DESIGN §3, independently of `perception_rl.rewards`.

The tests check the batched, jitted reward against it on fuzzed completions, and
benchmarks/rewards.py times the batched reward against it (the per-completion loop a PyTorch
codebase runs). Boxes are rounded to float32 as the library stores them; the arithmetic is
float64.
"""

from __future__ import annotations

import json
import math

import numpy as np
from scipy.optimize import linear_sum_assignment

from perception_rl.rewards.detection import COCO_CLASSES


def iou(a, b, eps=1e-8):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter = w * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / (union + eps) if union + eps > 0 else 0.0, union


def giou(a, b, eps=1e-8):
    value, union = iou(a, b, eps)
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1])) + eps
    return value - (hull - union) / hull


def cxcywh(b):
    return ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1])


def f32(boxes):
    """Coordinates as the library stores them (float32); the arithmetic stays float64."""
    return [[float(np.float32(v)) for v in box] for box in boxes]


def valid_element(item, vocabulary):
    if not isinstance(item, dict) or item.get("label") not in vocabulary:
        return False
    box = item.get("bbox_2d")
    return (
        isinstance(box, list)
        and len(box) == 4
        and all(type(v) in (int, float) for v in box)
        and all(abs(v) <= 1e6 for v in box)  # False for nan; huge ints too
        and box[2] >= box[0]
        and box[3] >= box[1]
    )


def detection_reward(text, target, *, penalty=True, vocabulary=COCO_CLASSES):
    """Per-completion detection reward (PR1's, with the DESIGN §3 fixes), float64."""
    body = text.replace("```json", "").replace("```", "").strip()
    while body.endswith(("<|im_end|>", "<|endoftext|>")):
        body = body.rsplit("<|", 1)[0].strip()
    try:
        items = json.loads(body)
    except (ValueError, RecursionError):
        return 0.0
    if not isinstance(items, list):
        return 0.0
    good = [x for x in items if valid_element(x, vocabulary)]
    if not good:
        return 0.0
    reward = 0.25 * len(good) / len(items)
    gt, gt_cls = f32(target["boxes"]), [vocabulary.index(s) for s in target["labels"]]
    if not gt:
        return reward
    pred = f32([x["bbox_2d"] for x in good])
    pred_cls = [vocabulary.index(x["label"]) for x in good]
    hot, cold = (v / (math.e + len(vocabulary) - 1) for v in (math.e, 1.0))  # softmax(one-hot)
    cost = np.array(
        [
            [
                5 * sum(abs(u - v) for u, v in zip(cxcywh(p), cxcywh(g)))
                - (hot if pc == gc else cold)
                - 2 * giou(p, g)
                for g, gc in zip(gt, gt_cls)
            ]
            for p, pc in zip(pred, pred_cls)
        ]
    )
    rows, cols = linear_sum_assignment(cost)
    kept = [(i, j, iou(pred[i], gt[j])[0]) for i, j in zip(rows, cols)]
    kept = [(i, j, v) for i, j, v in kept if v > 0.5]
    m = len(kept)
    if m == 0:
        return reward
    p, r = m / len(pred), m / len(gt)
    reward += 0.75 * 2 * p * r / (p + r + 1e-8)
    reward += sum(pred_cls[i] == gt_cls[j] for i, j, _ in kept) / m
    reward += sum(v for _, _, v in kept) / m
    if penalty:
        reward -= 0.5 * ((len(pred) - m) / len(pred) + (len(gt) - m) / len(gt))
    return min(max(reward, 0.0), 3.0)
